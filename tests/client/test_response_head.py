"""
A server that answers with an endless response head (status line, then header lines without
end) cannot grow the client: the connection is cut once the head passes 64 KiB and the call
fails saying so (`registry.http.bounded_agent`), while a kept-alive connection carrying many
small heads is never cut.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.client import Unavailable
from tests.client.conftest import ClientFactory
from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.proxy.registries import proxy_section

DIGEST = "sha256:" + "a" * 64
ENOUGH = 16 * 1024 * 1024  # what the endless server sends at most before it gives up
LINE = b"X-Junk: " + b"j" * 1000 + b"\r\n"


@implementer(IPullProducer)
class _EndlessHead(Protocol):
    """After a request head, sends ``first`` then header lines, as fast as they are taken,
    until ``ENOUGH`` bytes or until the client cuts the connection."""

    first = b"HTTP/1.1 200 OK\r\n"
    chunk = LINE * 64

    def __init__(self) -> None:
        self.request = b""
        self.sent = 0
        self.cut = False
        self.done = False

    def dataReceived(self, data: bytes) -> None:
        self.request += data
        if b"\r\n\r\n" in self.request and not self.sent:
            self.transport.write(self.first)  # type: ignore[union-attr]
            self.sent = len(self.first)
            self.transport.registerProducer(self, False)  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if self.sent >= ENOUGH:
            self.done = True
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        chunk = self.chunk
        self.transport.write(chunk)  # type: ignore[union-attr]
        self.sent += len(chunk)

    def stopProducing(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.cut = not self.done
        self.factory.lost.callback(self)  # type: ignore[attr-defined]


class _EndlessAfterEarlyHints(_EndlessHead):
    first = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"


class _EndlessHeaderLine(_EndlessHead):
    """One header line without end: Twisted's parser closes the connection at its own line
    limit, which the call's error names."""

    first = b"HTTP/1.1 200 OK\r\nX-Junk: "
    chunk = b"j" * 64_000


async def _listen(protocol: type[Protocol]) -> tuple[IListeningPort, Factory]:
    factory = Factory.forProtocol(protocol)
    factory.lost = Deferred()  # type: ignore[attr-defined]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port, factory


@pytest.mark.parametrize(
    ("protocol", "said"),
    [
        (_EndlessHead, r"response head over 64 KiB"),
        (_EndlessAfterEarlyHints, r"response head over 64 KiB"),
        (_EndlessHeaderLine, r"a response header line over 16 KiB"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_endless_response_head_is_cut(
    make_client: ClientFactory, protocol: type[_EndlessHead], said: str
) -> None:
    port, factory = await _listen(protocol)
    try:
        client = make_client(f"http://127.0.0.1:{port.getHost().port}", retries=0)
        call: Deferred[Any] = Deferred.fromCoroutine(client.blob_exists("x", DIGEST))
        call.addTimeout(60, reactor)
        with pytest.raises(Unavailable, match=said):
            await call
        server: _EndlessHead = await factory.lost  # type: ignore[attr-defined]
        # Cut by the client, long before the server would have stopped on its own (what it
        # sent includes what the loopback's socket buffers took).
        assert server.cut
        assert server.sent < ENOUGH
    finally:
        await port.stopListening()


class _ManySmallHeads(Protocol):
    """Answers every HEAD with a 404 whose head is about 1 KiB, keeping the connection."""

    def __init__(self) -> None:
        self.buffer = b""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 404 Not Found\r\n" + LINE + b"Content-Length: 0\r\n\r\n"
            )


@pytest_twisted.ensureDeferred
async def test_many_small_heads_on_one_connection_are_not_cut(
    make_client: ClientFactory,
) -> None:
    factory = Factory.forProtocol(_ManySmallHeads)
    factory.connections = 0  # type: ignore[attr-defined]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        client = make_client(f"http://127.0.0.1:{port.getHost().port}", retries=0)
        answers = 200  # about 200 KiB of heads in all, past the limit of one head
        for _ in range(answers):
            assert await client.blob_exists("x", DIGEST) is None
        assert factory.connections == 1  # type: ignore[attr-defined]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_cache_whose_upstream_sends_an_endless_head_answers_an_error(
    start_registry: Starter,
) -> None:
    """The pull-through cache's upstream client is the same: the puller gets the cache's
    error answer, the upstream's connection is cut."""
    port, factory = await _listen(_EndlessHead)
    try:
        upstream = f"http://127.0.0.1:{port.getHost().port}"
        registry = await start_registry({"proxy:hub": proxy_section(upstream)})
        response, body = await get(f"{registry.url}/v2/library/alpine/manifests/latest")
        server: _EndlessHead = await factory.lost  # type: ignore[attr-defined]
        assert server.cut
        assert server.sent < ENOUGH
        assert response.code == 503, body
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        await port.stopListening()
