"""
Streaming between files, sockets and hashers in constant memory.

- `FileSource`: a request body read from a file range in the reactor's thread pool (disk reads
  never block the reactor), hashed as it goes out, paused when the socket is full.
- `PipeSource`: a request body that is another response's body (a blob copied between two
  registries without touching the disk), its pauses passed back to the source socket.
- `FileSink`: an `IConsumer` that writes a response body to a file in the thread pool, pausing
  the producer while more than a few writes are queued; `SkipFirst` in front of it drops the
  start of a body (a resumed download the server answered whole).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from registry.api.digests import Digest
from registry.client.errors import BadResponse, ClientError, Rejected, Unavailable

READ_SIZE = 1024 * 1024
_MAX_QUEUED = 8  # FileSink writes waiting before the producer is paused


def new_hash(algorithm: str) -> Any:
    """A hashlib object for ``sha256``/``sha512`` (copyable, unlike a serialisable hasher)."""
    return hashlib.new(algorithm)


def in_thread(reactor: Any, fn: Any, *args: Any) -> Deferred[Any]:
    return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)


def _unless_stopped(work: Deferred[None], stopped: Any, stop: Any) -> Deferred[None]:
    """What `IBodyProducer.startProducing` returns for ``work``: its result, except that
    after ``stopProducing`` it never fires (twisted's HTTP client has failed the request
    then, and a second result would be an error), and cancelling it stops the body at once
    (twisted cancels it when the request is cancelled, and expects it to fire then)."""
    out: Deferred[None] = Deferred(lambda _: stop())

    def settle(result: Any) -> None:
        if out.called or stopped():
            return  # already answered (cancelled) or stopped: nobody waits for this
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(None)

    work.addBoth(settle)
    return out


@implementer(IBodyProducer)
class FileSource:
    """``length`` bytes of ``path`` from ``offset``, fed to ``hasher`` (a hashlib object) as
    they are sent.  One-shot: make a new one for each attempt.

    With ``expected`` (the digest the whole body must hash to: ``offset`` 0, ``length`` the
    file's size) the last read is held back until the hash is known: a file that does not
    hash to it fails the body with `Rejected` ``DIGEST_INVALID`` before its last bytes are
    written, so the request is cut short and no registry can commit it."""

    def __init__(
        self,
        reactor: Any,
        path: Path,
        offset: int,
        length: int,
        hasher: Any | None = None,
        *,
        expected: Digest | None = None,
    ) -> None:
        self._reactor = reactor
        self._path = path
        self._offset = offset
        self.length = length
        self._expected = expected
        if expected is not None and hasher is None:
            hasher = new_hash(expected.algorithm)
        self._hasher = hasher
        self._paused = False
        self._stopped = False
        self._resume: Deferred[None] | None = None
        self.sent = 0

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        work = Deferred.fromCoroutine(self._run(consumer))
        return _unless_stopped(work, lambda: self._stopped, self.stopProducing)

    async def _run(self, consumer: IConsumer) -> None:
        handle: IO[bytes] = await in_thread(self._reactor, open, self._path, "rb")
        try:
            await in_thread(self._reactor, handle.seek, self._offset)
            while self.sent < self.length and not self._stopped:
                if self._paused:
                    self._resume = Deferred()
                    await self._resume
                    continue
                want = min(READ_SIZE, self.length - self.sent)
                data: bytes = await in_thread(self._reactor, handle.read, want)
                if not data:
                    raise OSError(f"{self._path} ended after {self._offset + self.sent} bytes")
                if self._stopped:
                    break
                if self._hasher is not None:
                    self._hasher.update(data)
                if self.sent + len(data) >= self.length:
                    self._check_whole()
                self.sent += len(data)
                consumer.write(data)
        finally:
            await in_thread(self._reactor, handle.close)

    def _check_whole(self) -> None:
        """Before the last bytes go out: the body must hash to ``expected``."""
        if self._expected is None or self._hasher is None:
            return
        actual = Digest(self._expected.algorithm, self._hasher.hexdigest())
        if actual != self._expected:
            raise Rejected(
                None, f"{self._path} hashes to {actual}, not {self._expected}", "DIGEST_INVALID"
            )

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._resume is not None and not self._resume.called:
            resume, self._resume = self._resume, None
            resume.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()


class _Forward(Protocol):
    """Hands one relayed response body to its `PipeSource`, dropping its first ``skip``
    bytes (a source that answered a resumed read with the whole blob)."""

    def __init__(self, pipe: PipeSource, skip: int) -> None:
        self._pipe = pipe
        self._skip = skip
        self.taken = 0  # bytes of this body passed on

    def connectionMade(self) -> None:
        if self._pipe.paused and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data, self._skip = data[self._skip :], 0
        self.taken += len(data)
        self._pipe.take(self, data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._pipe.ended(self, reason)


Reopen = Callable[[int], "Deferred[Any]"]


@implementer(IBodyProducer)
class PipeSource:
    """A request body read from an open blob response (`BlobStream`); one-shot.

    The whole stream is hashed here, and passed on one piece behind: the last piece is
    written only once the stream ended complete and hashed to ``digest``, so a body that
    hashes wrong leaves the request short of its end and no registry commits it.

    A body cut off (`Unavailable`: a lost connection, a stall) is read on from where it
    stopped with ``reopen(offset)`` (a ``Range`` request, giving the next `BlobStream`), at most
    ``retries`` times, each only after a body that brought bytes; a source that answers the
    range with the whole blob has the bytes already passed on dropped.  ``error`` is the
    source's error the body failed with, if it did.
    """

    # The body waits on another server, whose own idle timeout ends a stall: the session
    # sending it does not time the wait (see `WatchedBody.waiting_on_source`).
    times_itself = True

    def __init__(
        self,
        blob: Any,
        digest: Digest,
        *,
        reopen: Reopen | None = None,
        retries: int = 0,
    ) -> None:
        self._blob = blob
        self.length = blob.length if blob.length is not None else UNKNOWN_LENGTH
        self._digest = digest
        self._hasher = new_hash(digest.algorithm)
        self._reopen = reopen
        self._retries = retries
        self.resumed = 0
        self.received = 0  # bytes of the blob taken so far (the held piece included)
        self.paused = False
        self.error: Exception | None = None
        self._consumer: IConsumer | None = None
        self._forward: _Forward | None = None
        self._held = b""
        self._stopped = False
        self._opening: Deferred[Any] | None = None
        self._done: Deferred[None] = Deferred(lambda _: self.stopProducing())

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._attach(self._blob, 0)
        return _unless_stopped(self._done, lambda: self._stopped, self.stopProducing)

    def _attach(self, blob: Any, skip: int) -> None:
        self._blob = blob
        self._forward = _Forward(self, skip)
        blob.deliver(self._forward, verify=False)

    def take(self, forward: _Forward, data: bytes) -> None:
        if forward is not self._forward or self._done.called:
            return
        self._hasher.update(data)
        self.received += len(data)
        held, self._held = self._held, data
        if held and self._consumer is not None:
            self._consumer.write(held)

    def ended(self, forward: _Forward, reason: Failure) -> None:
        if forward is not self._forward or self._done.called or self._stopped:
            return
        self._forward = None
        if isinstance(reason.value, ResponseDone):
            actual = Digest(self._digest.algorithm, self._hasher.hexdigest())
            if actual != self._digest:
                self._fail(BadResponse(None, f"body hashes to {actual}, not {self._digest}"))
                return
            held, self._held = self._held, b""
            if held and self._consumer is not None:
                self._consumer.write(held)
            self._done.callback(None)
            return
        error = reason.value
        if not isinstance(error, ClientError):
            error = Unavailable(None, f"the source's body ended: {error}")
        if (
            isinstance(error, Unavailable)
            and self._reopen is not None
            and self.resumed < self._retries
            and forward.taken > 0
        ):
            self.resumed += 1
            self._resume(error)
            return
        self._fail(error)

    def _resume(self, cut: ClientError) -> None:
        opening = self._reopen(self.received) if self._reopen is not None else None
        assert opening is not None
        self._opening = opening

        def opened(blob: Any) -> None:
            self._opening = None
            if self._stopped or self._done.called:
                blob.abort()
                return
            skip = self.received - blob.offset  # 0 for a 206 from where it stopped
            self._attach(blob, skip)
            if self.paused:
                self.pauseProducing()

        def failed(failure: Failure) -> None:
            self._opening = None
            if self._stopped or self._done.called:
                return
            error = failure.value
            self._fail(error if isinstance(error, ClientError) else cut)

        opening.addCallbacks(opened, failed)

    def _fail(self, error: Exception) -> None:
        self._held = b""
        self.error = error
        if not self._done.called:
            self._done.errback(Failure(error))

    def _control(self) -> IPushProducer | None:
        if self._forward is None or self._forward.transport is None:
            return None
        return cast(IPushProducer, self._forward.transport)

    def pauseProducing(self) -> None:
        self.paused = True
        control = self._control()
        if control is not None:
            control.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        control = self._control()
        if control is not None:
            control.resumeProducing()

    def stopProducing(self) -> None:
        self._stopped = True
        if self._opening is not None:
            opening, self._opening = self._opening, None
            opening.cancel()
        self._blob.abort()


@implementer(IConsumer)
class FileSink:
    """Writes what it is given to ``handle`` in order, in the thread pool; ``hasher`` sees
    every byte.  `close` waits for the queued writes and reports the first write error."""

    def __init__(self, reactor: Any, handle: IO[bytes], hasher: Any | None = None) -> None:
        self._reactor = reactor
        self._handle = handle
        self._hasher = hasher
        self._queue: deque[bytes] = deque()
        self._writing = False
        self._producer: IPushProducer | None = None
        self._paused = False
        self._error: Failure | None = None
        self._drained: Deferred[None] | None = None
        self.written = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        if self._hasher is not None:
            self._hasher.update(data)
        self._queue.append(data)
        if len(self._queue) >= _MAX_QUEUED and self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        self._next()

    def _next(self) -> None:
        if self._writing:
            return
        if not self._queue or self._error is not None:
            self._queue.clear() if self._error is not None else None
            if self._drained is not None:
                drained, self._drained = self._drained, None
                drained.callback(None)
            return
        self._writing = True
        data = self._queue.popleft()
        d = in_thread(self._reactor, self._handle.write, data)

        def written(_: object) -> None:
            self.written += len(data)

        def failed(failure: Failure) -> None:
            self._error = self._error or failure
            # Nothing more can be written: stop the body now rather than read the rest of it
            # for nothing (and a producer paused for the queue would never be resumed).
            producer, self._producer = self._producer, None
            if producer is not None:
                producer.stopProducing()

        def next_one(_: object) -> None:
            self._writing = False
            if self._paused and len(self._queue) < _MAX_QUEUED // 2 and self._producer:
                self._paused = False
                self._producer.resumeProducing()
            self._next()

        d.addCallbacks(written, failed).addBoth(next_one)

    def check(self) -> None:
        """Raise the write error, if one happened: the cause of a body that ended early."""
        if self._error is not None:
            self._error.raiseException()

    async def close(self) -> None:
        """Wait until everything queued is on disk (in the OS), then raise a write error."""
        if self._writing or self._queue:
            self._drained = Deferred()
            await self._drained
        if self._error is not None:
            self._error.raiseException()


@implementer(IConsumer)
class SkipFirst:
    """Passes what it is given on to ``consumer``, except the first ``count`` bytes, dropped
    as they come (a resumed download the server answered whole: what the file has already
    is read again, and not kept)."""

    def __init__(self, consumer: IConsumer, count: int) -> None:
        self._consumer = consumer
        self.left = count

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self.left:
            if len(data) <= self.left:
                self.left -= len(data)
                return
            data, self.left = data[self.left :], 0
        self._consumer.write(data)


class _Tap:
    """The consumer a watched body writes to: reports each write (its size), passes it on."""

    def __init__(self, consumer: IConsumer, on_write: Any) -> None:
        self._consumer = consumer
        self._on_write = on_write

    def write(self, data: bytes) -> None:
        self._on_write(len(data))
        self._consumer.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()


@implementer(IBodyProducer)
class WatchedBody:
    """A request body whose progress is reported: ``on_progress(bytes written)`` after every
    write and ``on_progress(0)`` once the body is complete (the session's idle timeout is reset
    from it, so an upload that stops moving fails instead of waiting forever).

    `waiting_on_source` says when a silence is not the registry's: the body is being produced,
    the connection has not paused it, and it comes from another server that times its own
    silence (a `PipeSource`, whose source's idle timeout ends a stall, naming that source)."""

    def __init__(self, inner: IBodyProducer, on_progress: Any) -> None:
        self._inner = inner
        self._on_progress = on_progress
        self.length = inner.length
        self._producing = False
        self._paused = False

    @property
    def waiting_on_source(self) -> bool:
        timed_elsewhere = bool(getattr(self._inner, "times_itself", False))
        return timed_elsewhere and self._producing and not self._paused

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._producing = True
        d: Deferred[None] = self._inner.startProducing(
            cast(IConsumer, _Tap(consumer, self._on_progress))
        )

        def sent(result: object) -> object:
            self._producing = False
            self._on_progress(0)
            return result

        return d.addBoth(sent)

    def pauseProducing(self) -> None:
        self._paused = True
        self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._inner.resumeProducing()

    def stopProducing(self) -> None:
        self._producing = False
        self._inner.stopProducing()


T = TypeVar("T")


class single_use(Generic[T]):
    """
    A body factory for `RegistryClient.finish_upload` that gives one body: a streamed body is
    spent once sent, so a second call (a 401 on the PUT asks for the body again) raises
    `Unavailable` naming ``what`` instead of sending nothing.  ``used``: whether the body was
    made (a caller closes an unsent reader itself).
    """

    def __init__(self, make: Callable[[], T], what: str) -> None:
        self._make = make
        self._what = what
        self.used = False

    def __call__(self) -> T:
        if self.used:
            raise Unavailable(None, f"{self._what} cannot be sent twice")
        self.used = True
        return self._make()
