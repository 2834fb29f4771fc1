"""
Answers written before twisted.web made a request of what came (a TLS handshake on a plain
port: 400; a head line over 16 KiB: 431; a head line ending in a bare LF: 400; a head over
16 KiB in total: 400; a head dripped past ``[http] timeout``: 408) get their
access-log line, one each, like every answered request: they had none, so refused clients did
not show in the log at all.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import Starter
from tests.e2e.test_malformed_head import BAD_LENGTH, LONG_HEAD
from tests.e2e.test_misdirected import PLAIN_ON_TLS, address, client_hello, exchange
from tests.e2e.test_slow_head import drip


def body(answer: bytes) -> bytes:
    """What follows the head: ``bytes=`` counts a body, as on every access line."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), answer[:80]
    return rest


@pytest_twisted.ensureDeferred
async def test_each_raw_answer_has_one_access_line(
    start_registry: Starter, access_events: list[dict[str, Any]]
) -> None:
    registry = await start_registry({"http": {"timeout": "1s"}})
    where = address(registry.url)
    long_line = b"GET /v2/?q=" + b"x" * 17_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for send, status in (
        (lambda: exchange(where, client_hello()), 400),
        (lambda: exchange(where, long_line), 431),
        (lambda: exchange(where, b"GET /v2/ HTTP/1.1\nHost: 127.0.0.1\n\n"), 400),
        (lambda: exchange(where, LONG_HEAD), 400),
        (lambda: exchange(where, BAD_LENGTH), 400),
        (lambda: drip(where), 408),
    ):
        before = len(access_events)
        answer = await deferToThread(send)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
        new = access_events[before:]
        assert [(e["status"], e["bytes"], e["method"], e["client"]) for e in new] == [
            (status, len(body(answer)), "-", "127.0.0.1")
        ], new


@pytest_twisted.ensureDeferred
async def test_plain_http_on_a_tls_port_has_one_access_line(
    start_registry: Starter, tls_listen: str, access_events: list[dict[str, Any]]
) -> None:
    registry = await start_registry(None, tls_listen)
    request = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    before = len(access_events)
    answer = await deferToThread(exchange, address(registry.url), request)
    assert answer == PLAIN_ON_TLS
    new = access_events[before:]
    assert [(e["status"], e["bytes"], e["method"], e["client"]) for e in new] == [
        (400, len(body(answer)), "-", "127.0.0.1")
    ], new
