"""
A request head dripped slowly (slowloris: one header line at a time, each before the idle
timeout) is answered ``408`` once ``[http] timeout`` has passed since its first byte, instead
of holding the connection for as long as the client keeps dripping.
"""

from __future__ import annotations

import select
import socket
import time

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.e2e.test_misdirected import address

ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 64\r\n"
    b"\r\n"
    b"The request head was not complete within 1 s of its first byte.\n"
)
# Header lines dripped at most; the deadline (1 s) passes after about four of them.
MAX_LINES = 40
DRIP = 0.25  # well inside the 1 s idle timeout, which each line restarts


def drip(where: tuple[str, int]) -> bytes:
    """Send a request line, then a header line every DRIP seconds until the server answers;
    what it answered (b"" when it never did within MAX_LINES lines)."""
    with socket.create_connection(where, timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for number in range(MAX_LINES):
            readable, _, _ = select.select([sock], [], [], DRIP)
            if readable:
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                return received
            try:
                sock.sendall(f"X-Drip-{number}: x\r\n".encode())
            except OSError:
                break
        return b""


@pytest_twisted.ensureDeferred
async def test_a_dripped_head_gets_408(start_registry: Starter) -> None:
    registry = await start_registry({"http": {"timeout": "1s"}})
    assert await deferToThread(drip, address(registry.url)) == ANSWER
    response, body = await get(registry.url + "/v2/")
    assert (response.code, body) == (200, b"{}")


def keep_alive_requests(where: tuple[str, int], pause: float) -> list[bytes]:
    """Two requests on one connection, ``pause`` seconds apart (idle between them)."""
    answers = []
    with socket.create_connection(where, timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = b""
            while not received.endswith(b"{}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            answers.append(received.split(b"\r\n", 1)[0])
            time.sleep(pause)
    return answers


@pytest_twisted.ensureDeferred
async def test_the_deadline_starts_with_each_head(start_registry: Starter) -> None:
    """A keep-alive connection idle between requests (less than the idle timeout each time,
    more than the deadline in all) is not cut: each head has its own deadline."""
    registry = await start_registry({"http": {"timeout": "1s"}})
    answers = await deferToThread(keep_alive_requests, address(registry.url), 0.6)
    assert answers == [b"HTTP/1.1 200 OK"] * 2
