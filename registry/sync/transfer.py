"""
Moving one blob's bytes between the two sides, in constant memory, at most at the sync's
bandwidth.

- Pull: the remote's response body is appended to a local upload as it arrives (the socket
  is paused while storage is behind, or while the throttle says so), then committed with the
  digest: `UploadStore.commit` hashes what was stored and refuses a mismatch, as for a
  client's push.  A failure cancels the upload, so nothing half-written remains.
- Push: the local blob's reader is the body of the remote upload's final PUT (one request,
  ``Content-Length`` known), paused by the HTTP connection's back-pressure and by the throttle.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from registry.api.digests import Digest
from registry.api.errors import DIGEST_INVALID, RegistryError
from registry.api.names import check_name
from registry.client import BadResponse, single_use
from registry.storage.uploads import UploadAppender
from registry.sync.abandoned import UploadMarks
from registry.sync.sides import LocalSide, RemoteSide
from registry.sync.throttle import PausingGate, Throttle, ThrottledBody

# How long a stopping push waits for the remote to cancel its upload (seconds).
STOP_CANCEL_TIMEOUT = 3.0


class _AppendToUpload(Protocol):
    """Receives a blob body into an upload appender, with back-pressure and the throttle."""

    def __init__(self, appender: UploadAppender, throttle: Throttle) -> None:
        self._appender = appender
        self._throttle = throttle
        self._gate: PausingGate | None = None
        self._pending: Deferred[None] | None = None
        self._failure: Failure | None = None
        self.received = 0
        self.done: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        self._gate = PausingGate(self._throttle, self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        assert self._gate is not None
        self.received += len(data)
        try:
            written = self._appender.write(data)
        except Exception:
            self._fail(Failure())
            return
        if written is not None:
            gate = self._gate
            gate.pause()
            self._pending = written

            def drained(result: object) -> object:
                if self._pending is written:
                    self._pending = None
                if isinstance(result, Failure):
                    self._fail(result)
                    return None
                gate.resume()
                return None

            written.addBoth(drained)
        self._gate.passed(len(data))

    def _fail(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._gate is not None:
            self._gate.cancel()
        if self.done.called:
            return
        if self._failure is not None:
            self.done.errback(self._failure)
        elif isinstance(reason.value, ResponseDone | PotentialDataLoss):
            if self._pending is not None:
                self._pending.addCallback(lambda _: self.received)
                self._pending.chainDeferred(self.done)  # type: ignore[arg-type]
            else:
                self.done.callback(self.received)
        else:
            self.done.errback(reason)


async def pull_blob(
    remote: RemoteSide,
    remote_name: str,
    local: LocalSide,
    local_name: str,
    digest: Digest,
    throttle: Throttle,
    marks: UploadMarks | None = None,
    size: int | None = None,
) -> int:
    """Copy a blob from the remote into the local repository; returns its size.  ``marks``
    records the upload as the sync's while it is open, so that a restart after a crash
    cancels it (`registry.sync.abandoned`).  ``size`` (the manifest's): a remote sending
    more fails the copy as soon as it does, rather than once the body ends."""
    check_name(local_name)  # the stores take it as a storage path (see `LocalSide`)
    uploads = local.ctx.uploads
    await throttle.ready()
    blob = await remote.client.blob(remote_name, digest, size=size)
    try:
        upload_id = await uploads.start(local_name)
    except BaseException:
        blob.abort()
        raise
    appender: UploadAppender | None = None
    committed = False
    try:
        try:
            if marks is not None:
                await marks.opened(local_name, upload_id)
            appender = await uploads.open(local_name, upload_id, 0, blob.length)
        except BaseException:
            blob.abort()
            raise
        receiver = _AppendToUpload(appender, throttle)
        # Not verified in the client: the commit below hashes every stored byte anyway.
        blob.deliver(receiver, verify=False)
        try:
            await receiver.done
        except BaseException:
            blob.abort()
            raise
        try:
            size = await uploads.commit(appender, digest)
        except RegistryError as exc:
            if exc.code != DIGEST_INVALID:
                raise
            # The remote's fault, not this registry's: said as the client says a bad answer.
            received = (exc.detail or {}).get("received", "other bytes")
            raise BadResponse(
                None, f"blob {remote_name}@{digest}: the remote sent bytes that hash to {received}"
            ) from None
        committed = True
        return size
    finally:
        if not committed:
            if appender is not None:
                with contextlib.suppress(Exception):
                    await appender.close()
            with contextlib.suppress(Exception):
                await uploads.cancel(local_name, upload_id)
        if marks is not None:
            await marks.closed(upload_id)


async def push_blob(
    local: LocalSide,
    local_name: str,
    remote: RemoteSide,
    remote_name: str,
    digest: Digest,
    throttle: Throttle,
) -> int:
    """Copy a local blob to the remote repository; returns its size."""
    client = remote.client
    size = await local.blob_size(local_name, digest)
    await throttle.ready()
    upload = await client.start_upload(remote_name)
    producer: Any = await local.ctx.blobs.open(local_name, digest, 0, None)
    body = single_use(lambda: ThrottledBody(producer, throttle), "a streamed blob body")

    try:
        await client.finish_upload(upload, digest, body)
    except CancelledError:
        # A stop of the registry: the remote would keep the session and the bytes it got
        # until its own purge (a week, by default).  Cancelled as after a failure, but within
        # `STOP_CANCEL_TIMEOUT`, so that a remote that does not answer cannot hold the stop.
        # (registry:2 refuses to cancel a session whose PUT was cut off, BLOB_UPLOAD_INVALID:
        # its purge is all there is for it.)
        cancel = Deferred.fromCoroutine(client.cancel_upload(upload))
        cancel.addTimeout(STOP_CANCEL_TIMEOUT, client.reactor)
        with contextlib.suppress(Exception):
            await cancel
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            await client.cancel_upload(upload)
        raise
    finally:
        # A body that was sent belongs to the HTTP client, which ends it (the remote may
        # answer while the reader, paused by the throttle, has yet to notice its end: stopping
        # it then would fail a request that succeeded).  Only an unsent reader is closed here.
        if not body.used:
            producer.stopProducing()
    return size
