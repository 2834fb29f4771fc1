"""
A real webhook receiver for the notification tests: a twisted.web site on 127.0.0.1 that
records every POST (body and headers), and can be told to answer 503 or to stop listening
(connection refused) and come back on the same port, to redirect elsewhere (``status`` 3xx and
``location``), to take POSTs and never answer them (``hang``), to take them and answer 200
with a body that does not end (``endless``: chunks of ``endless[0]`` bytes every ``endless[1]``
seconds, for at most `ENDLESS_FOR` seconds; ``cut`` counts the answers the client closed), or
to take them, do its work for ``delay`` seconds, then record them and answer 200 (the events
are taken whether or not the client still waits for the answer, as a receiver that processed
them before answering has).  ``posts`` counts the POSTs that arrived, answered or not yet.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

# An endless answer ends after this long anyway, so that a client that keeps reading (the bug
# the tests look for) cannot keep a test running.
ENDLESS_FOR = 15.0


@attrs.define
class Delivery:
    """One POST as the receiver got it."""

    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def events(self) -> list[dict[str, Any]]:
        envelope = json.loads(self.body)
        assert set(envelope) == {"events"}, envelope
        events: list[dict[str, Any]] = envelope["events"]
        return events


class _Hook(Resource):
    isLeaf = True

    def __init__(self, receiver: WebhookReceiver) -> None:
        super().__init__()
        self.receiver = receiver

    def render_POST(self, request: Request) -> bytes | int:
        body = request.content.read()
        self.receiver.posts += 1
        self.receiver._changed()
        if self.receiver.hang:
            self.receiver.refused += 1
            self.receiver._changed()
            return NOT_DONE_YET
        if 300 <= self.receiver.status < 400:
            self.receiver.refused += 1
            self.receiver._changed()
            request.setResponseCode(self.receiver.status)
            request.setHeader("Location", self.receiver.location or "/")
            return b""
        if self.receiver.status >= 400:
            self.receiver.refused += 1
            self.receiver._changed()
            request.setResponseCode(self.receiver.status)
            return b"not now"
        if self.receiver.delay:
            self._later(request, body, self.receiver.delay)
            return NOT_DONE_YET
        self._record(request, body)
        request.setResponseCode(self.receiver.status)
        if self.receiver.endless is not None:
            self._stream(request, *self.receiver.endless)
            return NOT_DONE_YET
        return b""

    def _record(self, request: Request, body: bytes) -> None:
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode().lower()] = [v.decode("latin-1") for v in values]
        delivery = Delivery(headers, body)
        self.receiver.deliveries.append(delivery)
        self.receiver.events.extend(delivery.events)
        self.receiver._changed()

    def _later(self, request: Request, body: bytes, delay: float) -> None:
        closed: list[bool] = []
        request.notifyFinish().addErrback(lambda _: closed.append(True))

        def answer() -> None:
            self._record(request, body)  # taken, whether the client still waits or not
            if not closed:
                request.setResponseCode(200)
                request.finish()

        reactor.callLater(delay, answer)  # type: ignore[attr-defined]

    def _stream(self, request: Request, size: int, interval: float) -> None:
        receiver = self.receiver
        chunk = b"x" * size
        closed: list[bool] = []
        deadline = reactor.seconds() + ENDLESS_FOR  # type: ignore[attr-defined]

        def cut(reason: Failure) -> None:
            # notifyFinish fails when the connection goes before the answer ended.
            closed.append(True)
            receiver.cut += 1
            receiver._changed()

        request.notifyFinish().addErrback(cut)

        def more() -> None:
            if closed:
                return
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                request.finish()
                return
            request.write(chunk)
            reactor.callLater(interval, more)  # type: ignore[attr-defined]

        more()


class WebhookReceiver:
    """Start with `start`; `url` is where to POST."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.events: list[dict[str, Any]] = []  # of every delivery, in order
        self.status = 200
        self.location: str | None = None  # where a 3xx status points
        self.hang = False  # take POSTs, never answer
        self.endless: tuple[int, float] | None = None  # (chunk size, interval): see above
        self.cut = 0  # endless answers the client closed
        self.delay = 0.0  # seconds of work before recording a POST and answering 200
        self.posts = 0  # POSTs that arrived
        self.refused = 0  # POSTs not recorded (answered 3xx/4xx/5xx, or left hanging)
        self.port = 0
        self._listening: IListeningPort | None = None
        self._connections: list[Protocol] = []
        self._waiters: list[tuple[Any, Deferred[None]]] = []
        receiver = self

        class Channel(HTTPChannel):
            def connectionMade(self) -> None:
                super().connectionMade()
                receiver._connections.append(self)

            def connectionLost(self, reason: Any) -> None:
                if self in receiver._connections:
                    receiver._connections.remove(self)
                super().connectionLost(reason)

        self._site = Site(_Hook(self))
        self._site.protocol = Channel  # type: ignore[assignment]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after `stop`)."""
        endpoint = TCP4ServerEndpoint(reactor, self.port, interface="127.0.0.1")
        self._listening = await endpoint.listen(self._site)
        self.port = self._listening.getHost().port

    async def stop(self) -> None:
        """Refuse connections, and drop the open ones (a receiver that went away)."""
        if self._listening is not None:
            await self._listening.stopListening()
            self._listening = None
        for channel in list(self._connections):
            assert channel.transport is not None
            channel.transport.loseConnection()  # answers already written still go out

    async def wait_closed(self, within: float = 10.0) -> None:
        """Until no connection has been open for a fifth of a second (bounded by ``within``
        seconds): a POST that a sender killed a moment ago left in this side's accept queue or
        socket buffer has then been read and answered with the `status` of that moment, not
        with the one a test sets next.  (The quiet spell covers a connection still waiting to
        be accepted: the reactor takes it within a few of its turns.)"""
        quiet_turns = 0
        for _ in range(int(within / 0.02)):
            quiet_turns = 0 if self._connections else quiet_turns + 1
            if quiet_turns >= 10:
                return
            await deferLater(reactor, 0.02)  # type: ignore[arg-type]
        raise AssertionError(f"{len(self._connections)} connections still open")

    def _changed(self) -> None:
        for waiter in list(self._waiters):
            condition, d = waiter
            if condition():
                self._waiters.remove(waiter)
                d.callback(None)

    async def wait_for(self, condition: Any, within: float = 30.0) -> None:
        """Until ``condition()`` holds after a delivery (bounded by ``within`` seconds)."""
        if condition():
            return
        d: Deferred[None] = Deferred()
        waiter = (condition, d)
        self._waiters.append(waiter)
        d.addTimeout(within, reactor)
        try:
            await d
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def wait_events(self, count: int, within: float = 30.0) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.events) >= count, within)
        return self.events
