"""
The connection pool for S3, with sockets tuned for bulk transfers and a limit on how long a
request may go without a byte moving.

Twisted's TCP transports read 64 KiB per reactor turn and send at most 128 KiB per turn.  Moving
a 1 GiB blob in such steps costs 8-16 reactor turns per MiB (and, on downloads, a pause and a
resume of the S3 socket per 64 KiB read, which py-spy showed as a fifth of the reactor's time
during a pull).  S3 connections therefore read and send up to ``IO_SIZE`` at a time, which
takes a transfer through far fewer reactor turns, and less CPU.  Memory stays bounded: a
transport pauses its producer once ``bufferSize`` bytes wait, so each connection buffers about
``IO_SIZE`` in either direction.

A stalled S3 (the connection open, nothing moving: a network partition, an overloaded or stuck
server) would otherwise hold a part upload or a download for as long as TCP keeps the
connection, which without keep-alive probes is forever.  Each connection therefore watches the
request it carries (`S3Protocol`): once no byte has gone out or come in for ``idle_timeout``
seconds while bytes should be moving, it aborts the connection, and the request fails with
`S3Stalled` as a network failure would (the S3 client sends it again where it can).  "Should be
moving" is: while the body is sent, while the response body is read (unless the reader paused
the connection: a slow client is not S3's fault), and while waiting for the answer to a
request whose body was a `WatchedBody` that says so.  The wait for other answers is left to
``answertimeout`` (small requests) or ``copytimeout`` (copies and completions, which S3 may work
on for minutes before it answers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

IO_SIZE = 1024 * 1024
_LOST = Failure(ConnectionLost())


class S3Stalled(Exception):
    """Nothing went out to S3 or came back for the idle limit while a request was under way."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no byte sent or received for {seconds:g}s (S3 stalled)")


def socket_transport(transport: Any) -> Any:
    """The TCP transport below any wrapping (TLS, the response-head limit).  Wrappers are
    gone through by their ``transport``, not recognised by a missing ``socket``: a
    `ProtocolWrapper` answers for any attribute of what it wraps."""
    for _ in range(8):  # a few layers at most
        inner = getattr(transport, "transport", None)
        if inner is None:
            break
        transport = inner
    return transport if getattr(transport, "socket", None) is not None else None


def tune_transport(transport: Any, size: int = IO_SIZE) -> None:
    """Read and send up to ``size`` bytes per reactor turn on the TCP socket below any TLS."""
    tcp = socket_transport(transport)
    if tcp is not None:
        tcp.bufferSize = size
        tcp.SEND_LIMIT = size


class _Noted:
    """The consumer a `WatchedBody`'s inner producer writes to: every write is progress."""

    def __init__(self, consumer: IConsumer, body: WatchedBody) -> None:
        self._consumer = consumer
        self._body = body

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._body.moved()
        self._consumer.write(data)


@implementer(IBodyProducer, IPushProducer)
class WatchedBody:
    """
    A request body for S3, as Twisted's `IBodyProducer` asks: when Twisted stops it
    (``stopProducing``: the connection was lost, or S3 answered before the body was all sent),
    the Deferred ``startProducing`` returned never fires.  The registry's producers fire theirs
    with a `CancelledError` then (their consumers elsewhere await it), which Twisted's client
    would report as the request failing to generate, logging a traceback when S3 had already
    answered, and which the S3 client would take for its caller giving up: a connection S3 cut
    mid-body would not be sent again.  Only a cancel from the caller (Twisted cancels this
    Deferred) cancels.

    ``idle_answer``: whether the wait for S3's answer once the body is sent counts against the
    connection's idle limit (part uploads, large PUTs: S3 answers as soon as it stored them).
    """

    def __init__(self, inner: IBodyProducer, idle_answer: bool) -> None:
        self._inner = inner
        self.length = inner.length
        self.idle_answer = idle_answer
        self._moved: Callable[[], None] | None = None
        self._sent: Callable[[], None] | None = None
        self._stopped = False

    def watch(self, moved: Callable[[], None], sent: Callable[[], None]) -> None:
        """Call ``moved`` whenever body bytes go to the connection or it asks for more, and
        ``sent`` once the whole body is written."""
        self._moved, self._sent = moved, sent

    def moved(self) -> None:
        if self._moved is not None:
            self._moved()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        sent: Deferred[None] = Deferred(lambda _: self._inner.stopProducing())
        producing = self._inner.startProducing(_Noted(consumer, self))

        def done(result: object) -> None:
            if sent.called or self._stopped:
                return  # stopped by Twisted: never fired, as IBodyProducer asks
            if isinstance(result, Failure):
                sent.errback(result)
                return
            if self._sent is not None:
                self._sent()
            sent.callback(None)

        producing.addBoth(done)
        return sent

    def pauseProducing(self) -> None:
        self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self.moved()  # the socket took what it had: progress
        self._inner.resumeProducing()

    def stopProducing(self) -> None:
        self._stopped = True
        self._inner.stopProducing()


class _IdleWatch:
    """What an `S3ConnectionPool`'s connections share: the reactor and the idle limit."""

    def __init__(self, reactor: Any, limit: float | None) -> None:
        self.reactor = reactor
        self.limit = limit


class S3Protocol(HTTP11ClientProtocol):
    """An S3 connection: tuned socket sizes, and the idle limit on the request it carries."""

    watch: _IdleWatch | None = None

    def __init__(self, quiescentCallback: Callable[[Any], None], watch: _IdleWatch) -> None:
        def quiescent(protocol: Any) -> None:
            # The response is read whole and the connection goes back to the pool.
            self._request_over()
            quiescentCallback(protocol)

        super().__init__(quiescent)  # type: ignore[no-untyped-call]
        self.watch = watch
        self._timer: Any = None
        self._last = 0.0
        self._sent = False  # the request's body is all sent (or it had none)
        self._answered = False  # S3's answer head is in
        self._idle_answer = False
        self._stalled: S3Stalled | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        tune_transport(self.transport)

    def request(self, request: Any) -> Deferred[Any]:
        body = request.bodyProducer
        # A body of another kind says neither when it is sent nor what it waits for: only
        # the response body is watched then.
        self._sent = not isinstance(body, WatchedBody)
        self._answered = False
        self._idle_answer = isinstance(body, WatchedBody) and body.idle_answer
        if isinstance(body, WatchedBody):
            body.watch(self._moved, self._body_sent)
        self._start_watch()
        answer: Deferred[Any] = super().request(request)

        def answered(result: object) -> object:
            self._answered = True
            return result

        return answer.addBoth(answered)

    def _start_watch(self) -> None:
        watch = self.watch
        if watch is None or watch.limit is None:
            return
        self._last = watch.reactor.seconds()
        if self._timer is None or not self._timer.active():
            self._timer = watch.reactor.callLater(watch.limit, self._check)

    def _moved(self) -> None:
        if self.watch is not None:
            self._last = self.watch.reactor.seconds()

    def _body_sent(self) -> None:
        self._sent = True
        self._moved()

    def dataReceived(self, data: bytes) -> None:
        self._moved()
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _request_over(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _waiting_on_us(self) -> bool:
        """Nothing is expected from S3 now: the reader paused the connection (its client is
        slow, or it has not started reading), or S3 works on an answer left to other limits."""
        if self._answered:
            tcp = socket_transport(self.transport)
            reactor = self.watch.reactor if self.watch is not None else None
            return tcp is not None and reactor is not None and tcp not in reactor.getReaders()
        if self._sent:
            return not self._idle_answer
        return False

    def _check(self) -> None:
        watch = self.watch
        assert watch is not None and watch.limit is not None
        self._timer = None
        now = watch.reactor.seconds()
        if self._waiting_on_us():
            self._last = now  # time spent waiting on this side does not count
        elif now - self._last >= watch.limit:
            self._stalled = S3Stalled(watch.limit)
            transport: Any = self.transport
            # Not loseConnection: it waits for buffered bytes a stalled peer never takes.
            transport.abortConnection()
            return
        self._timer = watch.reactor.callLater(self._last + watch.limit - now, self._check)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self._request_over()
        if self._stalled is not None:
            reason = Failure(self._stalled)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class _S3Factory(_HTTP11ClientFactory):
    watch = _IdleWatch(None, None)

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        return S3Protocol(self._quiescentCallback, self.watch)


class S3ConnectionPool(HTTPConnectionPool):
    """
    Persistent connections whose sockets move ``IO_SIZE`` per reactor turn and whose requests
    fail with `S3Stalled` after ``idle_timeout`` seconds without a byte moving (None: never).
    """

    def __init__(
        self, reactor: Any, persistent: bool = True, idle_timeout: float | None = None
    ) -> None:
        super().__init__(reactor, persistent)  # type: ignore[no-untyped-call]
        # The pool builds each connection's factory from this class: one per pool carries
        # the pool's reactor and limit to the connections.
        watch = _IdleWatch(reactor, idle_timeout)
        factory: type[_HTTP11ClientFactory] = type("_S3Factory", (_S3Factory,), {"watch": watch})
        self._factory = factory
