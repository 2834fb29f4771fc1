"""
Timeouts: a registry that stops reading an upload body fails the call within the timeout of
silence (a large upload that keeps moving is never cut), and so does one that never answers.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from registry.client import Unavailable
from tests.client.conftest import ClientFactory
from tests.fakes.upstream import FakeUpstream


class _StopsReading(Protocol):
    """Answers ``GET /v2/`` and the upload POST, then stops reading a PATCH or PUT body
    (TCP back-pressure reaches the client) without ever answering."""

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            method = head.split(b" ", 1)[0]
            if method in (b"PATCH", b"PUT"):
                self.transport.pauseProducing()  # type: ignore[attr-defined]
                return
            extra = b"Location: /v2/x/blobs/uploads/u1\r\n" if method == b"POST" else b""
            status = b"202 Accepted" if method == b"POST" else b"200 OK"
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 " + status + b"\r\n" + extra + b"Content-Length: 0\r\n\r\n"
            )


@pytest_twisted.ensureDeferred
async def test_an_upload_the_registry_stops_reading_times_out(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(_StopsReading)
    )
    try:
        source = tmp_path / "big"
        with source.open("wb") as handle:
            handle.truncate(64 * 1024 * 1024)  # more than the socket buffers hold
        client = make_client(f"http://127.0.0.1:{port.getHost().port}", timeout=0.5, retries=0)
        call: Deferred[Any] = Deferred.fromCoroutine(client.upload_blob("x", source))
        call.addTimeout(30, reactor)  # a hang fails the test instead of blocking it
        with pytest.raises(Unavailable, match=r"within 0\.5s"):
            await call
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_piped_upload_the_registry_stops_reading_times_out(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """A blob streamed from another registry into one that stops reading: the silence is
    the destination's (its back-pressure paused the body), and its timeout says so."""
    layer = fake.content.add_image("library/big", "1", [64 * 1024 * 1024]).layers[0]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(_StopsReading)
    )
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        client = make_client(url, timeout=0.5, retries=0)
        call: Deferred[Any] = Deferred.fromCoroutine(
            client.copy_blob_from(make_client(fake.url), "library/big", "x", layer.digest)
        )
        call.addTimeout(30, reactor)
        with pytest.raises(Unavailable) as info:
            await call
        assert str(info.value) == f"no answer from {url} within 0.5s"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_connection_that_never_completes_times_out(make_client: ClientFactory) -> None:
    """A registry whose listen queue is full (its connections never complete): the call ends
    within the timeout, saying so, not with Twisted's error for a cancelled connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = [socket.create_connection(listener.getsockname(), timeout=5)]  # fills the queue
    try:
        port = listener.getsockname()[1]
        client = make_client(f"http://127.0.0.1:{port}", timeout=0.5, retries=0)
        call: Deferred[Any] = Deferred.fromCoroutine(client.ping())
        call.addTimeout(30, reactor)
        with pytest.raises(Unavailable) as failed:
            await call
        assert str(failed.value) == f"no answer from http://127.0.0.1:{port} within 0.5s"
    finally:
        for each in queued:
            each.close()
        listener.close()
