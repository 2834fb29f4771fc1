"""
A request line or a header line longer than the server reads gets ``431`` and a sentence, not
a connection closed without a word (what twisted.web does on its own).
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.client import get
from tests.e2e.harness import InProcessRegistry
from tests.e2e.test_misdirected import address, exchange

ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 62\r\n"
    b"\r\n"
    b"The request line or a header line is longer than 16384 bytes.\n"
)


@pytest_twisted.ensureDeferred
async def test_a_request_line_over_16_kib_gets_431(registry: InProcessRegistry) -> None:
    line = b"GET /v2/?q=" + b"x" * 17_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert await deferToThread(exchange, address(registry.url), line) == ANSWER
    response, body = await get(registry.url + "/v2/")
    assert (response.code, body) == (200, b"{}")


@pytest_twisted.ensureDeferred
async def test_a_header_line_over_16_kib_gets_431(registry: InProcessRegistry) -> None:
    head = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + b"c" * 17_000 + b"\r\n\r\n"
    assert await deferToThread(exchange, address(registry.url), head) == ANSWER


@pytest_twisted.ensureDeferred
async def test_a_long_line_that_fits_is_served(registry: InProcessRegistry) -> None:
    response, body = await get(registry.url + "/v2/?q=" + "x" * 15_000)
    assert (response.code, body) == (200, b"{}")
