"""
Filling the cache with one upstream blob while any number of clients read it.

A `Fill` writes the upstream body into a storage file at upstream speed (pausing the upstream
socket only when the storage writer asks to) and moves it to the blob's content-addressed path
once the body is complete and hashed to its digest (`BodyRelay` checks the length; the
digest is checked by `BodyRelay` or, off the reactor thread, by the fill's `OffloadedHasher`).
Every reader, first or late, is a `TailProducer`: a reader that keeps up gets each chunk from
the fill's small in-memory window of the latest bytes (`Fill.recent`) in the reactor turn that
received it, and one that fell behind (or joined late) reads the growing file from storage
"tail -f" style, in bounded segments and with its own back-pressure, until it catches up with
the window.  So memory does not depend on the number of clients, their speed or the layer
size (one window per fill, kept only while it has readers), no client's back-pressure ever
slows the upstream read, and the fill carries on when any client (the first included) goes
away.

With the filesystem driver the growing file is readable while it is written.  A driver whose
writer only publishes the file on commit (S3, where a fill is a multipart upload) gets a
*spool*: the fill writes every chunk to a local file as well (``tail_driver`` and
``tail_path``), and readers follow that one until the blob is stored, so that concurrent
clients get the bytes as they arrive rather than once the whole layer is committed.

When the storage fails under a fill (a write, the commit or the move into place: a full or
failing disk, S3 answering errors), the fill is *relayed*: it stops writing, and its readers
get the rest of the upstream body from the fill's window, which then keeps every byte that a
reader has yet to send (the upstream socket pauses while it holds more than `RECENT`, so the
slowest reader sets the pace and memory stays flat).  Bytes from before the failure that a
reader still needs are read back from where they were written (the file or the spool) up to
what the storage took; a reader that needs bytes neither holds any more ends its body short,
never with other bytes.  The body is still checked against its digest before its last byte
goes out; nothing is committed.  A reader that keeps the window full while its client takes
no bytes for the upstream's ``timeout`` (it stopped reading, its connection open) is dropped,
so that it cannot hold the upstream and every other reader of the fill without limit; taking
bytes is its connection draining (`unsent_bytes`), so a slow client is not taken for a
stalled one.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.api.digests import Digest, DigestingHasher
from registry.client._body import settle_body
from registry.http import twisted_internals
from registry.storage.driver import IFileWriter, IStorageDriver, PathNotFoundError, StorageError
from registry.storage.hash_offload import OffloadedHasher

# A reader behind the fill's window opens the growing file for at most this much at a time;
# what it holds in memory is bounded by the driver's reader (two 2 MiB chunks for a file),
# not by this, however far the fill has run ahead of it.  Larger segments: fewer opens.
SEGMENT = 8 * 1024 * 1024

# How much of the latest upstream bytes a fill with readers keeps in memory (at least the last
# chunk): a reader that keeps up, or paused for a reactor turn or two while its socket drains,
# is served from it without reading the bytes back from storage.
RECENT = 2 * 1024 * 1024

log = Logger()


class StoreFailed(StorageError):
    """The storage failed under a fill that then had no reader left to relay the body to."""


class SizeMismatch(Exception):
    """A reader promised its client more (or other) bytes than the blob being filled has: an
    upstream whose HEAD gave one size for a digest whose body has another.  The body is cut
    short, said in one line."""


class RelayGap(StorageError):
    """A reader of a relayed fill needs bytes that neither the window nor the storage hold."""


@dataclass(slots=True)
class _Watched:
    """What a fill knows of a reader to tell whether its client still takes bytes."""

    cut: Callable[[], None] | None  # drops its client
    unsent: Callable[[], int | None] | None  # its connection's backlog (`unsent_bytes`)
    moved: float  # when it was last seen to take bytes (``Fill.now``)
    seen: int | None = None  # its backlog then
    handed: int | None = None  # the blob's offset up to which it handed bytes to its client


class Fill:
    """The state of one blob fill that readers follow.  ``path`` is the growing file; once
    ``done``, the data is at ``final_path``; ``error`` is set when the fill failed.

    ``through`` is the upstream repository whose path the body is fetched from; ``links``
    are the local repositories to link the blob into once it is complete: the one that started
    the fill and every one that joined after the upstream confirmed it has the blob.

    ``keep`` is False for a blob served but not kept (no room under ``max_size``,
    `registry.proxy.space`): once done, its data stays at ``path`` (``final_path`` says so)
    until the last reader ends, and then ``on_idle`` removes it."""

    def __init__(
        self, digest: Digest, path: str, final_path: str, size: int | None, through: str = ""
    ) -> None:
        self.digest = digest
        self.path = path
        self.final_path = final_path
        self.size = size
        self.through = through
        self.links: set[str] = set()
        self.stored = 0
        self.opened = False  # the upstream answered and the file exists
        self.done = False
        self.error: BaseException | None = None
        self.readers = 0
        self.keep = True
        self.on_idle: Callable[[], None] | None = None
        # Where readers follow the bytes before the blob is stored (a local spool), when not
        # ``path`` in the storage.
        self.tail_driver: IStorageDriver | None = None
        self.tail_path: str | None = None
        # Bytes the storage writer (and the spool) took without an error so far.
        self.written = 0
        # Set when the storage failed: why, and up to where the stored bytes can be read back
        # (``written`` then); from then on the fill only relays the body to its readers.
        self.relay: str | None = None
        self.resumes = 0  # Range GETs for the rest of a cut upstream body (`ProxyCache`)
        # Bytes taken from what an interrupted fill of the blob kept (`registry.proxy.partials`).
        self.restart = 0
        self.base = 0
        self._waiters: list[Deferred[None]] = []
        self._room: list[Deferred[None]] = []
        # Where each reader is: a relayed fill keeps every byte from the lowest on.
        self._positions: dict[object, int] = {}
        # Whether each reader's client takes bytes, on the clock ``now``: a relayed fill drops
        # one that holds its window full for too long (`stalled`).
        self.now: Callable[[], float] = time.monotonic
        self._watched: dict[object, _Watched] = {}
        # The latest bytes stored, from offset ``_recent_start`` on (only while readers).
        self._recent: deque[bytes] = deque()
        self._recent_start = 0
        self._recent_size = 0

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None

    def changed(self) -> Deferred[None]:
        """Fires at the next progress, completion or failure.  Each caller gets its own
        Deferred, so cancelling one reader never disturbs the others or the fill."""
        d: Deferred[None] = Deferred(self._forget)
        self._waiters.append(d)
        return d

    def _forget(self, d: Deferred[None]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)

    def reader_started(
        self,
        reader: object,
        position: int,
        cut: Callable[[], None] | None = None,
        unsent: Callable[[], int | None] | None = None,
    ) -> None:
        """``reader`` follows the fill from ``position``; ``cut`` drops its client, and
        ``unsent`` tells how much its connection has yet to send."""
        self.readers += 1
        self._positions[reader] = position
        self._watched[reader] = _Watched(cut, unsent, self.now())

    def reader_moved(self, reader: object, handed: int) -> None:
        """``reader`` handed bytes to its client's connection, up to the blob's ``handed``."""
        watched = self._watched.get(reader)
        if watched is not None:
            watched.moved = self.now()
            watched.handed = handed

    def reader_at(self, reader: object, position: int) -> None:
        """``reader`` has sent everything before ``position``: a relayed fill lets go of it."""
        self._positions[reader] = position
        if self.relay is not None:
            self._trim_relay()

    def reader_done(self, reader: object = None) -> None:
        """A reader ended; the last one after the fill ended runs ``on_idle`` (once)."""
        self.readers -= 1
        self._positions.pop(reader, None)
        self._watched.pop(reader, None)
        if self.relay is not None:
            self._trim_relay()
        self.idle_check()

    def idle_check(self) -> None:
        if self.readers <= 0 and self.finished and self.on_idle is not None:
            on_idle, self.on_idle = self.on_idle, None
            on_idle()

    def notify(self) -> None:
        if self.finished:
            self._wake_room()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stored_chunk(self, data: bytes) -> None:
        """``data`` was accepted by the storage writer (and the spool): count it, keep it in
        the window while there are readers, and wake the readers waiting for it."""
        self.stored += len(data)
        if self.relay is not None:
            if not self._recent:
                self._recent_start = self.stored - len(data)
            self._recent.append(data)
            self._recent_size += len(data)
            self._trim_relay()
        elif self.readers > 0:
            recent = self._recent
            if not recent:
                self._recent_start = self.stored - len(data)
            recent.append(data)
            self._recent_size += len(data)
            while self._recent_size - len(recent[0]) >= RECENT:
                dropped = recent.popleft()
                self._recent_start += len(dropped)
                self._recent_size -= len(dropped)
        else:
            self.forget_recent()
        self.notify()

    def forget_recent(self) -> None:
        self._recent.clear()
        self._recent_size = 0
        self._wake_room()

    def start_relay(self, why: str) -> None:
        """The storage failed: from now on the window holds what the readers still need, and
        only the bytes the storage took before (``written``) are read back from it."""
        if self.relay is None:
            self.relay = why
            self.base = self.written
            self._trim_relay()
            self.notify()

    @property
    def window_start(self) -> int:
        return self._recent_start if self._recent else self.stored

    def _trim_relay(self) -> None:
        """Drop the window's chunks that every reader has sent."""
        lowest = min(self._positions.values(), default=self.stored)
        recent = self._recent
        while recent and self._recent_start + len(recent[0]) <= lowest:
            dropped = recent.popleft()
            self._recent_start += len(dropped)
            self._recent_size -= len(dropped)
        self._wake_room()

    @property
    def full(self) -> bool:
        """A relayed fill's window holds all it may: the upstream waits for the readers."""
        return self._recent_size > RECENT and self.readers > 0 and not self.finished

    def holders(self) -> list[object]:
        """The readers keeping the window's first chunk, and so all of it: those that have
        yet to send it (or bytes before it).  While the window is full, only they can make
        room."""
        if not self._recent:
            return []
        first_end = self._recent_start + len(self._recent[0])
        return [reader for reader, at in self._positions.items() if at < first_end]

    def watch_start(self) -> None:
        """The relay begins to wait for room: each reader's stall is counted from now, and
        its connection's backlog from what it is now."""
        now = self.now()
        for watched in self._watched.values():
            watched.moved = now
            watched.seen = watched.unsent() if watched.unsent is not None else None

    def stalled(self, timeout: float) -> list[object]:
        """The readers holding the window (`holders`) whose clients took no bytes for
        ``timeout``: none was handed to their connection, and its backlog did not move (a
        client that reads slowly drains a large write for a long time)."""
        now = self.now()
        found = []
        for reader in self.holders():
            watched = self._watched.get(reader)
            if watched is None:
                continue
            unsent = watched.unsent() if watched.unsent is not None else None
            if unsent is not None and unsent != watched.seen:
                watched.seen, watched.moved = unsent, now
            elif now - watched.moved >= timeout:
                found.append(reader)
        return found

    def cut(self, reader: object) -> int | None:
        """Drop ``reader``'s client (its body ends short); where it was, or None if it
        cannot be dropped."""
        watched = self._watched.get(reader)
        position = self._positions.get(reader)
        if watched is None or watched.cut is None or position is None:
            return None
        cut, watched.cut = watched.cut, None
        cut()
        # (A read-back from the storage moves ``position`` only once it is all handed over.)
        return max(position, watched.handed or 0)

    def room(self) -> Deferred[None] | None:
        """For a relayed fill: None while its window may grow, else a Deferred that fires
        once the readers took enough of it (or are gone, or the fill ended)."""
        if not self.full:
            return None
        d: Deferred[None] = Deferred(lambda d: self._room.remove(d) if d in self._room else None)
        self._room.append(d)
        return d

    def _wake_room(self) -> None:
        if self._room and (self._recent_size <= RECENT or self.readers <= 0 or self.finished):
            room, self._room = self._room, []
            for d in room:
                d.callback(None)

    def recent(self, position: int, end: int) -> list[bytes]:
        """The stored bytes from ``position`` to ``end`` that the window holds, as pieces
        (whole chunks are not copied); empty when ``position`` is not in the window."""
        start = self._recent_start
        if not self._recent or position < start or position >= end:
            return []
        pieces: list[bytes] = []
        for chunk in self._recent:
            chunk_end = start + len(chunk)
            if chunk_end > position:
                if start >= end:
                    break
                lo, hi = max(position, start) - start, min(end, chunk_end) - start
                pieces.append(chunk if lo == 0 and hi == len(chunk) else chunk[lo:hi])
            start = chunk_end
        return pieces


class FillProtocol(Protocol):
    """Receives the upstream body (through `BodyRelay`) and appends it to the fill's file.

    With a ``hasher`` (the body is then delivered unverified), every chunk is also queued for
    hashing on the hash threads, and the upstream socket pauses while that queue is full, as
    it does for a slow writer; whoever awaits ``done`` then compares the digest.

    When a storage write fails (at once, or later through its Deferred), ``on_store_failed``
    is told and the fill is relayed (`Fill.start_relay`): the body goes on to the readers
    only, the upstream socket pausing while the window is full; with no reader left, the
    body is stopped and ``done`` fails with `StoreFailed`.  While the relay waits for room in
    the window, the readers holding it whose clients took no bytes for ``stall_timeout``
    (`Fill.stalled`, looked at four times per ``stall_timeout``) are dropped (`Fill.cut`,
    then ``on_reader_cut`` with where each was), so that one client that stopped reading
    holds neither the upstream nor the others for much longer than that.

    ``writer`` is None when the storage failed before the first byte: the whole body is
    relayed.  ``done`` fires when the body ended complete (and, without a ``hasher``,
    verified), or fails with its error.

    ``skip``: how many bytes at the start of the body the fill has already (a body resumed
    from an upstream that ignored the ``Range`` and sent the blob from its first byte); they
    are dropped.  `drained` waits for the writes still under way when the body ended, so that
    the next body of a resumed fill is written after them."""

    def __init__(
        self,
        fill: Fill,
        writer: IFileWriter | None,
        on_bytes: Callable[[int], None],
        spool: IFileWriter | None = None,
        hasher: OffloadedHasher | DigestingHasher | None = None,
        on_store_failed: Callable[[BaseException], None] | None = None,
        clock: IReactorTime | None = None,
        stall_timeout: float | None = None,
        on_reader_cut: Callable[[int], None] | None = None,
        skip: int = 0,
    ) -> None:
        self.fill = fill
        self.skip = skip
        self._writing = 0  # batches of writes under way
        self._drain_waiters: list[Deferred[None]] = []
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.on_reader_cut = on_reader_cut
        self._watch: IDelayedCall | None = None
        self.writer = writer
        self.spool = spool
        self.hasher = hasher
        self.on_bytes = on_bytes
        self.on_store_failed = on_store_failed
        self.store_error: BaseException | None = None
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
            if not data:
                return
        writer = self.writer
        if self.fill.relay is not None or writer is None:
            self._relay(data)
            return
        try:
            stores = [writer.write(data)]
            if self.spool is not None:
                stores.append(self.spool.write(data))
        except Exception as exc:  # a full disk, an I/O error, a closed writer
            self._store_failed(exc)
            self._relay(data)
            return
        pending: list[Deferred[Any]] = []
        for d in stores:
            if isinstance(d, Deferred):
                # A write failing later relays the body all the same (never a failed pull).
                pending.append(d.addErrback(self._late_store_failure))
        if self.hasher is not None:
            hashed = self.hasher.update(data)
            if isinstance(hashed, Deferred):
                pending.append(hashed)
        self.on_bytes(len(data))
        self.fill.stored_chunk(data)
        end = self.fill.stored
        if not pending:
            self.fill.written = end
            return
        transport: Any = self.transport
        transport.pauseProducing()

        def written(_: object) -> None:
            self._wrote()
            if self.fill.relay is None:
                self.fill.written = end
            self._resume()

        def failed(failure: Failure) -> None:
            self._wrote()
            self._write_failed(failure)

        self._writing += 1
        gatherResults(pending, consumeErrors=True).addCallbacks(written, failed)

    def _wrote(self) -> None:
        self._writing -= 1
        if not self._writing:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drained(self) -> Deferred[None]:
        """Fires once the writes (and hashing) under way when the body ended are done."""
        waiter: Deferred[None] = Deferred()
        if self._writing:
            self._drain_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def _relay(self, data: bytes) -> None:
        """A chunk after the storage failed: to the readers (through the window) only."""
        fill = self.fill
        pending: list[Deferred[Any]] = []
        if self.hasher is not None:
            hashed = self.hasher.update(data)
            if isinstance(hashed, Deferred):
                pending.append(hashed)
        self.on_bytes(len(data))
        fill.stored_chunk(data)
        if fill.readers <= 0:
            self._abandon()
            return
        room = fill.room()
        if room is not None:
            pending.append(room)
            self._watch_stalls()
        if pending:
            self.transport.pauseProducing()  # type: ignore[union-attr]
            gatherResults(pending, consumeErrors=True).addCallbacks(
                lambda _: self._resume(), self._write_failed
            )

    def _resume(self) -> None:
        if self.done.called:
            return
        fill = self.fill
        if fill.relay is not None:
            if fill.readers <= 0:
                self._abandon()
                return
            room = fill.room()
            if room is not None:
                room.addCallbacks(lambda _: self._resume(), self._write_failed)
                self._watch_stalls()
                return
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def _watch_stalls(self) -> None:
        """The relay waits for room: look for stalled readers until it has room again.
        Neither the upstream's idle timeout (off while its socket is paused) nor twisted.web
        (no write timeout) would ever end that wait."""
        if self.clock is None or self.stall_timeout is None:
            return
        if self._watch is not None and self._watch.active():
            return  # (this wait goes on: the readers' stalls are counted from its start)
        self.fill.watch_start()
        self._watch = self.clock.callLater(self.stall_timeout / 4, self._check_stalls)

    def _check_stalls(self) -> None:
        self._watch = None
        fill, timeout = self.fill, self.stall_timeout
        if self.clock is None or timeout is None:
            return
        if self.done.called or fill.relay is None or not fill.full:
            return  # room again (or over): the next wait starts counting afresh
        for reader in fill.stalled(timeout):
            # (Dropping one may make room, resume the upstream and even start a new wait.)
            position = fill.cut(reader)
            if position is not None and self.on_reader_cut is not None:
                self.on_reader_cut(position)
        if self._watch is None and not self.done.called and fill.full:
            self._watch = self.clock.callLater(timeout / 4, self._check_stalls)

    def _stop_watching(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and watch.active():
            watch.cancel()

    def _late_store_failure(self, failure: Failure) -> None:
        self._store_failed(failure.value or StorageError("storage write failed"))

    def _store_failed(self, error: BaseException) -> None:
        if self.store_error is not None:
            return
        self.store_error = error
        self.fill.start_relay(str(error))
        if self.on_store_failed is not None:
            self.on_store_failed(error)

    def _abandon(self) -> None:
        """Relaying with nobody left to relay to: stop the upstream body."""
        why = self.fill.relay or "storage failed"
        self._write_failed(Failure(StoreFailed(f"{why}; no client left to serve")))

    def _write_failed(self, failure: Failure) -> None:
        self._stop_watching()
        self.transport.stopProducing()  # type: ignore[union-attr]
        if not self.done.called:
            self.done.errback(failure)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._stop_watching()
        settle_body(self.done, reason, None)


def abort_connection(consumer: object) -> None:
    """Drop the connection under an HTTP response (a twisted.web request) now."""
    channel = getattr(consumer, "channel", None)
    transport = getattr(channel, "transport", None)
    abort = getattr(transport, "abortConnection", None) or getattr(
        transport, "loseConnection", None
    )
    if callable(abort):
        abort()


def unsent_bytes(consumer: object) -> int | None:
    """How much of what was written to the connection under an HTTP response (a twisted.web
    request) is still on its way: the transport's buffer and, on Linux, the socket's send
    queue (``TIOCOUTQ``: sent but not yet acknowledged, or not sent), which shrinks as the
    client reads.  A client that stopped reading leaves it as it is.  None when the
    connection is not a socket transport (HTTP/2 streams, tests' fakes)."""
    channel = getattr(consumer, "channel", None)
    transport = twisted_internals.socket_transport(getattr(channel, "transport", None))
    if transport is None:
        return None
    unsent = twisted_internals.transport_buffered(transport)
    outq = getattr(termios, "TIOCOUTQ", None)
    sock = transport.getHandle() if hasattr(transport, "getHandle") else None
    if outq is not None and isinstance(sock, socket.socket):
        try:
            queued = fcntl.ioctl(sock.fileno(), outq, b"\0\0\0\0")
        except (OSError, ValueError):
            pass  # closed meanwhile: the buffer alone
        else:
            unsent += struct.unpack("i", queued)[0]
    return unsent


@implementer(IBodyProducer, IPushProducer)
class TailProducer:
    """Streams ``length`` bytes from ``offset`` of a blob being filled, following the fill.

    Bytes the fill's window still holds (`Fill.recent`) are written to the consumer straight
    away, until it pauses; older ones are read from storage, each segment a driver reader
    started on the consumer directly, so the consumer's back-pressure reaches the file reads.
    With nothing new, it waits for the fill to progress.  If the fill fails after bytes went
    out, production fails and the caller drops the connection: the client sees a truncated
    body, never a wrong complete one.
    """

    def __init__(
        self,
        fill: Fill,
        driver: IStorageDriver,
        offset: int,
        length: int,
        whole: int | None = None,
    ) -> None:
        self.fill = fill
        self.driver = driver
        self.offset = offset
        self.length = length
        # The blob's size when this response claims to be the whole blob: its last byte then
        # waits for the fill's digest check, and a fill of another size fails it.
        self.whole = whole
        self.sent = 0
        self._inner: IBodyProducer | None = None
        self._paused = False
        self._stopped = False
        self._writing = False  # in consumer.write, which may pause or stop this producer
        self._resumed: Deferred[None] | None = None
        self._run: Deferred[None] | None = None
        self._consumer: IConsumer | None = None
        self._handed = 0  # bytes handed to the consumer

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self.fill.reader_started(self, self.offset, self.cut, self.unsent)
        # Every write (from the window or a storage reader) says this reader is moving.
        moving = _CountingConsumer(consumer, self._handed_over)
        run = Deferred.fromCoroutine(self._produce(moving))
        self._run = run

        def released(result: object) -> object:
            self.fill.reader_done(self)
            if isinstance(result, Failure) and not result.check(CancelledError):
                # The status line and Content-Length are out: the only honest end is to drop
                # the connection, so the client sees a short body, not a finished response.
                abort_connection(consumer)
                # For the request this is now what a client leaving is: nothing more to send
                # or report (the fill logged its failure once, however many readers it had).
                return Failure(CancelledError(f"fill of {self.fill.digest} failed"))
            return result

        run.addBoth(released)
        return run

    async def _produce(self, consumer: IConsumer) -> None:
        fill = self.fill
        position, end = self.offset, self.offset + self.length
        while position < end:
            if self._stopped:
                raise CancelledError("tail producer stopped")
            if fill.error is not None:
                raise fill.error
            self._check_size(end)
            if self._paused:
                self._resumed = Deferred()
                await self._resumed
                continue
            if fill.relay is not None:
                position = await self._relayed(consumer, position, end)
                continue
            # Until the fill is verified, hold back its last byte: if the upstream body turns
            # out truncated or corrupt, no client has received a complete wrong blob.
            verified = fill.stored if fill.size is None else min(fill.stored, fill.size - 1)
            if self.whole is not None and not fill.done:
                verified = min(verified, self.whole - 1)
            if not fill.done and verified > position:
                pieces = fill.recent(position, min(end, verified))
                if pieces:
                    position += self._write_pieces(consumer, pieces)
                    fill.reader_at(self, position)
                    continue
            driver = self.driver
            if fill.done:
                path, wanted = fill.final_path, min(end - position, SEGMENT)
            elif verified > position:
                path, wanted = fill.path, min(end - position, verified - position, SEGMENT)
                if fill.tail_driver is not None and fill.tail_path is not None:
                    driver, path = fill.tail_driver, fill.tail_path
            else:
                await fill.changed()
                continue
            try:
                producer = await driver.reader(path, position, wanted)
            except PathNotFoundError:
                if fill.done and path == fill.final_path:
                    raise
                # Moved into place (or not published yet): wait for the fill to say so.
                if not fill.finished:
                    await fill.changed()
                continue
            count = int(producer.length)
            if count <= 0:
                producer.stopProducing()
                if fill.finished:  # nothing more will come: the stored blob ends early
                    raise StorageError(f"{path} ends before byte {position}")
                await fill.changed()
                continue
            await self._send_stored(consumer, producer)
            position += count
            self.sent += count
            fill.reader_at(self, position)

    def _check_size(self, end: int) -> None:
        """
        The response promised bytes up to ``end`` (and, ``whole``, the whole blob at that
        size) from what a HEAD said; the fill's own size is the upstream body's.  Once they
        disagree the body can only be cut short: read on past the blob's end, a finished
        fill has nothing more to wait for, and a short "whole" blob would be a complete
        wrong answer.
        """
        size = self.fill.size
        if size is None and self.fill.done:
            size = self.fill.stored
        if size is None:
            return
        if end > size or (self.whole is not None and self.whole != size):
            promised = self.whole if self.whole is not None else end
            log.warn(
                "proxy: {digest} has {size} bytes, a response promised {promised} from a "
                "HEAD's word: cut short",
                digest=str(self.fill.digest),
                size=size,
                promised=promised,
            )
            raise SizeMismatch(f"{self.fill.digest} has {size} bytes, not {promised}")

    async def _relayed(self, consumer: IConsumer, position: int, end: int) -> int:
        """One step of following a fill whose storage failed (`Fill.start_relay`); the new
        position.  Bytes come from the window; those before it, from what the storage took
        before it failed (the file or the spool, never past ``Fill.base``)."""
        fill = self.fill
        # As below: the last byte waits for the digest check.
        if fill.done:
            verified = fill.stored
        else:
            verified = fill.stored if fill.size is None else min(fill.stored, fill.size - 1)
        if verified <= position:
            await fill.changed()
            return position
        pieces = fill.recent(position, min(end, verified))
        if pieces:
            written = self._write_pieces(consumer, pieces)
            fill.reader_at(self, position + written)
            return position + written
        if position >= fill.base or position >= fill.window_start:
            raise RelayGap(f"bytes of {fill.digest} from {position} are no longer held")
        driver, path = self.driver, fill.path
        if fill.tail_driver is not None and fill.tail_path is not None:
            driver, path = fill.tail_driver, fill.tail_path
        try:
            producer = await driver.reader(path, position, min(end, fill.base) - position)
        except StorageError as exc:
            raise RelayGap(f"bytes of {fill.digest} from {position}: {exc}") from exc
        count = int(producer.length)
        if count <= 0:
            producer.stopProducing()
            # What the storage said it took is not all there (a buffered write lost).
            raise RelayGap(f"bytes of {fill.digest} from {position} were not stored")
        await self._send_stored(consumer, producer)
        self.sent += count
        fill.reader_at(self, position + count)
        return position + count

    async def _send_stored(self, consumer: IConsumer, producer: Any) -> None:
        """Send a storage reader's bytes, paused and stopped as this producer is meanwhile."""
        self._inner = producer
        if self._paused:
            producer.pauseProducing()
        try:
            await producer.startProducing(consumer)
        finally:
            self._inner = None

    def _write_pieces(self, consumer: IConsumer, pieces: list[bytes]) -> int:
        """Write ``pieces`` until the consumer pauses or stops this producer; bytes written."""
        written = 0
        self._writing = True
        try:
            for piece in pieces:
                if self._paused or self._stopped:
                    break
                consumer.write(piece)
                written += len(piece)
        finally:
            self._writing = False
        self.sent += written
        return written

    def pauseProducing(self) -> None:
        self._paused = True
        if self._inner is not None:
            self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._inner is not None:
            self._inner.resumeProducing()
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def _handed_over(self, data: bytes) -> None:
        self._handed += len(data)
        self.fill.reader_moved(self, self.offset + self._handed)

    def cut(self) -> None:
        """Drop the client's connection now (a body short of its length) and stop: a relayed
        fill gives up on a reader that holds the others (`FillProtocol`)."""
        if self._stopped:
            return
        if self._consumer is not None:
            abort_connection(self._consumer)
        self.stopProducing()

    def unsent(self) -> int | None:
        return None if self._consumer is None else unsent_bytes(self._consumer)

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.stopProducing()
        if self._writing:
            return  # inside the coroutine (a write): it sees ``_stopped`` when the write returns
        if self._run is not None and not self._run.called:
            self._run.cancel()


@implementer(IConsumer)
class _CountingConsumer:
    """Shows each chunk to ``on_write`` before passing it on; with ``hold_at`` (the body's
    length) the body's last byte is kept back until `release`."""

    def __init__(
        self, consumer: IConsumer, on_write: Callable[[bytes], None], hold_at: int | None = None
    ) -> None:
        self._consumer = consumer
        self._on_write = on_write
        self._left = hold_at
        self._held = b""

    def release(self) -> None:
        held, self._held = self._held, b""
        if held:
            self._consumer.write(held)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._on_write(data)
        if self._left is not None:
            self._left -= len(data)
            if self._left <= 0 and data:
                data, self._held = data[:-1], data[-1:]
        if data:
            self._consumer.write(data)

    def __getattr__(self, name: str) -> Any:
        # The rest (``channel``, to drop a broken response) is the wrapped consumer's.
        return getattr(self._consumer, name)


@implementer(IBodyProducer, IPushProducer)
class ObservedProducer:
    """Wraps a producer to see every chunk it writes (byte counters, hashing on a worker), and
    to run ``on_end`` once, whatever the outcome (releasing an "in use" mark).

    ``on_write`` may return a Deferred: "stop producing until this fires" (a hashing queue
    over its high-water mark).  The inner producer is then paused until both that Deferred
    fired and the consumer wants data, so neither side can resume it for the other."""

    def __init__(
        self,
        inner: IBodyProducer,
        on_write: Callable[[bytes], Deferred[None] | None],
        on_end: Callable[[Failure | None], None],
        check: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._inner = inner
        self._on_write = on_write
        self._on_end = on_end
        # Run once every byte was seen, before the last one is passed on: a check that raises
        # ends the body one byte short, so no client ever gets all of a body that failed it.
        self._check = check
        self._ended = False
        self._consumer_paused = False
        self._waiting: Deferred[None] | None = None
        self.length = inner.length

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        length = self.length if isinstance(self.length, int) else None
        hold_at = length if self._check is not None and length else None
        counting = _CountingConsumer(consumer, self._seen, hold_at)
        d: Deferred[None] = self._inner.startProducing(counting)
        check = self._check
        if check is not None:

            async def checked(_: None) -> None:
                await check()
                counting.release()

            d.addCallback(lambda result: Deferred.fromCoroutine(checked(result)))

        def ok(result: None) -> None:
            self._end(None)

        def failed(failure: Failure) -> Failure:
            self._end(failure)
            return failure

        d.addCallbacks(ok, failed)
        return d

    def _seen(self, data: bytes) -> None:
        waiter = self._on_write(data)
        if waiter is None or self._waiting is not None:
            return
        self._waiting = waiter
        if not self._consumer_paused:
            self._inner.pauseProducing()

        def room(_: None) -> None:
            self._waiting = None
            if not self._consumer_paused and not self._ended:
                self._inner.resumeProducing()

        waiter.addCallback(room)

    def _end(self, failure: Failure | None) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(failure)

    def pauseProducing(self) -> None:
        self._consumer_paused = True
        if self._waiting is None:
            self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._consumer_paused = False
        if self._waiting is None:
            self._inner.resumeProducing()

    def stopProducing(self) -> None:
        self._inner.stopProducing()
        self._end(Failure(CancelledError("stopped")))
