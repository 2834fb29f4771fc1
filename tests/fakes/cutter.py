"""
A TCP relay on loopback that cuts chosen HTTP requests in the middle of their body, as a
network that drops a connection mid-upload does.

Every byte passes through unchanged, both ways, except for a request that `CuttingRelay.cut`
picks (by method and path): once ``after`` bytes of its body have gone to the server, the
relay half-closes its connection to the server (which gets part of the body, then the end of
the stream), waits until the server has closed its side too (it has dealt with what it got:
written it, refused it), and only then resets the client's connection, without passing on
anything the server answered.  So what the client does next meets a server that has already
acted on the cut request, as after a real cut (never a race with the server's handler).

Request bodies must have a ``Content-Length`` (the client library sends its blob bodies so);
``seen`` records the (method, path) of every request that went by.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet import reactor as _reactor
from twisted.protocols.portforward import (
    ProxyClient,
    ProxyClientFactory,
    ProxyFactory,
    ProxyServer,
)

from tests.fakes.request_heads import RequestHeads

reactor: Any = _reactor

# How long the relay waits for the server to close a cut request's connection before it
# resets the client's anyway.
_SERVER_GRACE = 10.0


@attrs.define
class Cut:
    """Cut the next ``count`` requests ``which`` picks (``which(method, path)``) once ``after``
    bytes of their body went through (all of it, when shorter: then only the answer is
    lost); ``done`` counts those cut so far."""

    which: Callable[[str, str], bool]
    after: int
    count: int = 1
    done: int = 0


class _ToServer(ProxyClient):
    """The relay's connection to the server: its answers go back, unless the request was cut."""

    def dataReceived(self, data: bytes) -> None:
        server: _FromClient | None = self.peer  # type: ignore[assignment]
        if server is not None and server.cutting:
            return  # the client must not get the answer to a request it never finished
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        server: _FromClient | None = self.peer  # type: ignore[assignment]
        if server is not None and server.cutting:
            self.peer = None
            server.reset()
            return
        super().connectionLost(reason)


class _ToServerFactory(ProxyClientFactory):
    protocol = _ToServer
    noisy = False


class _FromClient(ProxyServer):
    clientProtocolFactory = _ToServerFactory

    def connectionMade(self) -> None:
        self._heads = RequestHeads("the cutting relay")
        self._received = 0  # bytes of the client's stream read so far
        self._strike: int | None = None  # where in that stream the cut falls
        self.cutting = False
        self._grace: Any = None
        relay: _RelayFactory = self.factory  # type: ignore[assignment]
        relay.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        relay: _RelayFactory = self.factory  # type: ignore[assignment]
        relay.live.discard(self)
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.cutting:
            return
        relay: _RelayFactory = self.factory  # type: ignore[assignment]
        start, self._received = self._received, self._received + len(data)
        for head, body_start in self._heads.feed(data):
            method, path, length = head.method, head.target, head.length
            relay.seen.append((method, path))
            cut = next((c for c in relay.cuts if c.count > 0 and c.which(method, path)), None)
            if cut is not None and self._strike is None:
                cut.count -= 1
                cut.done += 1
                self._strike = body_start + min(cut.after, length)
        if self._strike is not None and self._received >= self._strike:
            passed = data[: max(0, self._strike - start)]
            if passed:
                super().dataReceived(passed)
            self._cut()
            return
        super().dataReceived(data)

    def _cut(self) -> None:
        self.cutting = True
        self.transport.stopReading()  # type: ignore[attr-defined]
        if self.peer is None:
            self.reset()
            return
        # Half-close: what was written goes out first, then the end of the stream; the
        # server's answer and close still come back (the answer is dropped).
        server: Any = self.peer.transport
        server.unregisterProducer()
        server.loseWriteConnection()
        self._grace = reactor.callLater(_SERVER_GRACE, self.reset)

    def reset(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self.transport.abortConnection()  # type: ignore[attr-defined]


class _RelayFactory(ProxyFactory):
    protocol = _FromClient

    noisy = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.cuts: list[Cut] = []
        self.seen: list[tuple[str, str]] = []
        self.live: set[_FromClient] = set()


@attrs.define
class CuttingRelay:
    url: str
    _factory: _RelayFactory

    @property
    def seen(self) -> list[tuple[str, str]]:
        """(method, path) of every request that went through, in order."""
        return self._factory.seen

    def methods(self, part: str = "/blobs/uploads/") -> list[str]:
        """The methods of the requests whose path contains ``part``, in order."""
        return [method for method, path in self.seen if part in path]

    def cut(self, which: Callable[[str, str], bool], after: int, count: int = 1) -> Cut:
        """Cut the next ``count`` requests ``which`` picks after ``after`` bytes of body."""
        cut = Cut(which, after, count)
        self._factory.cuts.append(cut)
        return cut


@asynccontextmanager
async def cutting_relay(target: str) -> AsyncIterator[CuttingRelay]:
    """A `CuttingRelay` on 127.0.0.1 (a free port) in front of the http ``target`` URL."""
    parts = urlsplit(target)
    factory = _RelayFactory(parts.hostname or "127.0.0.1", parts.port or 80)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        yield CuttingRelay(f"http://127.0.0.1:{port.getHost().port}", factory)
    finally:
        await port.stopListening()
        for connection in list(factory.live):
            connection.transport.abortConnection()  # type: ignore[attr-defined]
