"""
A request twisted.web finds malformed before it is a request (a head over 16 KiB in total
though no line is too long, a bad ``Content-Length``, a broken request line) is answered
``400`` with a sentence; twisted.web's own answer was a bare ``HTTP/1.1 400 Bad Request`` with
no body.  The connection closes; the next one is served.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.client import get
from tests.e2e.harness import InProcessRegistry
from tests.e2e.test_misdirected import address, exchange

TEXT = (
    b"The request is malformed: its request line, a header line, the size of its head "
    b"(16 KiB, 500 header lines) or the framing of its body.\n"
)
ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(TEXT)).encode() + b"\r\n"
    b"\r\n" + TEXT
)
LONG_HEAD = (
    b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-Filler-%02d: " % n + b"f" * 1000 + b"\r\n" for n in range(20))
    + b"\r\n"
)
BAD_LENGTH = b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(LONG_HEAD, id="head-over-16-KiB-in-short-lines"),
        pytest.param(BAD_LENGTH, id="bad-content-length"),
        pytest.param(b"GET /v2/\r\nHost: h\r\n\r\n", id="request-line-without-version"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_malformed_request_gets_400_with_a_sentence(
    registry: InProcessRegistry, request_bytes: bytes
) -> None:
    assert await deferToThread(exchange, address(registry.url), request_bytes) == ANSWER
    response, body = await get(registry.url + "/v2/")
    assert (response.code, body) == (200, b"{}")
