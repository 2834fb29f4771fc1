"""
Reading upstream response bodies: small ones collected under a size cap, blobs relayed.

A blob body is relayed to the caller's protocol through `BodyRelay`, which adds what a cache
fill needs and twisted's `Response` lacks: the byte count against ``Content-Length``, the
sha256 against the digest asked for, an idle timeout (a peer that stops sending mid-body must
not hold a fill forever) that is suspended while the caller itself has paused the stream, and
an abort that really closes the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from registry.api.digests import Digest, DigestingHasher
from registry.client.errors import BadResponse, ClientError, TooLarge, Unavailable
from registry.http import twisted_internals

T = TypeVar("T")

_CLEAN_END = (ResponseDone, PotentialDataLoss)


def _why(reason: Failure) -> str:
    """A person's words for how a body ended early: Twisted's ``ResponseFailed`` carries a
    list of failures whose text is their repr."""
    failures = getattr(reason.value, "reasons", None) or [reason]
    words = []
    for failure in failures:
        value = getattr(failure, "value", failure)
        if isinstance(value, ConnectionDone):
            words.append("closed by the other side")
        elif isinstance(value, ConnectionLost):
            words.append("connection lost")
        elif text := " ".join(str(value).split()):  # data-loss markers have no text
            words.append(text)
    return ", ".join(dict.fromkeys(words)) or "closed early"


def _ended_cleanly(reason: Failure) -> bool:
    return isinstance(reason.value, _CLEAN_END)


def _failure(error: BaseException) -> Failure:
    return Failure(error)


def abort_transport(transport: object) -> None:
    """Close the connection under a response body now, without a graceful shutdown.

    The body transport twisted hands out is a ``TransportProxyProducer`` whose
    ``stopProducing`` only asks for a graceful close; a stalled TLS peer could keep that
    open.  Reaching for the wrapped transport's ``abortConnection`` (through
    `registry.http.twisted_internals`) is the only way to drop it.
    """
    inner = twisted_internals.proxied_transport(transport)
    abort = getattr(inner, "abortConnection", None)
    if callable(abort):
        abort()
        return
    stop = getattr(transport, "stopProducing", None)
    if callable(stop):
        stop()


def set_read_size(transport: object, size: int) -> None:
    """Let the TCP connection under a response body read up to ``size`` bytes per socket read.

    Twisted reads 64 KiB at a time; a large body then costs a reactor turn, a trip through
    the HTTP parser and a delivery to every consumer per 64 KiB.  The connection keeps the
    size when it goes back to the pool (it only bounds a read; nothing is allocated until
    bytes arrive).  TLS connections are left as they are.
    """
    inner = twisted_internals.proxied_transport(transport)
    if inner is not None and hasattr(inner, "bufferSize"):
        inner.bufferSize = max(size, inner.bufferSize)


class Collector(Protocol):
    """Collect a whole (small) body; more than ``limit`` bytes fails with `TooLarge`."""

    def __init__(self, limit: int, what: str) -> None:
        self._limit = limit
        self._what = what
        self._parts: list[bytes] = []
        self._size = 0
        self._error: ClientError | None = None
        self.done: Deferred[bytes] = Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            abort_transport(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._error = TooLarge(self._what, self._limit)
            self._abort()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if self._error is not None:
            self.done.errback(self._error)
        elif _ended_cleanly(reason):
            self.done.callback(b"".join(self._parts))
        elif isinstance(reason.value, ClientError):
            # A relayed blob body ends with the relay's own verdict (a digest mismatch is a
            # BadResponse, a stall Unavailable): passed on as it is.
            self.done.errback(reason.value)
        else:
            self.done.errback(
                Unavailable(None, f"connection lost reading {self._what}: {_why(reason)}")
            )


@implementer(IPushProducer)
class _BodyControl:
    """What the caller's protocol sees as its transport: pause/resume/stop the upstream."""

    def __init__(self, relay: BodyRelay) -> None:
        self._relay = relay

    def pauseProducing(self) -> None:
        self._relay.pause()

    def resumeProducing(self) -> None:
        self._relay.resume()

    def stopProducing(self) -> None:
        self._relay.abort(Unavailable(None, "body stopped by its consumer"))


class BodyRelay(Protocol):
    """Relays a blob body to ``inner`` and ends it with ResponseDone or an ClientError.

    ``inner.connectionLost`` gets ``Failure(ResponseDone())`` only when the body was complete
    (``length`` bytes when known: its ``Content-Length``, or the size a manifest declares) and,
    with ``verify``, hashed to ``digest``.  A body going past ``length`` is cut off before the
    byte that does reaches ``inner``.
    """

    def __init__(
        self,
        inner: Protocol,
        *,
        reactor: IReactorTime,
        digest: Digest,
        length: int | None,
        verify: bool,
        idle_timeout: float,
        on_bytes: Callable[[int], None],
        on_error: Callable[[], None],
        read_size: int | None = None,
    ) -> None:
        self._inner = inner
        self._read_size = read_size
        self._reactor = reactor
        self._digest = digest
        self._length = length
        self._hasher = DigestingHasher(digest.algorithm) if verify else None
        self._idle_timeout = idle_timeout
        self._on_bytes = on_bytes
        self._on_error = on_error
        self._timer: IDelayedCall | None = None
        self._paused = False
        self._error: ClientError | None = None
        self._finished = False
        self.received = 0

    # -- from the upstream response

    def connectionMade(self) -> None:
        if self._read_size is not None:
            set_read_size(self.transport, self._read_size)
        self._arm()
        self._inner.makeConnection(_BodyControl(self))

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        self.received += len(data)
        self._on_bytes(len(data))
        if self._length is not None and self.received > self._length:
            self.abort(
                BadResponse(None, f"body of {self._digest} longer than {self._length} bytes")
            )
            return
        if self._hasher is not None:
            self._hasher.update(data)
        self._arm()
        self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._disarm()
        self._finished = True
        error = self._error
        if error is None:
            if not _ended_cleanly(reason):
                of = f" of {self._length}" if self._length is not None else ""
                error = Unavailable(
                    None,
                    f"connection lost after {self.received}{of} bytes ({_why(reason)})",
                )
            elif self._length is not None and self.received != self._length:
                ended = (
                    f"body of {self._digest} ended after {self.received} of {self._length} bytes"
                )
                if isinstance(reason.value, PotentialDataLoss):
                    # Closed without a length or a last chunk: perhaps cut, worth resuming.
                    error = Unavailable(None, ended)
                else:
                    # Its last chunk said the body was complete: it is not the blob.
                    error = BadResponse(None, ended)
            elif self._hasher is not None and self._hasher.digest() != self._digest:
                error = BadResponse(
                    None, f"body hashes to {self._hasher.digest()}, not {self._digest}"
                )
        if error is not None:
            self._on_error()
            self._inner.connectionLost(_failure(error))
        else:
            self._inner.connectionLost(_failure(ResponseDone("body complete")))

    # -- from the caller

    def pause(self) -> None:
        self._paused = True
        self._disarm()
        if self.transport is not None and not self._finished:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self._finished:
            self._arm()
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def reassert_pause(self) -> None:
        """Pause the socket again if the caller paused it: Twisted resumes it once it has
        delivered what it buffered before the body was asked for."""
        if self._paused and self.transport is not None and not self._finished:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def abort(self, error: ClientError) -> None:
        if self._finished or self._error is not None:
            return
        self._error = error
        self._disarm()
        if self.transport is not None:
            abort_transport(self.transport)

    # -- idle timeout

    def _arm(self) -> None:
        if self._paused or self._finished:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)
        else:
            self._timer = self._reactor.callLater(self._idle_timeout, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        self.abort(
            Unavailable(
                None, f"body stalled: nothing for {self._idle_timeout}s after {self.received} bytes"
            )
        )


class ConsumerWriter(Protocol):
    """Feeds a body into an `IConsumer`, registering the body as its push producer so the
    consumer's back-pressure pauses the upstream socket.  ``done`` fires with the byte count."""

    def __init__(self, consumer: IConsumer, abort: Callable[[], None]) -> None:
        self._consumer = consumer
        self.size = 0
        self.done: Deferred[int] = Deferred(lambda _: abort())

    def connectionMade(self) -> None:
        self._consumer.registerProducer(cast(IPushProducer, self.transport), True)

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        self._consumer.write(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._consumer.unregisterProducer()
        settle_body(self.done, reason, self.size)


def settle_body(done: Deferred[T], reason: Failure, result: T) -> None:
    """End a body's Deferred from ``connectionLost``: ``result`` when the whole body arrived
    (`ResponseDone`), the reason otherwise; nothing when it is settled already (cancelled)."""
    if done.called:
        return
    if isinstance(reason.value, ResponseDone):
        done.callback(result)
    else:
        done.errback(reason)
