"""
The wrong protocol on a port: a TLS handshake on a plain-HTTP port, plain HTTP on an ``ssl:``
port.  Both must get an HTTP 400 that says what happened, byte for byte, with no traceback in
the server's log (the log watch in tests/conftest.py fails the test on one).
"""

from __future__ import annotations

import errno
import fcntl
import socket
import ssl
import struct
import termios
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry, sleep
from tests.e2e.tools import require, run

TLS_ON_PLAIN = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 62\r\n"
    b"\r\n"
    b"This port speaks plain HTTP; the client sent a TLS handshake.\n"
)
PLAIN_ON_TLS = (
    b"HTTP/1.0 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 48\r\n"
    b"\r\n"
    b"Client sent an HTTP request to an HTTPS server.\n"
)


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl, as OpenSSL builds it)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        connection.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"
    return hello


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def exchange(where: tuple[str, int], data: bytes) -> bytes:
    """Send ``data``, then read until the server closes (bounded by the socket timeout)."""
    with socket.create_connection(where, timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def unacknowledged(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` that the peer's kernel has neither acknowledged nor reset."""
    result = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", result)[0])


@pytest_twisted.ensureDeferred
async def test_tls_handshake_on_plain_port_gets_http_400(registry: InProcessRegistry) -> None:
    """The answer starts with ``HTTP/``: Go clients then fall back to plain HTTP."""
    answer = await deferToThread(exchange, address(registry.url), client_hello())
    assert answer == TLS_ON_PLAIN
    response, body = await get(registry.url + "/v2/")
    assert (response.code, body) == (200, b"{}")


@pytest_twisted.ensureDeferred
async def test_rest_of_a_refused_handshake_is_read_not_reset(registry: InProcessRegistry) -> None:
    """
    A ClientHello that spans TCP segments: the server answers after the first, and must read
    and drop the rest instead of closing with unread bytes, which resets the connection
    (and a reset can reach a client before the answer does).
    """
    hello = client_hello()

    def split_hello() -> tuple[bytes, int]:
        with socket.create_connection(address(registry.url), timeout=10) as sock:
            sock.sendall(hello[:5])
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            # The server closed its side; its kernel either takes the rest or resets.
            sock.sendall(hello[5:])
            deadline = time.monotonic() + 10
            while unacknowledged(sock) and time.monotonic() < deadline:
                time.sleep(0.01)
            return received, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    received, error = await deferToThread(split_hello)
    assert received == TLS_ON_PLAIN
    assert error == 0, errno.errorcode.get(error, error)


@pytest_twisted.ensureDeferred
async def test_python_tls_client_sees_an_http_answer(registry: InProcessRegistry) -> None:
    """OpenSSL reads the answer's first bytes as a record header: "wrong version number"."""

    def handshake() -> str:
        context = ssl.create_default_context()
        with socket.create_connection(address(registry.url), timeout=10) as sock:
            with pytest.raises(ssl.SSLError) as caught:
                context.wrap_socket(sock, server_hostname="127.0.0.1")
            return str(caught.value)

    assert "WRONG_VERSION_NUMBER" in await deferToThread(handshake)


@pytest_twisted.ensureDeferred
async def test_go_client_falls_back_to_plain_http(registry: InProcessRegistry) -> None:
    """
    skopeo (Go, as podman, dockerd and the docker CLI) tries TLS first; verifying TLS it must
    report "server gave HTTP response to HTTPS client", and without verification it falls back
    to HTTP and reaches the registry (here: an unknown repository).
    """
    skopeo = require("skopeo")
    host = registry.url.removeprefix("http://")
    with pytest.raises(AssertionError) as caught:
        await run(skopeo, "inspect", "--tls-verify=true", f"docker://{host}/nothing/here:v1")
    assert "server gave HTTP response to HTTPS client" in str(caught.value)
    with pytest.raises(AssertionError) as caught:
        await run(skopeo, "inspect", "--tls-verify=false", f"docker://{host}/nothing/here:v1")
    assert "name unknown" in str(caught.value)
    assert "HTTPS client" not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_plain_http_on_tls_port_gets_go_400(start_registry: Starter, tls_listen: str) -> None:
    """As Go's server answers: HTTP/1.0 400 and "Client sent an HTTP request to an HTTPS server."""
    registry = await start_registry(None, tls_listen)
    where = address(registry.url)
    request = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n"
    assert await deferToThread(exchange, where, request) == PLAIN_ON_TLS

    def over_tls() -> bytes:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(where, timeout=10) as raw:
            with context.wrap_socket(raw) as sock:
                sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                return received

    answer = await deferToThread(over_tls)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n{}")


@pytest_twisted.ensureDeferred
async def test_a_tls_alert_on_a_tls_port_is_no_plain_http_request(
    start_registry: Starter, tls_listen: str, access_events: list[dict[str, Any]]
) -> None:
    """A client that sends a TLS alert (or any record that is not a handshake) instead of a
    ClientHello is a failed handshake, said as such, not plain HTTP answered with Go's 400
    and an access line: only what starts as an HTTP request gets that answer."""
    from twisted.logger import formatEvent, globalLogPublisher

    registry = await start_registry(None, tls_listen)
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        alert = b"\x15\x03\x03\x00\x02\x02\x28"  # TLS 1.2 record: alert, fatal, handshake failure
        answer = await deferToThread(exchange, address(registry.url), alert)
        for _ in range(100):  # bounded: the server sees the connection end within a turn
            if any("TLS handshake" in line for line in lines):
                break
            await sleep(0.02)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not answer.startswith(b"HTTP/"), answer
    assert [e for e in access_events if e.get("status") == 400] == []
    assert [line for line in lines if "TLS handshake" in line] == [
        "TLS handshake with 127.0.0.1 failed: unexpected message"
    ], lines
