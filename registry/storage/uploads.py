"""
Blob uploads: sessions that receive bytes over one or many requests and become a blob on commit.

State lives in storage (``_uploads/<id>/``), so an upload continues after a restart or on
another instance: the data file, the start time, and the serialised sha256 state at the offset
reached (``txhashstates/sha256/<offset>``).  A session resumes from the state whose offset equals
the data's size; when there is none (a registry:2 upload, or a process killed mid-request) the
stored bytes are hashed again, or, where they cannot be read back before the upload's commit
(S3), the upload is cut back to the last offset with a state (`resumable_offset`), which is
then its size for ``GET``, ``PATCH`` and ``PUT`` alike.  A request records the state at the
offset it reached before the data file's own record (`UploadAppender._close_recorded`).

Where this process is the only one serving the storage, a finished request's hasher is *parked*
while it catches up and its state is recorded; a next request on the same upload that arrives
meanwhile takes the hasher over instead of waiting for it (`registry.storage.upload_handover`).

One request at a time may append to an upload in this process; a second concurrent one gets
416 with the current range instead of interleaving bytes.

A commit links the blob, moves the data to it, then removes the upload's folder.  A process
killed between the move and the removal leaves the folder without its data, and the client,
which never got its 201, retries the final ``PUT``: `UploadStore.recover` answers it when the
upload's last recorded hash state proves that it became the blob (`CommittedUpload`).
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Awaitable, Coroutine
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from registry.api.digests import Digest, DigestingHasher, releases_gil
from registry.api.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    RegistryError,
)
from registry.asyncutil import gather
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import (
    LOCAL_DRIVERS,
    ICutBack,
    IFileWriter,
    IStagedWrites,
    IStorageDriver,
    IUnfinishedFiles,
    NotAFileError,
    PathBusyError,
    PathNotFoundError,
    StorageError,
    Unfinished,
    WriteRemoved,
)
from registry.storage.gcguard import GcGuard
from registry.storage.hash_offload import HashThreads, OffloadedHasher
from registry.storage.upload_handover import HasherHandover

log = Logger()
INLINE_ALGORITHM = "sha256"
# How long `UploadStore.flush` waits for the uploads being written to close (a stop that cut
# their requests): an S3 upload closes once its parts in flight are stored.  Below the 10 s a
# supervisor of workers gives a worker past its drain.
FLUSH_WAIT = 8.0


def range_header(size: int) -> str:
    """The upload ``Range`` header value: registry:2 answers ``0-0`` for an empty upload."""
    return f"0-{max(size - 1, 0)}"


def range_error(upload_id: str, size: int, detail: str) -> RegistryError:
    """416: the handler adds the upload's ``Range`` and ``Location`` headers from ``size``."""
    return RegistryError(RANGE_INVALID, {"upload": upload_id, "size": size, "reason": detail})


def resumable_offset(unfinished: Unfinished, offsets: list[int]) -> int:
    """
    Where an upload whose bytes cannot be read back (`Unfinished`) continues: its size when a
    hash state was recorded there (or it is empty); else the largest offset below with a
    hash state that the file can be cut back to; else 0, which needs none.
    """
    size = unfinished.size
    if size == 0 or size in offsets:
        return size
    return max((o for o in offsets if o < size and unfinished.can_cut_to(o)), default=0)


class _HashingConsumer:
    """Feeds a stored upload back through a hasher (the resume-without-state path)."""

    def __init__(self, hasher: DigestingHasher) -> None:
        self.hasher = hasher

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.hasher.update(data)


@attrs.define
class UploadAppender:
    """
    An open upload: bytes written here go to storage and through the inline hasher.  End it
    with `close` (resumable later), or hand it to `UploadStore.commit`.
    """

    store: UploadStore
    name: str
    upload_id: str
    writer: IFileWriter
    hasher: DigestingHasher
    start: int
    offload: OffloadedHasher | None = None
    # The digest the body is staged under (`stage`): the writer then writes at the blob's own
    # path, invisible there until `UploadStore.commit` has checked the digest.
    staged: Digest | None = None
    # Whether a hash state at `start` is in storage (the hasher was restored from it): one
    # taken over from the previous request, or hashed again, has none recorded.
    state_at_start: bool = False
    _closed: bool = False

    @property
    def size(self) -> int:
        written: int = self.writer.size
        return written

    def write(self, data: bytes) -> Deferred[None] | None:
        """Store, then hash (so a write refused at once is not in the hash state)."""
        written = self.writer.write(data)
        if self.offload is None:
            self.hasher.update(data)
            return written
        hashed = self.offload.update(data)
        if written is None or hashed is None:
            return written or hashed
        # Both are behind: resume once storage has caught up and then the hasher has room.
        return written.addCallback(lambda _: hashed)

    async def stage(self, digest: Digest) -> None:
        """
        The client named the blob's digest before sending it (a monolithic ``PUT ?digest=``
        or ``POST ?digest=``, or a final ``PUT`` carrying the whole blob): where the driver
        can write a file invisibly at its final path (`IStagedWrites`, S3), write the body
        straight at the blob's path so that commit needs no move (on S3 a server-side copy,
        a third of a push's time).  Only for an empty upload, before any byte is written;
        otherwise a no-op and the upload goes the usual way.
        """
        driver = self.store.driver
        if (
            self.size != 0
            or self.staged is not None
            or self._closed
            or digest.algorithm != INLINE_ALGORITHM
            or not IStagedWrites.providedBy(driver)
        ):
            return
        # The upload's own data file stays as it is (empty): a body that fails leaves the
        # upload resumable from 0, as a refused body does.
        await self.writer.close()
        self.writer = await IStagedWrites(driver).staged_writer(layout.blob_data(digest))
        self.staged = digest

    async def _settled_hasher(self) -> DigestingHasher:
        if self.offload is not None:
            return await self.offload.settle()
        return self.hasher

    async def close(self) -> None:
        """
        Keep what was written and record the hash state, so the upload can continue.

        With ``UploadStore.state_after_answer``, this returns once every byte is in storage
        and the hasher is parked: a PATCH is answered while the hasher may still be catching
        up (a few MiB queued, a few ms), and its state is recorded in the background unless
        the next request takes it over first.  A process that dies before either leaves no
        state at this offset, and the upload resumes by re-hashing the stored data.  Otherwise
        the state is recorded before the file (`_close_recorded`).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self._close()
        finally:
            self.store._ended(self)

    async def _close(self) -> None:
        if self.staged is None and not self.store.state_after_answer:
            await self._close_recorded()
            return
        try:
            await self.writer.close()  # a staged writer discards its bytes
        except BaseException:
            self.store._handover.release(self._key)
            raise
        if self.staged is not None:
            # The upload itself never received these bytes: it stays where it was (empty).
            self.store._handover.release(self._key)
            return
        self.store._handover.release(self._key)
        self.store._handover.park(self._key, self)

    async def discard(self) -> None:
        """
        Drop what this appender wrote: the upload stays at `start`, as before the request
        (whose body the server refused as malformed, so the client was told none was taken).
        No hash state is recorded; one at `start` is there already, or the next request hashes
        the stored bytes again (a hasher taken over from the previous request is not parked).
        """
        if self._closed:
            return
        self._closed = True
        try:
            # A staged writer's close discards its bytes (the upload itself never got them).
            await (self.writer.close() if self.staged is not None else self.writer.rollback())
        finally:
            self.store._handover.release(self._key)
            self.store._ended(self)

    async def _close_recorded(self) -> None:
        """
        Close with the hash state recorded before the file: the state at the new size goes
        down first, then the writer records the file at that size, then the state this request
        started from is dropped.  A process that stops anywhere in between leaves the file at
        an offset with a hash state (where the request started, or where it ended), which an
        upload whose stored bytes cannot be read back (S3) needs to continue.
        """
        store, size = self.store, self.size
        recorded = False
        try:
            try:
                hasher = await self._settled_hasher()
                if size != self.start or not self.state_at_start:
                    await store._put_state(self.name, self.upload_id, hasher, size)
                    recorded = size != self.start
            except StorageError as exc:
                if ICutBack.providedBy(self.writer):
                    # The stored bytes cannot be hashed again (S3): kept without their state,
                    # the upload would be cut back past them.  It stays where this request
                    # found it, and the client sends the chunk again.  (The storage failing,
                    # the rollback may fail too: the failure the client is told is the first.)
                    with contextlib.suppress(StorageError):
                        await self.writer.rollback()
                    raise exc
                # The bytes are stored: a 503 would tell the client they were not, and its
                # retry of the chunk would get 416.  Without the state the next request hashes
                # the stored data again.
                log.warn(
                    "recording the hash state of upload {upload} ({name}) failed: {error}; "
                    "the next request re-hashes the stored data",
                    upload=self.upload_id,
                    name=self.name,
                    error=str(exc),
                )
            try:
                await self.writer.close()
            except BaseException:
                if recorded:  # the file stays where it was: no state past it
                    with contextlib.suppress(Exception):
                        await store._drop_state_past(self.name, self.upload_id, size)
                raise
            await store._after_state(self.name, self.upload_id, size, self.start)
        finally:
            store._handover.release(self._key)

    async def _finish_writing(self) -> DigestingHasher:
        """Commit the data; returns the hasher with every byte in it."""
        self._closed = True
        try:
            await self.writer.commit()
            return await self._settled_hasher()
        finally:
            self.store._handover.release(self._key)
            self.store._ended(self)

    @property
    def _key(self) -> tuple[str, str]:
        return (self.name, self.upload_id)


@attrs.define
class CommittedUpload:
    """
    An upload that became blob ``digest`` (``size`` bytes) by a commit cut short before the
    upload's folder was removed (`UploadStore.recover`): it takes no more bytes, and its
    commit under the same digest only removes that folder.  Stands in for an `UploadAppender`
    where a final ``PUT`` is retried.
    """

    name: str
    upload_id: str
    digest: Digest
    size: int

    @property
    def start(self) -> int:
        """Where this request's bytes begin: it takes none."""
        return self.size

    def write(self, data: bytes) -> Deferred[None] | None:
        """A retried ``PUT`` that brings bytes is not the one that was committed."""
        if data:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"name": self.name, "upload": self.upload_id})
        return None

    async def close(self) -> None:
        pass

    async def discard(self) -> None:
        pass


class IUploadStore(Interface):
    """Every upload operation handlers use (the pull-through wrapper refuses them all for
    proxied names)."""

    def start(name: str) -> Awaitable[str]:
        """Create an empty upload in repository ``name``; returns its id."""

    def open(
        name: str, upload_id: str, start: int | None = None, coming: int | None = None
    ) -> Awaitable[UploadAppender]:
        """Open for appending at ``start`` (416 unless it is the current size); ``coming`` is
        the request's length, for the storage to set aside."""

    def recover(name: str, upload_id: str, digest: Digest) -> Awaitable[CommittedUpload | None]:
        """The upload whose data is gone, when it verifiably became blob ``digest`` by a
        commit cut short; None otherwise (the caller answers BLOB_UPLOAD_UNKNOWN)."""

    def commit(
        appender: UploadAppender | CommittedUpload, digest: Digest, expected_size: int | None = None
    ) -> Coroutine[Any, Any, int]:
        """Finish as blob ``digest`` and link it; a mismatch cancels and stores nothing.
        A coroutine, so that handlers can run it shielded from their client leaving."""

    def cancel(name: str, upload_id: str) -> Awaitable[None]:
        """Discard the upload; BLOB_UPLOAD_UNKNOWN when there is none."""

    def size(name: str, upload_id: str) -> Awaitable[int]:
        """Bytes received so far."""

    def flush() -> Awaitable[None]:
        """Wait until every answered request's hash state is recorded (before the process
        stops)."""


@implementer(IUploadStore)
@attrs.define
class UploadStore:
    driver: IStorageDriver
    blobs: BlobStore
    # Where to hash off the reactor thread; None hashes inline (also when the hasher would
    # hold the GIL, which would only move the work, not share it).
    hash_threads: HashThreads | None = None
    # Answer a request before its hash state is recorded (see `UploadAppender.close`).  Only
    # where this process is the only one serving the storage: on shared storage (S3) another
    # instance may take the next PATCH at once, and must find the state there.
    state_after_answer: bool = False
    _handover: HasherHandover[UploadAppender, DigestingHasher] = attrs.field(init=False)
    # Appenders open in this process (by id), and who waits for none to be left (`flush`).
    _open: dict[int, UploadAppender] = attrs.field(init=False, factory=dict)
    _none_open: list[Deferred[None]] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self._handover = HasherHandover(UploadAppender._settled_hasher, self._record_parked)

    async def start(self, name: str) -> str:
        """Create an empty upload and return its id."""
        upload_id = str(uuid.uuid4())
        started = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        try:
            path = layout.upload_started_at(name, upload_id)
            await self.driver.put_content(path, started.encode())
            writer = await self.driver.writer(layout.upload_data(name, upload_id))
            await writer.close()
        except StorageError:
            # A full disk, say: leave no half-made upload folder behind.  The client gets the
            # error now, not after the clean-up: on a storage that hangs the clean-up waits out
            # its own time limit (each of its storage calls is bounded), and a folder it fails
            # to remove is left for the upload purge.
            Deferred.fromCoroutine(self._remove_half_made(name, upload_id))
            raise
        return upload_id

    async def _remove_half_made(self, name: str, upload_id: str) -> None:
        try:
            await self.driver.delete(layout.upload_dir(name, upload_id))
        except PathNotFoundError:
            pass
        except StorageError as error:
            log.info(
                "half-made upload {upload} of {name} left for the purge: {error}",
                upload=upload_id,
                name=name,
                error=error,
            )

    async def exists(self, name: str, upload_id: str) -> bool:
        try:
            await self.driver.stat(layout.upload_started_at(name, upload_id))
        except PathNotFoundError:
            return False
        return True

    async def _require(self, name: str, upload_id: str) -> None:
        if not await self.exists(name, upload_id):
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"name": name, "upload": upload_id})

    async def _state_offsets(self, name: str, upload_id: str, registry2: bool = False) -> list[int]:
        """The offsets hash states were recorded at (``registry2``: registry:2's)."""
        folder = layout.upload_registry2_hashstates if registry2 else layout.upload_hashstates
        try:
            names = await self.driver.list(folder(name, upload_id, INLINE_ALGORITHM))
        except PathNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    async def size(self, name: str, upload_id: str) -> int:
        """
        Bytes received so far (for ``GET`` on an upload and ``Range`` headers).  Where the
        data is kept at its path (`LOCAL_DRIVERS`), an upload without its data file is
        unknown: a commit moved it (and was cut short before removing the folder) or it was
        being removed, and no ``PATCH`` can continue it; its hash states must not make it look
        like an upload of that many bytes.
        """
        await self._require(name, upload_id)
        await self._handover.recorded((name, upload_id))
        if self.driver.name in LOCAL_DRIVERS and not await self._has_data(name, upload_id):
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"name": name, "upload": upload_id})
        return await self._stored_size(name, upload_id)

    async def _stored_size(self, name: str, upload_id: str) -> int:
        """
        The data file's size; where a driver holds an unfinished file elsewhere (S3 keeps it
        in a multipart upload, not readable at its path until committed), the path holds
        nothing, or an older copy (registry:2's S3 driver leaves the bytes of an earlier
        request there, and a writer that continued from them leaves them as they were).
        Each request ends by recording a hash state at the offset it reached, ours and
        registry:2's, and the data only grows: the largest of these offsets and the file's
        size is the size stored.
        """
        if IUnfinishedFiles.providedBy(self.driver):
            data = layout.upload_data(name, upload_id)
            found_unfinished: list[Any] = await gather(
                self._unfinished(data),
                self._state_offsets(name, upload_id),
            )
            if found_unfinished[0] is not None:
                return resumable_offset(found_unfinished[0], found_unfinished[1])
        found: list[Any] = await gather(
            self._file_size(name, upload_id),
            self._state_offsets(name, upload_id),
            self._state_offsets(name, upload_id, registry2=True),
        )
        file: int = found[0]
        ours: list[int] = found[1]
        theirs: list[int] = found[2]
        return max([file, *ours[-1:], *theirs[-1:]])

    async def _unfinished(self, path: str) -> Unfinished | None:
        return await IUnfinishedFiles(self.driver).unfinished(path)

    async def _file_size(self, name: str, upload_id: str) -> int:
        try:
            info = await self.driver.stat(layout.upload_data(name, upload_id))
        except PathNotFoundError:
            return 0
        return info.size

    async def _size_now(self, name: str, upload_id: str) -> int:
        """The data stored so far while another request writes more (0 when unknown): as
        `size`, without waiting for this process's recordings."""
        try:
            return await self._stored_size(name, upload_id)
        except StorageError:
            return 0

    async def _record_parked(self, appender: UploadAppender, hasher: DigestingHasher) -> None:
        await self._save_state(
            appender.name, appender.upload_id, hasher, appender.size, appender.start
        )

    def _ended(self, appender: UploadAppender) -> None:
        if self._open.pop(id(appender), None) is not None and not self._open:
            waiting, self._none_open = self._none_open, []
            for waiter in waiting:
                if not waiter.called:  # (one that timed out)
                    waiter.callback(None)

    async def flush(self) -> None:
        """
        Wait until every upload this process is writing is closed (the requests a stop cut
        keep what they stored, as when their client leaves) and every answered request's hash
        state is recorded: before the process stops, so that the next request on each upload
        resumes from where this process left it, with its state.  At most `FLUSH_WAIT`
        seconds for the writes.
        """
        if self._open:
            from twisted.internet import reactor

            waiter: Deferred[None] = Deferred()
            self._none_open.append(waiter)
            waiter.addTimeout(FLUSH_WAIT, reactor)
            try:
                await waiter
            except defer.TimeoutError:
                log.warn(
                    "stopping with {count} upload(s) still being written",
                    count=len(self._open),
                )
        await self._handover.flush()

    async def open(
        self, name: str, upload_id: str, start: int | None = None, coming: int | None = None
    ) -> UploadAppender:
        """
        Open an upload for appending.  ``start`` is where the client says its bytes begin
        (``Content-Range``); anything but the current size is 416 with the current range.
        ``coming`` is the request's ``Content-Length``, for the storage to set aside.
        """
        key = (name, upload_id)
        await self._require(name, upload_id)
        if not self._handover.is_parked(key):
            await self._handover.recorded(key)
        if not self._handover.claim(key):
            size = await self._size_now(name, upload_id)
            raise range_error(upload_id, size, "another request is writing")
        previous = self._handover.take_over(key)
        try:
            appender = await self._appender(name, upload_id, start, coming, previous)
        except BaseException:
            self._handover.release(key)
            if previous is not None:
                self._handover.park(key, previous)  # not taken after all: its state is recorded
            raise
        if previous is not None and previous.hasher is not appender.hasher:
            # The data changed under it: keep its state for its offset.
            self._handover.park(key, previous)
        return appender

    async def _appender(
        self,
        name: str,
        upload_id: str,
        start: int | None,
        coming: int | None,
        previous: UploadAppender | None,
    ) -> UploadAppender:
        """Open the data file and a hasher at its end: ``previous``'s when it ends there."""
        try:
            writer = await self.driver.writer(layout.upload_data(name, upload_id), append=True)
        except PathBusyError:  # a request in another worker process is writing it
            so_far = await self._size_now(name, upload_id)
            raise range_error(upload_id, so_far, "another request is writing") from None
        except PathNotFoundError:  # committed or cancelled by another worker meanwhile
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"name": name, "upload": upload_id}) from None
        try:
            size: int = writer.size
            if previous is None or previous.size != size:
                found = size
                size = await self._cut_to_resumable(name, upload_id, writer)
                if start is None and size != found:
                    # A request that names no offset expects its bytes to follow all the ones
                    # sent before: it learns where the upload goes on instead (the writer,
                    # closed below, records the cut).
                    raise range_error(
                        upload_id, size, f"upload cut back from {found} to {size} bytes"
                    )
            if start is not None and start != size:
                raise range_error(
                    upload_id, size, f"chunk starts at {start}, upload has {size} bytes"
                )
            if previous is not None and previous.size == size:
                hasher, offload, recorded = previous.hasher, previous.offload, False
            else:
                hasher, recorded = await self._resume_hasher(name, upload_id, size)
                offload = None
            if coming:
                await writer.reserve(coming)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                await writer.close()
            raise
        if offload is None and self.hash_threads is not None and releases_gil(INLINE_ALGORITHM):
            offload = OffloadedHasher(hasher, self.hash_threads)
        appender = UploadAppender(
            self, name, upload_id, writer, hasher, size, offload, state_at_start=recorded
        )
        self._open[id(appender)] = appender
        return appender

    async def _cut_to_resumable(self, name: str, upload_id: str, writer: IFileWriter) -> int:
        """
        The size of the upload, cut back first where its bytes cannot be read back to hash
        them again (S3) and it has no hash state at its end (a process stopped between
        recording the file and its state): to the last offset with a state, else 0
        (`resumable_offset`), as ``GET`` on the upload reports.
        """
        size: int = writer.size
        cutting = ICutBack(writer, None)
        unfinished = cutting.unfinished() if cutting is not None else None
        if unfinished is None or size == 0:
            return size
        offset = resumable_offset(unfinished, await self._state_offsets(name, upload_id))
        if offset != size:
            log.warn(
                "upload {upload} of {name}: no hash state at offset {size}, and its stored "
                "bytes cannot be read back to hash them again: continued from offset {offset}",
                upload=upload_id,
                name=name,
                size=size,
                offset=offset,
            )
            await cutting.cut(offset)
        return offset

    async def _resume_hasher(
        self, name: str, upload_id: str, size: int
    ) -> tuple[DigestingHasher, bool]:
        """The hasher at ``size``, and whether it was restored from a state recorded there."""
        if size == 0:
            return DigestingHasher(INLINE_ALGORITHM), True
        path = layout.upload_hashstate(name, upload_id, INLINE_ALGORITHM, size)
        try:
            state = await self.driver.get_content(path)
            return DigestingHasher(INLINE_ALGORITHM, state), True
        except (PathNotFoundError, NotAFileError, ValueError):
            pass
        log.info(
            "upload {upload} of {name}: no hash state at offset {size}, re-hashing stored data",
            upload=upload_id,
            name=name,
            size=size,
        )
        return await self._hash_stored(name, upload_id, INLINE_ALGORITHM, size), False

    async def _hash_stored(
        self, name: str, upload_id: str, algorithm: str, size: int
    ) -> DigestingHasher:
        hasher = DigestingHasher(algorithm)
        producer = await self.driver.reader(layout.upload_data(name, upload_id), 0, size)
        await producer.startProducing(_HashingConsumer(hasher))
        return hasher

    async def _save_state(
        self, name: str, upload_id: str, hasher: DigestingHasher, size: int, previous: int
    ) -> None:
        """
        Record the state at ``size`` and drop the one this request started from (no listing:
        one request = one write and one delete).  States left by a killed process go with
        the upload folder at commit or cancel.
        """
        await self._put_state(name, upload_id, hasher, size)
        await self._after_state(name, upload_id, size, previous)

    async def _put_state(
        self, name: str, upload_id: str, hasher: DigestingHasher, size: int
    ) -> None:
        await self.driver.put_content(
            layout.upload_hashstate(name, upload_id, INLINE_ALGORITHM, size), hasher.serialize()
        )

    async def _drop_state(self, name: str, upload_id: str, size: int) -> None:
        with contextlib.suppress(PathNotFoundError):
            await self.driver.delete(
                layout.upload_hashstate(name, upload_id, INLINE_ALGORITHM, size)
            )

    async def _drop_state_past(self, name: str, upload_id: str, size: int) -> None:
        """The state at ``size`` goes, the file not having got there; with the upload's folder
        if the upload was removed meanwhile (the state made the folder again)."""
        if await self.exists(name, upload_id):
            await self._drop_state(name, upload_id, size)
        else:
            await self._remove(name, upload_id)

    async def _after_state(self, name: str, upload_id: str, size: int, previous: int) -> None:
        """After the state at ``size``: an upload removed meanwhile is removed again (the
        state made its folder again), and the state at ``previous`` is dropped."""
        if not await self.exists(name, upload_id):
            # Cancelled (or finished) by a request in another process while this one wrote:
            # the state just written made part of the upload's folder again, which would stay
            # until the purge.  Removed again, and this request's bytes are not kept.
            await self._remove(name, upload_id)
            raise WriteRemoved(f"upload {upload_id} was removed while its state was saved")
        if previous not in (0, size):
            await self._drop_state(name, upload_id, previous)

    async def recover(self, name: str, upload_id: str, digest: Digest) -> CommittedUpload | None:
        """
        An upload whose data is gone though its folder is there: a commit moved the data to
        the blob and its process was killed before removing the folder (the client never got
        the 201, and retries its ``PUT``).  It became blob ``digest`` if the last hash state
        recorded (the largest offset) finalizes to ``digest``, and that blob is stored with
        that size and linked in ``name``: then a `CommittedUpload`, which `commit` finishes.
        Anything else is None: the data was cancelled, or became another blob, or grew past
        the last state (a final ``PUT`` that brought bytes), and nothing proves what it was.
        """
        if digest.algorithm != INLINE_ALGORITHM or not await self.exists(name, upload_id):
            return None
        if await self._has_data(name, upload_id):
            return None  # not committed: it was being written (a retry opens it then)
        offsets = await self._state_offsets(name, upload_id)
        if not offsets or offsets[-1] == 0:
            return None
        size = offsets[-1]
        path = layout.upload_hashstate(name, upload_id, INLINE_ALGORITHM, size)
        try:
            hashed = DigestingHasher(INLINE_ALGORITHM, await self.driver.get_content(path))
        except (PathNotFoundError, NotAFileError, ValueError):
            return None
        if hashed.digest() != digest:
            return None
        stored = await self.blobs.exists(digest)
        if stored is None or stored.size != size or not await self.blobs.is_linked(name, digest):
            return None
        return CommittedUpload(name, upload_id, digest, size)

    async def _has_data(self, name: str, upload_id: str) -> bool:
        try:
            await self.driver.stat(layout.upload_data(name, upload_id))
        except PathNotFoundError:
            return False
        return True

    async def commit(
        self,
        appender: UploadAppender | CommittedUpload,
        digest: Digest,
        expected_size: int | None = None,
    ) -> int:
        """
        Finish the upload as blob ``digest``.  A digest or size that does not match the data
        cancels the upload and stores nothing (registry:2 does the same).  Returns the size.
        """
        if isinstance(appender, CommittedUpload):
            return await self._commit_again(appender, digest, expected_size)
        if appender.staged is not None:
            return await self._commit_staged(appender, digest, expected_size)
        name, upload_id = appender.name, appender.upload_id
        size = appender.size
        # The writer keeps the data file to itself (a filesystem appender holds its lock after
        # commit) until it is closed below: no request of another worker process can append
        # to the file between the digest check and its move to the blob's path.
        try:
            hasher = await appender._finish_writing()
            try:
                if digest.algorithm == INLINE_ALGORITHM:
                    actual = hasher.digest()
                else:
                    hashed = await self._hash_stored(name, upload_id, digest.algorithm, size)
                    actual = hashed.digest()
                if expected_size is not None and expected_size != size:
                    raise RegistryError(SIZE_INVALID, {"expected": expected_size, "received": size})
                if actual != digest:
                    raise RegistryError(
                        DIGEST_INVALID, {"expected": str(digest), "received": str(actual)}
                    )
            except RegistryError:
                await self.cancel(name, upload_id)
                raise
            linked = False
            if not await self._stored_whole(digest, size):
                if size and appender.start == size and not appender.state_at_start:
                    # This PUT brought no bytes and took the hasher over from the last
                    # request before its state was recorded (or hashed the data again): the
                    # state goes down now, so that a retry of this PUT after a kill between
                    # the move and the folder's removal can prove what the upload became
                    # (`recover`).  A PUT that brought bytes is retried with them, which no
                    # recovery takes.
                    await self.driver.put_content(
                        layout.upload_hashstate(name, upload_id, INLINE_ALGORITHM, size),
                        hasher.serialize(),
                    )
                # The link first: a write that fails here (a full disk) fails while the data
                # is still the upload's, so the client's retry of this PUT finds it.  Moved
                # first, a failed link left the bytes at their content address and the
                # upload without them: the retry answered BLOB_UPLOAD_UNKNOWN.  A link whose
                # data is not there (yet) reads as an unknown blob.
                await self.blobs.link(name, digest)
                linked = True
                await self.driver.move(
                    layout.upload_data(name, upload_id), layout.blob_data(digest)
                )
        finally:
            with contextlib.suppress(StorageError):  # committed already: only the lock is left
                await appender.writer.close()
        await self._link_kept(name, upload_id, digest, linked)
        await self._remove(name, upload_id)
        return size

    async def _commit_staged(
        self, appender: UploadAppender, digest: Digest, expected_size: int | None
    ) -> int:
        """
        Commit a body written at the blob's path (`UploadAppender.stage`): the writer is
        committed (on S3 the multipart upload completed, making the object visible) only
        once the bytes hashed to ``digest``; otherwise it is discarded, so unverified bytes
        are never readable at a content address.
        """
        name, upload_id = appender.name, appender.upload_id
        size = appender.size
        appender._closed = True
        writer = appender.writer
        linked = False
        try:
            try:
                actual = (await appender._settled_hasher()).digest()
                if expected_size is not None and expected_size != size:
                    raise RegistryError(SIZE_INVALID, {"expected": expected_size, "received": size})
                if actual != digest or appender.staged != digest:
                    raise RegistryError(
                        DIGEST_INVALID, {"expected": str(digest), "received": str(actual)}
                    )
                if not await self._stored_whole(digest, size):
                    # The link first, for the reason given in `commit`.
                    await self.blobs.link(name, digest)
                    linked = True
                    await writer.commit()
                else:
                    await writer.cancel()  # stored already (another push): keep that one
            except BaseException:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    await writer.cancel()
                raise
            finally:
                self._handover.release(appender._key)
                self._ended(appender)
        except RegistryError:
            await self.cancel(name, upload_id)
            raise
        await self._link_kept(name, upload_id, digest, linked)
        await self._remove(name, upload_id)
        return size

    async def _commit_again(
        self, committed: CommittedUpload, digest: Digest, expected_size: int | None
    ) -> int:
        """
        The retried commit of an upload committed already (`recover`): only what the cut
        commit did not do, the garbage-collection check and the folder's removal.  Another
        digest or size is not what the upload became: unknown, and the folder stays.
        """
        name, upload_id = committed.name, committed.upload_id
        if digest != committed.digest or expected_size not in (None, committed.size):
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"name": name, "upload": upload_id})
        await self._link_kept(name, upload_id, digest, linked=True)
        await self._remove(name, upload_id)
        log.info(
            "upload {upload} of {name} was committed as {digest} before its folder was "
            "removed: its retried PUT is answered, the folder removed",
            upload=upload_id,
            name=name,
            digest=str(digest),
        )
        return committed.size

    async def _stored_whole(self, digest: Digest, size: int) -> bool:
        """
        Whether ``digest`` is stored already, with the size of the bytes just verified for
        it: then those are kept (another push stored them).  Stored with another size, the
        stored bytes are damaged (torn by a crash without fsync, truncated by hand) and every
        pull of them fails its digest check: the pushed bytes replace them.
        """
        stored = await self.blobs.exists(digest)
        if stored is None:
            return False
        if stored.size == size:
            return True
        log.warn(
            "storage repaired at {path}: {stored} bytes stored, the pushed blob has {size}",
            path=layout.blob_data(digest),
            stored=stored.size,
            size=size,
        )
        return False

    async def _link_kept(
        self, name: str, upload_id: str, digest: Digest, linked: bool = False
    ) -> None:
        """
        Link the committed blob into the repository (unless ``linked`` already); if a
        garbage collection was deleting the blob that was stored already
        (`registry.storage.gcguard`), the upload ends with an error the client acts on (it
        uploads again) instead of a 201 for a blob about to go.
        """
        if not linked:
            await self.blobs.link(name, digest)
        if await GcGuard(self.driver).protect([digest]):
            await self._remove(name, upload_id)
            raise RegistryError(
                BLOB_UPLOAD_INVALID,
                {"digest": str(digest), "reason": "deleted by a garbage collection"},
                "a garbage collection was deleting this blob as it was committed: upload it again",
            )

    async def cancel(self, name: str, upload_id: str) -> None:
        await self._require(name, upload_id)
        await self._handover.recorded((name, upload_id))
        await self._remove(name, upload_id)

    async def _remove(self, name: str, upload_id: str) -> None:
        with contextlib.suppress(PathNotFoundError):
            await self.driver.delete(layout.upload_dir(name, upload_id))
