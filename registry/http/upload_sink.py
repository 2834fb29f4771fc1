"""
The flow control of an upload body, from the socket to the storage writer.

`RegistryRequest` hands every chunk of an upload request's body to an `UploadSink` as it
arrives.  The sink queues chunks while the upload is still being opened (authorization, a
storage round trip), writes them in order once it is, pauses the socket while the writer is
behind, refuses the body as soon as it cannot be taken, and keeps every stored byte when the
client leaves mid-body so that the upload can resume there.  It knows nothing of routes or
storage: the handler gives it the coroutine that opens the upload and the error to answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.api.errors import RegistryError
from registry.asyncutil import shielded
from registry.failures import log_failure
from registry.storage.driver import WriteTakenOver

log = Logger()


class UploadWriter(Protocol):
    """Where an upload body goes (the storage layer's `UploadAppender`)."""

    @property
    def name(self) -> str:
        """The repository, for the log."""

    @property
    def upload_id(self) -> str:
        """The upload, for the log."""

    @property
    def size(self) -> int:
        """Bytes stored so far."""

    def write(self, data: bytes) -> Deferred[None] | None:
        """Take ``data``; a Deferred when the writer is behind, firing once it has caught up."""

    def close(self) -> Coroutine[Any, Any, None]:
        """Keep what was written (the upload stays resumable)."""

    def discard(self) -> Coroutine[Any, Any, None]:
        """Drop what was written: the upload stays where it was before this request."""


W = TypeVar("W", bound=UploadWriter)


class UploadSink(Generic[W]):
    """
    Takes an upload's body from the socket while the upload is being opened (``prepare``),
    then writes it through the writer that gives; asks for the socket to be paused while the
    writer is behind (`feed` returns a Deferred), and keeps what was stored when the client
    leaves mid-body.  A `BodySink` for `RegistryRequest`.

    ``explain`` turns the reason a body is refused (no access, an unknown upload, a full
    disk) into the error the client gets; the request answers with it at once (`watch`).
    ``abandon``, when given, is what becomes of the writer when the body is not taken whole
    (the client left mid-body, or it was refused) instead of keeping it: an upload the
    request itself started (a monolithic ``POST``) was never announced, so nobody can
    resume it.
    """

    def __init__(
        self,
        prepare: Coroutine[Any, Any, W],
        explain: Callable[[BaseException], RegistryError],
        abandon: Callable[[W], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.received = 0
        self._explain = explain
        self._abandon = abandon
        # The error the client gets, made once: explaining logs what is not the client's
        # doing, and a refusal is one event however many places report it.
        self._explained: RegistryError | None = None
        self._on_ready: Callable[[], None] | None = None
        self._on_refused: Callable[[RegistryError], None] | None = None
        self._queue: deque[bytes] = deque()
        self._appender: W | None = None
        self._error: BaseException | None = None
        self._pending: Deferred[None] | None = None
        self._drained: Deferred[None] | None = None
        self._idle: list[Deferred[None]] = []
        self._claimed = False
        self._lost = False
        # The server refused the body as malformed: nothing of it is kept.
        self._malformed = False
        self._ready: Deferred[None] = Deferred.fromCoroutine(prepare).addCallbacks(
            self._prepared, self._failed
        )

    def watch(self, ready: Callable[[], None], refused: Callable[[RegistryError], None]) -> None:
        """
        Be told when the upload is open and takes the body, or as soon as the body is refused
        (the sink then drops whatever still arrives).
        """
        self._on_ready, self._on_refused = ready, refused
        if self._error is not None:
            refused(self._explanation())
        elif self._appender is not None:
            ready()

    def _prepared(self, appender: W) -> None:
        self._appender = appender
        if self._lost:
            Deferred.fromCoroutine(self._end_after_drain())
        self._pump()
        if self._error is None and self._on_ready is not None:
            self._on_ready()

    def _failed(self, failure: Failure) -> None:
        self._fail(failure.value or Exception("upload preparation failed"))

    def _fail(self, error: BaseException) -> None:
        first = self._error is None
        if first:
            self._error = error
        self._queue.clear()
        self._pump()
        if first and self._on_refused is not None:
            self._on_refused(self._explanation())

    def _explanation(self) -> RegistryError:
        assert self._error is not None
        if self._explained is None:
            self._explained = self._explain(self._error)
        return self._explained

    def feed(self, data: bytes) -> Deferred[None] | None:
        if self._error is not None or self._malformed:
            return None  # the body is read and dropped; the route reports the error
        self._queue.append(data)
        self.received += len(data)
        self._pump()
        if self._queue or self._pending is not None:
            if self._drained is None:
                self._drained = Deferred()
            return self._drained
        return None

    def _pump(self) -> None:
        appender = self._appender
        while (
            appender is not None and self._queue and self._pending is None and self._error is None
        ):
            data = self._queue.popleft()
            try:
                pending = appender.write(data)
            except Exception as exc:
                self._fail(exc)
                return
            if pending is not None:
                self._pending = pending
                pending.addCallbacks(self._written, self._write_failed)
        if not self._queue and self._pending is None:
            drained, self._drained = self._drained, None
            if drained is not None:
                drained.callback(None)
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    def _written(self, _: object) -> None:
        self._pending = None
        self._pump()

    def _write_failed(self, failure: Failure) -> None:
        self._pending = None
        self._fail(failure.value or Exception("storage write failed"))

    async def result(self) -> W:
        """The appender once every byte of the body is in storage; raises the first error."""
        self._claimed = True
        await self._ready
        while self._queue or self._pending is not None:
            waiter: Deferred[None] = Deferred()
            self._idle.append(waiter)
            await waiter
        if self._error is not None:
            if self._appender is not None and self._abandon is not None:
                await shielded(self._abandoned(self._appender, self._abandon, "refused"))
            elif self._appender is not None:
                await shielded(self._appender.close())
            # As explained (and logged) once, whether or not the request could be answered
            # before its body was in.
            raise self._explanation()
        assert self._appender is not None
        return self._appender

    def connection_lost(self, reason: Failure) -> None:
        """Keep every byte that reached storage: the client may resume from there."""
        if self._claimed or self._lost:
            return
        self._lost = True
        if self._appender is not None:
            Deferred.fromCoroutine(self._end_after_drain())

    def malformed(self) -> None:
        """
        The server refused the body as malformed (a bad chunk size, a chunk without its CRLF)
        and answered 400: drop what arrived of it, including the bytes already stored, since
        the client was told none of it was taken and resumes from the upload's old offset.
        The connection is lost next; `connection_lost` then changes nothing.
        """
        if self._claimed or self._lost:
            return
        self._lost = self._malformed = True
        self._queue.clear()
        if self._appender is not None:
            Deferred.fromCoroutine(self._end_after_drain())

    async def _end_after_drain(self) -> None:
        appender = self._appender
        assert appender is not None
        while self._pending is not None:
            waiter: Deferred[None] = Deferred()
            self._idle.append(waiter)
            await waiter
        self._queue.clear()
        if self._malformed:
            await self._discard(appender)
            return
        # The connection ended after the server refused the body (and closed it), or the
        # client left: the lines say which.
        why = "body refused" if self._error is not None else "client left mid-upload"
        if self._abandon is not None:
            await self._abandoned(appender, self._abandon, why)
            return
        try:
            await appender.close()
        except (WriteTakenOver, RegistryError) as exc:
            # Cancelled, purged, or continued by another request, meanwhile.
            log.info(
                "{why}; {name} upload {upload} not kept: {reason}",
                why=why,
                name=appender.name,
                upload=appender.upload_id,
                reason=str(exc),
            )
        except Exception:
            log_failure(
                log,
                Failure(),
                "{why}; closing upload {upload} failed",
                why=why,
                upload=appender.upload_id,
            )
        else:
            log.info(
                "{why}; {name} upload {upload} kept at {size} bytes",
                why=why,
                name=appender.name,
                upload=appender.upload_id,
                size=appender.size,
            )

    async def _abandoned(
        self, appender: W, abandon: Callable[[W], Coroutine[Any, Any, None]], why: str
    ) -> None:
        try:
            await abandon(appender)
        except WriteTakenOver:  # cancelled, or continued by another request, meanwhile
            pass
        except RegistryError as exc:  # gone meanwhile (cancelled, purged): nothing to remove
            log.info(
                "{name} upload {upload} not removed after its body ({why}): {reason}",
                name=appender.name,
                upload=appender.upload_id,
                why=why,
                reason=exc.message,
            )
        except Exception:
            upload = appender.upload_id
            log_failure(log, Failure(), "removing upload {upload} after its body", upload=upload)
        else:
            log.info(
                "{why}; {name} upload {upload} removed: it was started by that request, "
                "and nobody was told where to resume it",
                why=why,
                name=appender.name,
                upload=appender.upload_id,
            )

    async def _discard(self, appender: W) -> None:
        try:
            await appender.discard()
        except WriteTakenOver:  # cancelled, or continued by another request: not ours to keep
            pass
        except Exception:
            upload = appender.upload_id
            log_failure(log, Failure(), "dropping malformed body of upload {upload}", upload=upload)
