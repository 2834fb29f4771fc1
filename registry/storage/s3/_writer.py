"""
The S3 file writer: an append-only file built as a multipart upload, resumable across processes.

Design.  Bytes are gathered into a *segment* (in memory, or a temporary file in
``spooldirectory``).  When a segment reaches ``chunksize`` it becomes the next part of a
multipart upload (created on the first full part) and a new segment starts.  Two parts upload
at once (the second hides the pause S3 takes to store each one); a full segment that finds both
slots busy makes ``write`` return a Deferred until one frees: memory stays near three parts per
writer whatever the client sends.  Segments keep the callers'
``bytes`` objects as they are (a part ends at the first write that fills it), so no byte is
copied on its way to the socket.

``commit`` sends what is left as the last part and completes the upload; when no part was ever
needed the whole file goes in one PUT, so small files cost one request.

``close`` must leave the file resumable by ``writer(path, append=True)`` in any process, but S3
cannot take a part under 5 MiB unless it is the last, and the parts of an unfinished upload
cannot be read back.  So ``close`` uploads the pending segment as a part only if it is at least
5 MiB, and writes the rest (the *tail*, under 5 MiB) into a *state object* next to the file:
``<key>~txregistry-upload``, holding one JSON line (upload id, parts with their ETags and sizes)
then the tail's bytes.  ``~`` never occurs in registry:2 layout names, so the state object
cannot clash with a real file, and ``list`` leaves it out.  Resuming reads the state object (one
GET of under 5 MiB) and continues: ``size`` is the parts plus the tail, the tail is the start of
the next segment, and new parts are numbered after the recorded ones (parts a crashed writer
uploaded after its last ``close`` are overwritten or left out of the completion; ``cut`` leaves
the parts past an offset out the same way, for an upload cut back to its last hash state).
``commit`` and ``cancel`` delete the state object; ``cancel`` also aborts the upload.  A resumed
file's cost is therefore O(5 MiB), never O(file) as in registry:2's complete-and-copy.

Appending to a finished object (no state object) starts from it: under 5 MiB it is read back as
the tail, larger it becomes the first parts by server-side UploadPartCopy.  A file registry:2's
S3 driver left unfinished has no state object either: its bytes are a multipart upload of the
key, which is completed first (`_take_over_foreign_upload`), then continued as such an object.

A *staged* writer (`registry.storage.driver.IStagedWrites`) writes a blob straight at its
content address: the multipart upload's key is the final key, and an unfinished multipart upload
is invisible to GET, HEAD and LIST, so nothing is readable there until ``commit`` completes it
(which the upload store does only once the digest matched).  ``close`` and ``cancel`` abort the
upload and never delete the key, which may hold the same blob committed by another push.  A
process killed mid-write leaves an incomplete multipart upload at the key and no state object;
``registry.ops.purge`` aborts those once they are older than the upload purge age.  A writer
that holds no lease (a staged one, any writer of a new file) marks its multipart upload as
being written (`registry.storage.s3._lease.WriteMark`) from before it starts until the writer
ends, so that the purge tells it from a killed process's, whatever the age.

Until ``commit``, written data is not visible at the path (``stat``/``get_content`` raise
PathNotFoundError), as with registry:2's S3 driver: use the writer's ``size``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from registry.storage.driver import (
    ICutBack,
    IFileWriter,
    PathNotFoundError,
    StorageError,
    StorageFull,
    Unfinished,
    WriteRemoved,
    WriteTakenOver,
)
from registry.storage.producers import FileProducer, _PausableProducer
from registry.storage.s3 import _multipart as multipart
from registry.storage.s3._client import Body, S3Client, S3Error, header
from registry.storage.s3._lease import WriteLease, WriteMark, start_mark, take_lease
from registry.storage.s3._multipart import Part
from registry.storage.s3._settings import MAX_PART_SIZE, MIN_PART_SIZE

_log = Logger()
STATE_SUFFIX = "~txregistry-upload"
_STATE_VERSION = 1
# Parts sent at once: a second one hides the pause S3 takes to store each part; more would
# only hold more parts in memory, since two already keep the connection busy.
PARTS_IN_FLIGHT = 2
# Spooled bytes not yet written to their file that make `S3Writer.write` ask its caller to
# wait, and the level at which it may write again.  The writes run in the thread pool, and a
# disk (or a page cache the virtual machine must first get from its host) slower than the
# client would otherwise let received bytes pile up in memory: up to several parts per upload.
SPOOL_BACKLOG = 2 * 1024 * 1024
SPOOL_BACKLOG_LOW = 1024 * 1024
# Reads of a spooled part.  Each part in flight holds one read being sent, one read ahead and
# what the S3 socket's transport buffers before it pauses the part's producer (about
# `registry.storage.s3._connections.IO_SIZE`): 256 KiB reads keep that near 1.5 MiB per part
# (1 MiB reads: about 3 MiB), for 4 thread hand-offs per MiB instead of 1.
SPOOL_READ_SIZE = 256 * 1024


def state_key(key: str) -> str:
    return key + STATE_SUFFIX


@implementer(IBodyProducer, IPushProducer)
class _ChunksProducer(_PausableProducer):
    """Writes a list of bytes objects as they are (no joining, no copies)."""

    def __init__(self, chunks: list[bytes], length: int) -> None:
        super().__init__()
        self._chunks: deque[bytes] = deque(chunks)
        self.length = length

    def _produce(self) -> None:
        assert self._consumer is not None
        while not self._paused and not self._stopped:
            if not self._chunks:
                self._done()
                return
            # write() may re-enter pauseProducing (or stopProducing) synchronously.
            self._consumer.write(self._chunks.popleft())

    def _release(self) -> None:
        self._chunks.clear()


class _MemorySegment:
    def __init__(self) -> None:
        self.size = 0
        self._chunks: list[bytes] = []

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)

    async def ready(self) -> None:
        """Nothing to wait for: the bytes are in memory."""

    def producer(self) -> IBodyProducer:
        return _ChunksProducer(self._chunks, self.size)

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    def discard(self) -> None:
        self._chunks = []


class _FileSegment:
    """
    A segment spooled to disk.  Every file operation (create, write, flush, read, close) runs
    in the reactor's thread pool, one after another in the segment's own lane, so a slow or
    full disk never holds the reactor; `ready` waits for what was queued and reports the
    first failure.  ``stored(n)`` is called (on the reactor thread) as each append of ``n``
    bytes leaves the lane, written or skipped after a failure: the writer keeps the bytes
    waiting in lanes small with it.
    """

    def __init__(
        self, reactor: Any, directory: str, stored: Callable[[int], None] | None = None
    ) -> None:
        self.size = 0
        self._stored = stored
        self._reactor = reactor
        self._pool = reactor.getThreadPool()
        # Only the lane's functions touch the file, one at a time, in a pool thread.
        self._file: IO[bytes] | None = None
        self._failure: Failure | None = None
        self._discarded = False
        self._lane: Deferred[None] = Deferred()
        self._lane.callback(None)
        self._directory = directory
        self._queue(self._create, directory)

    def _queue(self, func: Callable[..., object], *args: object, always: bool = False) -> None:
        """
        Run ``func(*args)`` in the pool after everything queued before it.  Once something
        failed, what follows is skipped (the first failure is what `ready` reports) unless
        ``always``: closing the file must happen all the same, or a segment whose disk filled
        up would keep its unlinked file, and the blocks in it, until the process ends.
        """

        def run(_: object) -> Deferred[object] | None:
            if self._failure is not None and not always:
                return None
            return deferToThreadPool(self._reactor, self._pool, func, *args)

        def failed(failure: Failure) -> None:
            if self._failure is None:
                self._failure = self._storage_failure(failure)

        self._lane.addCallback(run).addErrback(failed)

    def _storage_failure(self, failure: Failure) -> Failure:
        """
        A file operation's ``OSError`` as the `StorageError` it is for the writer's callers
        (a push answers 503 saying why, not 500), naming the spool folder: a full
        ``spooldirectory`` must be told from a full S3.
        """
        error = failure.value
        if not isinstance(error, OSError):
            return failure
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = error.strerror or str(error)
        wrapped = (StorageFull if full else StorageError)(
            f"spooling an S3 upload part in {self._directory}: {reason}"
        )
        wrapped.__cause__ = error
        return Failure(wrapped)

    def _create(self, directory: str) -> None:
        self._file = tempfile.TemporaryFile(dir=directory, prefix="s3part-")  # noqa: SIM115

    def _opened(self) -> IO[bytes]:
        if self._file is None:
            raise StorageError("spooled part not open")
        return self._file

    def _write(self, data: bytes) -> None:
        self._opened().write(data)

    def _flush(self) -> None:
        self._opened().flush()

    def _read_all(self) -> bytes:
        file = self._opened()
        file.flush()
        file.seek(0)
        return file.read()

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def append(self, data: bytes) -> None:
        if self._discarded:
            raise StorageError("spooled part already discarded")
        self._queue(self._write, data)
        self.size += len(data)
        stored = self._stored
        if stored is not None:
            length = len(data)
            self._lane.addCallback(lambda _: stored(length))

    async def _drained(self) -> None:
        waiter: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            waiter.callback(None)
            return result

        self._lane.addBoth(fire)
        await waiter
        if self._failure is not None:
            self._failure.raiseException()

    async def ready(self) -> None:
        """Every byte appended so far is in the file (and flushed); raises the first failure."""
        self._queue(self._flush)
        await self._drained()

    def producer(self) -> IBodyProducer:
        """The segment's bytes, read in the thread pool; only after `ready`."""
        file = self._opened()
        # The producer closes what it is given: give it its own descriptor (same file, same
        # offset), so that the segment can be sent again if S3 fails the first attempt.
        copy = os.fdopen(os.dup(file.fileno()), "rb")
        copy.seek(0)
        return FileProducer(self._reactor, self._pool, copy, self.size, SPOOL_READ_SIZE)

    async def read(self) -> bytes:
        """The whole segment (a tail, under 5 MiB), read in the thread pool."""
        result: list[bytes] = []
        self._queue(lambda: result.append(self._read_all()))
        await self._drained()
        return result[0]

    def discard(self) -> None:
        """Close the file (after what is queued), failed or not: it goes with its space."""
        if not self._discarded:
            self._discarded = True
            self._queue(self._close, always=True)


_Segment = _MemorySegment | _FileSegment


@implementer(IFileWriter, ICutBack)
class S3Writer:
    def __init__(
        self,
        client: S3Client,
        reactor: Any,
        key: str,
        path: str,
        upload_id: str | None = None,
        parts: list[Part] | None = None,
        tail: bytes = b"",
        staged: bool = False,
        lease: WriteLease | None = None,
        state_etag: str | None = None,
    ) -> None:
        self._client = client
        # An appending writer's hold on the upload (`registry.storage.s3._lease`), given back
        # by `close` or `cancel`.
        self._lease = lease
        # A writer without a lease marks the multipart upload it starts as being written
        # (`registry.storage.s3._lease.WriteMark`) until it ends, so that the upload purge
        # leaves it alone.
        self._mark: WriteMark | None = None
        # The version of the state object this writer continued (None: there was none).  Its
        # own state is written only over that version: a writer that lost its lease while
        # paused must not overwrite the state of the request that took over.
        self._state_etag = state_etag
        # A staged writer (`IStagedWrites`) leaves no state object and never deletes the key:
        # the key may hold a finished blob that a concurrent push committed.
        self._staged = staged
        self._reactor = reactor
        self._key = key
        self._path = path
        self._chunksize = client.settings.chunksize
        self._spool = client.settings.spooldirectory
        self._upload_id = upload_id
        # Whether this writer started the multipart upload itself (none was recorded in the
        # state it continued): nothing else refers to it until this writer's state does.
        self._own_upload = False
        self._parts: list[Part] = list(parts or [])
        self.size = sum(part.size for part in self._parts)
        self._current = self._segment()
        self._full: deque[_Segment] = deque()
        self._waiters: list[Deferred[None]] = []
        self._next_number = max((part.number for part in self._parts), default=0) + 1
        self._creating: Deferred[None] | None = None
        self._sending: dict[int, Deferred[None]] = {}
        self._failure: Failure | None = None
        self._finished = False
        # Bytes appended to spooled segments and not yet in their files (see `SPOOL_BACKLOG`).
        self._unstored = 0
        # Continued from a state object: the bytes are in parts that cannot be read back.
        self._from_state = False
        if tail:
            self._append(tail)
            self.size += len(tail)

    def _segment(self) -> _Segment:
        if self._spool:
            return _FileSegment(self._reactor, self._spool, self._stored)
        return _MemorySegment()

    def _append(self, data: bytes) -> None:
        self._current.append(data)
        if self._spool:
            self._unstored += len(data)

    def _stored(self, length: int) -> None:
        self._unstored -= length
        if self._waiters and self._unstored <= SPOOL_BACKLOG_LOW:
            self._wake()

    def _behind(self, backlog: int) -> bool:
        """A full segment waits for a slot, or more than ``backlog`` bytes wait for the disk."""
        return bool(self._full) or self._unstored > backlog

    def write(self, data: bytes) -> Deferred[None] | None:
        if self._finished:
            raise StorageError(f"writer for {self._path} is closed")
        if self._failure is not None:
            return fail(self._failure)
        if self._lease is not None and self._lease.lost is not None:
            return fail(self._lease.lost)
        if not data:
            return None
        if type(data) is not bytes:
            # Segments keep what they are given until it is sent: never a buffer that the
            # caller may reuse.
            data = bytes(data)
        for piece in self._pieces(data):
            self._append(piece)
            if self._current.size >= self._chunksize:
                self._full.append(self._current)
                self._current = self._segment()
        self.size += len(data)
        if self._full:
            self._pump()
        if self._behind(SPOOL_BACKLOG):
            # PARTS_IN_FLIGHT parts are on their way and the next is ready, or the disk is
            # behind: the caller waits.
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            return waiter
        return None

    def _pieces(self, data: bytes) -> list[bytes]:
        """
        ``data`` as it is, unless it would carry the segment past S3's 5 GiB part limit (only
        a single huge write can): then cut, copying once.
        """
        room = MAX_PART_SIZE - self._current.size
        if len(data) <= room:
            return [data]
        view = memoryview(data)
        pieces = [bytes(view[:room])]
        pieces.extend(
            bytes(view[start : start + self._chunksize])
            for start in range(room, len(data), self._chunksize)
        )
        return pieces

    def _pump(self) -> None:
        """Send full segments while fewer than PARTS_IN_FLIGHT are on their way."""
        if self._failure is None and self._full:
            if self._upload_id is None:
                if self._creating is None:
                    creating = Deferred.fromCoroutine(self._create())
                    if not creating.called:
                        self._creating = creating
            else:
                while self._full and len(self._sending) < PARTS_IN_FLIGHT:
                    segment = self._full.popleft()
                    number, self._next_number = self._next_number, self._next_number + 1
                    sending = Deferred.fromCoroutine(self._send(segment, number))
                    if not sending.called:
                        self._sending[number] = sending
        self._wake()

    async def _create(self) -> None:
        try:
            if self._lease is None and self._mark is None:
                self._mark = await start_mark(self._client, self._reactor, self._key)
            self._upload_id = await multipart.create(self._client, self._key)
            self._own_upload = True
        except Exception:
            self._failure = self._failure or Failure()
        finally:
            self._creating = None
            self._pump()

    async def _send(self, segment: _Segment, number: int) -> None:
        upload_id = self._upload_id
        assert upload_id is not None
        try:
            await segment.ready()
            if self._upload_id != upload_id:
                # Given up while this part was made ready (another part found the upload
                # aborted under this writer, or the writer rolled back): nowhere to send it.
                gone = WriteTakenOver(f"the multipart upload of {self._path} is gone")
                self._failure = self._failure or Failure(gone)
                return
            etag = await multipart.upload_part(
                self._client, self._key, upload_id, number, segment.producer
            )
            self._parts.append(Part(number, etag, segment.size))
        except S3Error as error:
            failed: Exception = error
            if error.status == 404 and self._lease is not None:
                # NoSuchUpload: the upload was aborted under this writer (the upload cancelled
                # or purged, or a request that took over finished it).
                failed = await self._lost(
                    WriteTakenOver(f"the multipart upload of {self._path} is gone")
                )
            self._failure = self._failure or Failure(failed)
        except Exception:
            self._failure = self._failure or Failure()
        finally:
            segment.discard()
            self._sending.pop(number, None)
            self._pump()

    def _wake(self) -> None:
        """
        Let a waiting caller write again once no full segment waits and the disk has caught
        up (or on failure).
        """
        if self._behind(SPOOL_BACKLOG_LOW) and self._failure is None:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if self._failure is not None:
                waiter.errback(self._failure)
            else:
                waiter.callback(None)

    def _discard_segments(self) -> None:
        """
        Let go of the segments not on their way to S3: the current one and the full ones
        waiting for a slot.  Once the writer ends nothing sends them, and a spooled one holds
        an open (unlinked) file until discarded.
        """
        self._current.discard()
        while self._full:
            self._full.popleft().discard()

    def _busy(self) -> list[Deferred[None]]:
        return [*self._sending.values(), *([self._creating] if self._creating else [])]

    async def _settle(self) -> None:
        """Wait until every full segment is uploaded; raise the first upload failure."""
        while self._failure is None:
            busy = self._busy()
            if not busy:
                if not self._full:
                    break
                self._pump()
                continue
            await busy[0]
        if self._failure is not None:
            self._failure.raiseException()
        self._parts.sort(key=lambda part: part.number)

    async def _flush_current(self) -> None:
        self._full.append(self._current)
        self._current = self._segment()
        self._pump()
        await self._settle()

    def _begin_end(self) -> None:
        if self._finished:
            raise StorageError(f"writer for {self._path} is closed")
        self._finished = True

    async def close(self) -> None:
        if self._staged:
            await self.cancel()
            return
        try:
            await self._close()
        except BaseException as error:
            lost = await self._lost(error) if isinstance(error, WriteTakenOver) else None
            with contextlib.suppress(Exception):  # the first failure is the one to report
                await self._release()
            if lost is not None:
                raise lost from None
            raise
        # What was written is stored and its state recorded: the request succeeded.  A lease
        # not given back (S3 gone meanwhile; the S3 client's line says so) lapses by itself
        # after `STALE_SECONDS`; until then another request for the upload waits, as after a
        # crash.  Failing the request for it would have the client send again what is stored.
        with contextlib.suppress(StorageError):
            await self._release()

    async def _lost(self, error: WriteTakenOver) -> WriteTakenOver:
        """
        After this writer lost the file: give back the multipart upload it started itself (no
        state refers to it, so nothing else would), and tell a removed file from one another
        request took over.  The state object is there as long as the file can be continued.
        """
        if self._own_upload and self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(StorageError):
                await multipart.abort(self._client, self._key, upload_id)
        if isinstance(error, WriteRemoved) or self._lease is None:
            return error
        try:
            state = await self._client.call("HEAD", state_key(self._key), missing_ok=True)
        except StorageError:
            return error
        if state is None:
            return WriteRemoved(f"the upload {self._path} was removed while written")
        return error

    async def _release(self) -> None:
        if self._mark is not None:
            mark, self._mark = self._mark, None
            await mark.release()
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await lease.release()

    async def _close(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            await self._settle()
            if self._current.size >= MIN_PART_SIZE:
                await self._flush_current()
            tail = await self._current.read()
        finally:
            # After a failure, full segments may still wait for a slot that never comes.
            self._discard_segments()
        state = {
            "version": _STATE_VERSION,
            "upload_id": self._upload_id,
            "parts": [[part.number, part.etag, part.size] for part in self._parts],
            "size": self.size,
        }
        body = json.dumps(state, separators=(",", ":")).encode() + b"\n" + tail
        if self._lease is None:
            await self._client.call("PUT", state_key(self._key), body=body)
            return
        await self._lease.confirm()
        condition = (
            {"If-Match": self._state_etag}
            if self._state_etag is not None
            else {"If-None-Match": "*"}
        )
        try:
            await self._client.call("PUT", state_key(self._key), body=body, headers=condition)
        except S3Error as error:
            if error.status not in (404, 409, 412):  # 404: If-Match on a removed state
                raise
            raise WriteTakenOver(f"another request took over the upload {self._path}") from None

    async def commit(self) -> None:
        """Make the file whole at its key; an appending writer keeps its lease until `close`
        (the upload's commit moves the file to the blob's key before it lets go)."""
        self._begin_end()
        try:
            await self._commit()
        except WriteTakenOver as error:
            raise await self._lost(error) from None
        except S3Error as error:
            if error.status != 404 or self._lease is None:
                raise
            # NoSuchUpload from the completion: aborted under this writer.
            raise await self._lost(WriteTakenOver(str(error))) from None
        finally:
            # Completed, or failed (the caller cancels next): the write is over either way.
            if self._mark is not None:
                mark, self._mark = self._mark, None
                await mark.release()
        if not self._staged:
            await self._client.call("DELETE", state_key(self._key), missing_ok=True)

    async def _commit(self) -> None:
        try:
            await self._settle()
            if self._lease is not None:
                await self._lease.confirm()
            if self._upload_id is None:
                await self._current.ready()
                body: Body = self._current.producer if self._current.size else b""
                await self._client.call("PUT", self._key, body=body)
            else:
                if self._current.size:
                    await self._flush_current()
                await multipart.complete(self._client, self._key, self._upload_id, self._parts)
        finally:
            # After a failure, full segments may still wait for a slot that never comes.
            self._discard_segments()

    def unfinished(self) -> Unfinished | None:
        """The file as its state object recorded it (None: not continued from one)."""
        if not self._from_state:
            return None
        return _unfinished(self._parts, self.size)

    async def cut(self, offset: int) -> None:
        """
        Drop what lies past ``offset``: the parts that end after it (they are left out of
        the state and the completion, and the next parts take their numbers), and the tail's
        end.  Only before any write.
        """
        found = self.unfinished()
        if found is None or not found.can_cut_to(offset) or self._busy() or self._full:
            raise StorageError(f"cannot cut {self._path} back to {offset} bytes")
        ordered = sorted(self._parts, key=lambda part: part.number)
        kept = [
            part for part, end in zip(ordered, found.part_ends[1:], strict=True) if end <= offset
        ]
        tail = b""
        if offset > found.tail_start:
            tail = (await self._current.read())[: offset - found.tail_start]
        self._current.discard()
        self._current = self._segment()
        self._unstored = 0
        self._parts = kept
        self._next_number = max((part.number for part in kept), default=0) + 1
        self.size = sum(part.size for part in kept)
        if tail:
            self._append(tail)
            self.size += len(tail)

    async def reserve(self, length: int) -> None:
        """Parts are sized by the writer's buffer; knowing the total changes nothing."""

    async def rollback(self) -> None:
        """
        The state object is left as this writer found it, so the file resumes where it was:
        parts sent since are renumbered over by the next writer or left out of the completion
        (as after a crash).  A multipart upload this writer started itself is aborted (no state
        refers to it); a staged writer is cancelled, which never touches the key.
        """
        if self._staged:
            await self.cancel()
            return
        try:
            self._finished = True
            self._discard_segments()
            while busy := self._busy():
                with contextlib.suppress(Exception):  # a failed part is dropped all the same
                    await busy[0]
            if self._own_upload and self._upload_id is not None:
                upload_id, self._upload_id = self._upload_id, None
                with contextlib.suppress(StorageError):
                    await multipart.abort(self._client, self._key, upload_id)
        finally:
            await self._release()

    async def cancel(self) -> None:
        try:
            await self._cancel()
        except BaseException:
            with contextlib.suppress(Exception):  # the first failure is the one to report
                await self._release()
            raise
        await self._release()

    async def _cancel(self) -> None:
        self._finished = True
        self._discard_segments()
        while busy := self._busy():
            await busy[0]
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            await multipart.abort(self._client, self._key, upload_id)
        if self._staged:
            return
        await self._client.call("DELETE", state_key(self._key), missing_ok=True)
        await self._client.call("DELETE", self._key, missing_ok=True)


async def open_writer(
    client: S3Client, reactor: Any, key: str, path: str, append: bool
) -> S3Writer:
    """A writer for a new file, or one continuing a closed writer's state or a finished file
    (appending holds the file's lease, `registry.storage.s3._lease`, until closed)."""
    if not append:
        return S3Writer(client, reactor, key, path)
    lease = await take_lease(client, reactor, key, path, state_key(key))
    try:
        return await _continue(client, reactor, key, path, lease)
    except BaseException:
        await lease.release()
        raise


async def _continue(
    client: S3Client, reactor: Any, key: str, path: str, lease: WriteLease
) -> S3Writer:
    result = await client.call("GET", state_key(key), missing_ok=True)
    if result is not None:
        return _from_state(client, reactor, key, path, result, lease)
    await _take_over_foreign_upload(client, key, path)
    head = await client.call("HEAD", key, missing_ok=True)
    if head is None:
        # Nothing to continue: cancelled, committed or purged meanwhile.  Creating it here
        # would bring a removed upload back, with a request's bytes from the middle of a
        # blob as its beginning.
        raise PathNotFoundError(path)
    size = int(header(head[0], "Content-Length") or 0)
    if size < MIN_PART_SIZE:
        content = await client.call("GET", key)
        assert content is not None
        return S3Writer(client, reactor, key, path, tail=content[1], lease=lease)
    upload_id = await multipart.create(client, key)
    try:
        parts = await multipart.copy_parts(client, key, key, upload_id, size)
    except BaseException:
        await multipart.abort_after_failure(client, key, upload_id)
        raise
    writer = S3Writer(client, reactor, key, path, upload_id, parts, lease=lease)
    # No state refers to this upload until the writer's `close` records it: a writer that
    # rolls back or loses the file aborts it rather than leave it beside the object.
    writer._own_upload = True
    return writer


async def _take_over_foreign_upload(client: S3Client, key: str, path: str) -> None:
    """
    A file with no state object may be one registry:2's S3 driver is writing: it keeps the
    bytes of an unfinished upload as a multipart upload of the key itself (parts of
    ``chunksize``, the last one as small as the request left it), and after a second request
    also a stale copy of the first request's bytes as the object at the key.  Its upload is
    what holds the file, so exactly one upload of the key is completed here: its bytes become
    the object at the key, which the caller then continues as any finished file (its bytes
    are read back to hash them again, which an unfinished upload's cannot be).  Its parts
    must be numbered 1, 2, ... without a gap (registry:2 sends them one after the other; a
    gap is a part of a killed writer that never arrived, and would leave bytes out).

    None, several (which one holds the file cannot be told), or one with a gap: the file is
    left as it is, and is continued from the object at the key if there is one, as before.
    An upload with no part yet holds no byte: it is given up for an empty object, unless the
    key holds the file already.
    """
    uploads = await multipart.uploads_of(client, key)
    if len(uploads) != 1:
        if uploads:
            _log.warn(
                "{count} multipart uploads of {path} and no upload state: none continued",
                count=len(uploads),
                path=path,
            )
        return
    upload_id = uploads[0]
    parts = await multipart.list_parts(client, key, upload_id)
    if [part.number for part in parts] != list(range(1, len(parts) + 1)):
        _log.warn(
            "the multipart upload of {path} lacks parts ({numbers}): not continued",
            path=path,
            numbers=",".join(str(part.number) for part in parts),
        )
        return
    if not parts:
        if await client.call("HEAD", key, missing_ok=True) is None:
            await client.call("PUT", key, body=b"")
        await multipart.abort(client, key, upload_id)
        return
    try:
        await multipart.complete(client, key, upload_id, parts)
    except S3Error as error:
        if error.status == 404:  # NoSuchUpload: aborted meanwhile (cancelled, purged)
            return
        raise
    _log.info(
        "continuing the upload {path} that another writer (registry:2) left as a multipart "
        "upload of {size} bytes",
        path=path,
        size=sum(part.size for part in parts),
    )


def _parse_state(body: bytes, path: str) -> tuple[str | None, list[Part], bytes]:
    """A state object's upload id, parts and tail."""
    line, _, tail = body.partition(b"\n")
    try:
        state = json.loads(line)
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"version {state.get('version')}")
        parts = [Part(int(n), str(etag), int(size)) for n, etag, size in state["parts"]]
        upload_id = state["upload_id"]
        expected = int(state["size"])
    except (ValueError, KeyError, TypeError) as error:
        raise StorageError(f"unreadable upload state for {path}: {error}") from error
    held = sum(part.size for part in parts) + len(tail)
    if held != expected:
        raise StorageError(f"upload state for {path} says {expected} bytes, holds {held}")
    return upload_id, parts, tail


def _unfinished(parts: list[Part], size: int) -> Unfinished:
    ends = [0]
    for part in sorted(parts, key=lambda part: part.number):
        ends.append(ends[-1] + part.size)
    return Unfinished(size, tuple(ends), ends[-1])


async def unfinished(client: S3Client, key: str, path: str) -> Unfinished | None:
    """The file a closed writer left at ``key`` (`IUnfinishedFiles.unfinished`)."""
    result = await client.call("GET", state_key(key), missing_ok=True)
    if result is None:
        return None
    _, parts, tail = _parse_state(result[1], path)
    return _unfinished(parts, sum(part.size for part in parts) + len(tail))


def _from_state(
    client: S3Client,
    reactor: Any,
    key: str,
    path: str,
    result: tuple[IResponse, bytes],
    lease: WriteLease,
) -> S3Writer:
    response, body = result
    upload_id, parts, tail = _parse_state(body, path)
    etag = header(response, "ETag")
    writer = S3Writer(
        client, reactor, key, path, upload_id, parts, tail, lease=lease, state_etag=etag
    )
    writer._from_state = True
    return writer
