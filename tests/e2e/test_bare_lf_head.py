"""
A request head with a line ending in a bare LF is answered ``400`` at once: twisted.web reads
head lines up to CRLF only, so the client used to wait, unanswered, for the head's deadline
(``[http] timeout``, 300 s by default, longer than these tests' 10 s socket timeout).  Bytes
after the head (a body) may hold any LF.
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from registry.http.line_ends import bare_lf_in_head
from tests.e2e.client import get
from tests.e2e.harness import InProcessRegistry
from tests.e2e.test_misdirected import address, exchange

ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 74\r\n"
    b"\r\n"
    b"A line of the request head ends in a bare LF; HTTP/1.1 lines end in CRLF.\n"
)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /v2/ HTTP/1.1\nHost: 127.0.0.1\n\n", id="every-line"),
        pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\n\r\n", id="one-header"),
        pytest.param(b"GET /v2/ HTTP/1.1\nHost: 127.0.0.1\r\n\r\n", id="request-line"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bare_lf_in_the_head_gets_400_at_once(
    registry: InProcessRegistry, head: bytes
) -> None:
    assert await deferToThread(exchange, address(registry.url), head) == ANSWER
    response, body = await get(registry.url + "/v2/")
    assert (response.code, body) == (200, b"{}")


def _two_requests(where: tuple[str, int]) -> bytes:
    """A CRLF GET answered on a kept-alive connection, then a bare-LF one on the same."""
    with socket.create_connection(where, timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b"{}"):  # bounded: the socket's timeout
            chunk = sock.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 OK\r\n"), first
        sock.sendall(b"GET /v2/ HTTP/1.1\nHost: 127.0.0.1\n\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest_twisted.ensureDeferred
async def test_the_second_head_on_a_connection_is_looked_at_too(
    registry: InProcessRegistry,
) -> None:
    assert await deferToThread(_two_requests, address(registry.url)) == ANSWER


def _post_blob(where: tuple[str, int], blob: bytes) -> bytes:
    """A monolithic upload, head and body in one send."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    request = (
        f"POST /v2/lf/body/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Length: {len(blob)}\r\nConnection: close\r\n\r\n"
    ).encode() + blob
    return exchange(where, request)


@pytest_twisted.ensureDeferred
async def test_a_body_full_of_bare_lfs_is_stored(registry: InProcessRegistry) -> None:
    blob = b"line one\nline two\n\n\nline five\n" * 100
    answer = await deferToThread(_post_blob, address(registry.url), blob)
    assert answer.startswith(b"HTTP/1.1 201 Created\r\n"), answer[:300]
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    response, body = await get(f"{registry.url}/v2/lf/body/blobs/{digest}")
    assert (response.code, body) == (200, blob)


HEAD = b"PUT /v2/x/blobs/uploads/u?digest=sha256:0 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n"


@pytest.mark.parametrize("body", [b"a\nb\n", b"\r\n\r\n", b"\n\n\n\n"])
def test_a_crlf_head_split_anywhere_has_no_bare_lf(body: bytes) -> None:
    """Whatever the segments a head (and the body after it) arrives in.  Parts that begin
    after the head are the body's (twisted.web reads them raw, and they are not looked at)."""
    whole = HEAD + body
    for first in range(len(whole) + 1):
        for second in range(first, len(whole) + 1):
            before = b""
            for start, end in ((0, first), (first, second), (second, len(whole))):
                if start >= len(HEAD):
                    break
                bare, before = bare_lf_in_head(before, whole[start:end])
                assert not bare, (first, second)


def test_a_bare_lf_split_anywhere_is_found() -> None:
    whole = b"GET /v2/ HTTP/1.1\r\nHost: h\nAccept: */*\r\n\r\n"
    for cut in range(len(whole) + 1):
        bare, before = bare_lf_in_head(b"", whole[:cut])
        if not bare:
            bare, _ = bare_lf_in_head(before, whole[cut:])
        assert bare, cut
