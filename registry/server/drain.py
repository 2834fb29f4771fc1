"""
Draining: finish the requests in flight, close idle connections, then let the process stop.

Stopping the reactor closes every connection at once, bytes still buffered included, which is
how a restart used to cut downloads in flight ("unexpected EOF").  The `ConnectionTracker`
knows each connection and the requests running on it:

- its factory wraps the Site's, so every connection is seen open and closed;
- its request factory wraps the Site's, so every request is seen start and finish.

`ConnectionTracker.drain` (after the listeners stopped accepting) tells each request running
that its answer is its connection's last (``Connection: close``), closes each such connection
as soon as that answer is sent, and waits until every connection is gone.  Past the deadline
the remaining connections are aborted.

A connection with no request running when the drain begins is closed at once when the whole
instance stops.  When only this worker stops (a rolling restart: the others serve on), it is
closed once it has stayed idle for the drain's ``idle_grace`` (`IDLE_GRACE`), not at once: a
keep-alive client between two requests (docker's PATCH after a PATCH, a load test's next
GET) may have sent its next request already, and a close that crosses it leaves the client
without an answer, which clients retry only for idempotent requests.  A request that
arrives meanwhile is answered, with ``Connection: close``.  The same goes for a connection
accepted just before the listeners closed.

HTTP/2 requests do not expose their connection: an HTTP/2 connection is closed once no request
is running anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IProtocolNegotiationFactory,
)
from twisted.logger import Logger
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import directlyProvides, implementer, providedBy

from registry.http import misdirected

log = Logger()

# How far to follow ``.transport`` from a request's channel to its connection's transport.
_TRANSPORT_DEPTH = 4
# After aborting the connections left at the deadline, how long to wait for them to be gone.
_ABORTED_WAIT = 1.0
# How long a connection idle when the drain begins may still bring a request (module text).
IDLE_GRACE = 2.0


def _last_on_its_connection(request: Any) -> None:
    """
    Have ``request``'s answer say ``Connection: close`` (HTTP/1.x, when its head is not out
    yet): the drain closes the connection after it, and a keep-alive client told so opens a
    new one for its next request instead of sending it into a closing connection, where it
    would get no answer (Go's client retries that only for idempotent requests; docker's
    PATCH and POST are not).  Go's server does the same while it shuts down.
    """
    channel = getattr(request, "channel", None)
    if not isinstance(channel, http.HTTPChannel) or request.startedWriting:
        return
    request.setHeader(b"connection", b"close")
    channel.persistent = False


@implementer(ILoggingContext)
class _TrackedProtocol(proxyForInterface(IProtocol, "_protocol")):  # type: ignore[misc]
    """The Site's protocol for one connection, seen opening and closing by the tracker."""

    def __init__(self, protocol: IProtocol, tracker: ConnectionTracker) -> None:
        super().__init__(protocol)
        self._tracker = tracker
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self._tracker._opened(transport)
        self._protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._tracker._bytes_came(self.transport)
        self._protocol.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        # The connection counts as gone once its protocol knows (its requests logged as cut):
        # a drain waiting for it goes on only then.
        try:
            self._protocol.connectionLost(reason)
        finally:
            self._tracker._closed(self.transport)

    def logPrefix(self) -> str:
        inner = self._protocol
        if ILoggingContext.providedBy(inner):
            return str(inner.logPrefix())
        return type(inner).__name__


@implementer(IProtocolFactory, ILoggingContext)
class _TrackingFactory:
    """Stands in front of the Site so the tracker sees every connection."""

    def __init__(self, wrapped: IProtocolFactory, tracker: ConnectionTracker) -> None:
        self._wrapped = wrapped
        self._tracker = tracker
        if IProtocolNegotiationFactory.providedBy(wrapped):
            directlyProvides(self, providedBy(self), IProtocolNegotiationFactory)
        misdirected.pass_answers_on(self, wrapped)

    def answered_without_request(self, addr: object, status: int, sent: int) -> None:
        misdirected.IAnswersWithoutRequest(self._wrapped).answered_without_request(
            addr, status, sent
        )

    def acceptableProtocols(self) -> list[bytes]:
        return list(self._wrapped.acceptableProtocols())  # type: ignore[attr-defined]

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        protocol = self._wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        return _TrackedProtocol(protocol, self._tracker)

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def logPrefix(self) -> str:
        wrapped = self._wrapped
        if ILoggingContext.providedBy(wrapped):
            return str(wrapped.logPrefix())
        return type(wrapped).__name__


class ConnectionTracker:
    """Open connections and the requests running on each; drains them on request."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        # transport -> requests running on it (HTTP/1.x: at most one at a time, pipelining aside)
        self._connections: dict[Any, int] = {}
        self._unplaced = 0  # running requests whose connection is unknown (HTTP/2)
        # The requests running, to be told at the drain that their answer is the last one.
        self._running: set[Any] = set()
        self._draining = False
        self._drained: Deferred[None] | None = None
        self._cut = False  # `cut`: no drain, or no more of it
        self._ends_by: float | None = None  # the drain's deadline (clock time), once it began
        # Told the number of open connections each time one opens or closes.
        self._watchers: list[Callable[[int], None]] = []
        # Connections idle when the drain began (or opened during it): their close, due once
        # they stayed idle for IDLE_GRACE.
        self._idle_closes: dict[Any, Any] = {}
        self._idle_grace = 0.0  # the drain's (`drain`)
        # Of those, the ones bytes came on since: a request's head may be arriving.
        self._heads_coming: set[Any] = set()

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def requests(self) -> int:
        return sum(self._connections.values()) + self._unplaced

    def time_left(self) -> float | None:
        """
        Seconds until the drain's deadline (0 once it passed, or after `cut`); None before a
        drain.  What stops after the drain (a webhook POST in flight) waits no longer: the
        stop as a whole then stays within the drain's bound, which a supervisor (and the
        service manager) allows it.
        """
        if self._ends_by is None:
            return None
        return max(0.0, float(self._ends_by - self._clock.seconds()))

    def watch(self, watcher: Callable[[int], None]) -> None:
        """Call ``watcher`` with the number of open connections as each opens or closes."""
        self._watchers.append(watcher)

    def wrap_factory(self, factory: IProtocolFactory) -> IProtocolFactory:
        """The factory to give the listeners instead of ``factory``."""
        return _TrackingFactory(factory, self)

    def wrap_request_factory(self, request_factory: Any) -> Any:
        """A request factory for the Site that reports each request to this tracker."""

        def make_request(*args: Any, **kwargs: Any) -> Any:
            request = request_factory(*args, **kwargs)
            self._request_started(request)
            return request

        if INonQueuedRequestFactory.providedBy(request_factory):
            directlyProvides(make_request, INonQueuedRequestFactory)
        return make_request

    # Connections

    def _opened(self, transport: Any) -> None:
        self._connections[transport] = 0
        self._tell_watchers()
        if self._draining:  # accepted just before the listeners closed: its request comes
            self._close_after_grace(transport)

    def _closed(self, transport: Any) -> None:
        if self._connections.pop(transport, None) is not None:
            self._tell_watchers()
        self._cancel_idle_close(transport)
        self._check_drained()

    def _tell_watchers(self) -> None:
        for watcher in self._watchers:
            watcher(len(self._connections))

    # Requests

    def _connection_of(self, request: Any) -> Any:
        transport = getattr(request.channel, "transport", None)
        for _ in range(_TRANSPORT_DEPTH):
            if transport is None or transport in self._connections:
                return transport
            transport = getattr(transport, "transport", None)
        return None

    def _request_started(self, request: Any) -> None:
        connection = self._connection_of(request)
        if connection is None:
            self._unplaced += 1
        else:
            self._connections[connection] += 1
            self._cancel_idle_close(connection)  # closed after this answer instead
        self._running.add(request)
        if self._draining:
            _last_on_its_connection(request)
        request.notifyFinish().addBoth(self._request_finished, connection, request)

    def _request_finished(self, result: object, connection: Any, request: Any) -> None:
        self._running.discard(request)
        if connection is None:
            self._unplaced -= 1
        elif connection in self._connections:
            self._connections[connection] -= 1
            if self._draining:
                self._close_if_idle(connection)
        if self._draining and self._unplaced == 0:
            # (HTTP/2 connections were kept while requests of unknown connection ran; those
            # in their grace keep it.)
            for transport in list(self._connections):
                if transport not in self._idle_closes:
                    self._close_if_idle(transport)
        self._check_drained()

    # Draining

    def _close_after_grace(self, transport: Any) -> None:
        """Close ``transport`` if it is still idle `IDLE_GRACE` from now (or at the drain's
        deadline, if sooner)."""
        if self._connections.get(transport) != 0 or transport in self._idle_closes:
            return
        grace = min(self._idle_grace, self.time_left() or 0.0)
        if grace <= 0:
            self._close_if_idle(transport)
            return

        def due() -> None:
            self._idle_closes.pop(transport, None)
            if transport in self._heads_coming:
                # A request's head is on its way (bytes came, no request yet): it gets the
                # same grace again, within the drain's deadline.
                self._heads_coming.discard(transport)
                self._close_after_grace(transport)
                return
            self._close_if_idle(transport)

        self._idle_closes[transport] = self._clock.callLater(grace, due)

    def _bytes_came(self, transport: Any) -> None:
        if transport in self._idle_closes:
            self._heads_coming.add(transport)

    def _cancel_idle_close(self, transport: Any) -> None:
        self._heads_coming.discard(transport)
        pending = self._idle_closes.pop(transport, None)
        if pending is not None and pending.active():
            pending.cancel()

    def _close_if_idle(self, transport: Any) -> None:
        if self._connections.get(transport) != 0:
            return
        if self._unplaced and getattr(transport, "negotiatedProtocol", None) == b"h2":
            return  # may carry the HTTP/2 requests still running
        transport.loseConnection()  # sends what is buffered, then closes

    def _check_drained(self) -> None:
        if self._drained is not None and not self._connections and not self._unplaced:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def cut(self) -> None:
        """Abort the connections rather than drain them: a drain running ends now, one that
        has not started yet ends as soon as it starts (a stop at once: the supervisor's
        second SIGINT, or SIGQUIT)."""
        self._cut = True
        self._ends_by = self._clock.seconds()
        if self._drained is not None:
            self._drained.cancel()

    async def drain(self, limit: float, idle_grace: float = 0.0) -> int:
        """
        Close connections as their requests finish (those idle now once idle for
        ``idle_grace``: the module text says when); after ``limit`` seconds (or at `cut`)
        abort the rest.  Returns how many connections had to be aborted.
        """
        self._idle_grace = idle_grace
        self._draining = True
        if self._ends_by is None:  # (a `cut` before it: the deadline passed already)
            self._ends_by = self._clock.seconds() + limit
        self._drained = Deferred()
        drained = self._drained
        for request in list(self._running):
            _last_on_its_connection(request)
        for transport in list(self._connections):
            self._close_after_grace(transport)
        self._check_drained()
        if drained.called:
            return 0
        if self.requests and not self._cut:  # (a stop at once drains nothing: no line)
            log.info(
                "draining {requests} request(s) on {connections} connection(s), "
                "for up to {timeout:g} s",
                requests=self.requests,
                connections=self.connections,
                timeout=limit,
            )
        timer = self._clock.callLater(0 if self._cut else limit, drained.cancel)
        try:
            await drained
            return 0
        except CancelledError:
            pass  # the deadline: cut what is left
        finally:
            if timer.active():
                timer.cancel()
        for transport in list(self._idle_closes):
            self._cancel_idle_close(transport)
        remaining = list(self._connections)
        log.warn(
            "{why}: cutting {connections} connection(s) with {requests} request(s) still running",
            why="told to stop at once" if self._cut else "draintimeout reached",
            connections=len(remaining),
            requests=self.requests,
        )
        for transport in remaining:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()
        await self._aborted()
        return len(remaining)

    async def _aborted(self) -> None:
        """
        Wait (briefly) for the aborted connections to be gone.  An abort tells the protocol
        at the reactor's next turn; the stop going on at once could stop the reactor before
        that turn, and the requests cut would never be told: no access line, no count.
        """
        gone: Deferred[None] = Deferred()
        self._drained = gone
        self._check_drained()
        timer = self._clock.callLater(_ABORTED_WAIT, gone.cancel)
        try:
            await gone
        except CancelledError:
            pass  # a connection whose abort is slower (or a `cut` meanwhile): stop anyway
        finally:
            self._drained = None
            if timer.active():
                timer.cancel()
