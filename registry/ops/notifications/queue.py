"""
The durable queue of one webhook endpoint: pending events in memory, mirrored to an
append-only log file so that a restart redelivers what was not delivered (at least once).

The log is text, one record a line::

    E <seq> <event JSON>        an event accepted for the endpoint
    D <first> <last>            every event with first <= seq <= last is done (delivered or
                                dropped); the events of one delivery are a prefix of the queue,
                                so whatever lies between first and last is done already

Nothing touches the file in the reactor thread: records collect in a buffer that a one-thread
pool appends every ``flush_interval`` (and fsyncs when asked).  So a ``kill -9`` (or, with
fsync, a power loss) can lose the events accepted in the last ``flush_interval`` only, and can
repeat deliveries whose ``D`` record was not written yet.  Once more than half of the file is
done events, it is rewritten (a new file renamed over it) with the pending events only; the
same happens at start-up, which also drops a line torn by a crash.

The queue keeps at most ``max_events`` pending events: one more drops the oldest that is not
being delivered, counted in ``dropped``.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

Entry = tuple[int, bytes]  # (sequence number, the event's JSON)

# A rewrite is not worth it for fewer done events than this.
_COMPACT_MIN = 1024


def read_log(path: str) -> tuple[list[Entry], int]:
    """The pending events of a log file, in order, and the highest sequence number seen."""
    pending: dict[int, bytes] = {}
    last = 0
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return [], 0
    lines = data.split(b"\n")
    # The last element is b"" after a complete line; anything else is a line torn by a crash.
    for line in lines[:-1]:
        kind, _, rest = line.partition(b" ")
        try:
            if kind == b"E":
                seq_text, _, event = rest.partition(b" ")
                seq = int(seq_text)
                pending[seq] = event
                last = max(last, seq)
            elif kind == b"D":
                first_text, _, last_text = rest.partition(b" ")
                for seq in range(int(first_text), int(last_text) + 1):
                    pending.pop(seq, None)
        except ValueError:
            continue  # a damaged line: skipped rather than refusing to start
    return sorted(pending.items()), last


def _event_lines(entries: list[Entry]) -> bytes:
    return b"".join(b"E %d %s\n" % (seq, event) for seq, event in entries)


def _write(path: str, data: bytes, replace: bool, fsync: bool) -> None:
    """Append ``data`` to the log, or replace the log with it (atomically)."""
    if not replace:
        with open(path, "ab") as file:
            file.write(data)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        return
    temp = path + ".new"
    with open(temp, "wb") as file:
        file.write(data)
        file.flush()
        if fsync:
            os.fsync(file.fileno())
    os.replace(temp, path)
    if fsync:
        directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class DurableQueue:
    """
    Pending events of one endpoint, oldest first.  `append`, `take` and `done` are called in
    the reactor thread and never wait; `flush` writes to the log in ``pool``.  ``path`` None
    keeps the queue in memory only (the inmemory storage driver).
    """

    def __init__(
        self,
        path: str | None,
        reactor: Any,
        pool: ThreadPool,
        max_events: int,
        fsync: bool = True,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._pool = pool
        self.max_events = max_events
        self._fsync = fsync
        self.on_drop = on_drop
        self.pending: deque[Entry] = deque()
        self.dropped = 0
        self._in_flight = 0  # the first _in_flight entries are being delivered
        self._next_seq = 1
        self._buffer: list[bytes] = []
        self._file_events = 0  # E lines in the file (and buffer)
        self._file_done = 0  # of those, done ones
        self._rewrite = True  # the first write replaces what `load` read
        self._lock = DeferredLock()
        # Events accepted while `load` reads the log wait here: they come after the old ones.
        self._loaded = path is None
        self._early: list[bytes] = []

    async def load(self) -> None:
        """Read back the events a previous run left pending (before any `append`)."""
        if self.path is None or self._loaded:
            return
        path = self.path
        entries, last = await deferToThreadPool(self._reactor, self._pool, read_log, path)
        self.pending.extend(entries[-self.max_events :])
        self._next_seq = last + 1
        self._loaded = True
        if entries:
            log.info(
                "notifications: {count} undelivered events read back from {path}",
                count=len(entries),
                path=path,
            )
        early, self._early = self._early, []
        for event in early:
            self.append(event)

    def append(self, event: bytes) -> None:
        """Accept an event (its JSON, without newlines)."""
        if not self._loaded:
            self._early.append(event)
            if len(self._early) > self.max_events:  # the log could not be read: still bounded
                del self._early[0]
                self.dropped += 1
            return
        seq = self._next_seq
        self._next_seq += 1
        self.pending.append((seq, event))
        if self.path is not None:
            self._buffer.append(b"E %d %s\n" % (seq, event))
            self._file_events += 1
        while len(self.pending) > self.max_events and len(self.pending) > self._in_flight:
            dropped_seq, _ = self.pending[self._in_flight]
            del self.pending[self._in_flight]
            self._mark_done(dropped_seq, dropped_seq, 1)
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(1)

    def take(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` events, to deliver; they stay queued until `done`."""
        count = min(limit, len(self.pending))
        self._in_flight = count
        return [self.pending[i] for i in range(count)]

    def done(self, count: int) -> None:
        """The first ``count`` events taken were delivered."""
        assert count <= self._in_flight
        if count:
            first, last = self.pending[0][0], self.pending[count - 1][0]
            for _ in range(count):
                self.pending.popleft()
            self._mark_done(first, last, count)
        self._in_flight = 0

    def release(self) -> None:
        """The events taken were not delivered: they stay first in line."""
        self._in_flight = 0

    def _mark_done(self, first: int, last: int, count: int) -> None:
        if self.path is not None:
            self._buffer.append(b"D %d %d\n" % (first, last))
            self._file_done += count

    @property
    def flushing(self) -> bool:
        return self._lock.locked

    async def flush(self, compact: bool = False) -> None:
        """
        Write what was accepted or done since the last flush, one write at a time; with
        ``compact``, rewrite the log with the pending events only (done at a clean stop).
        """
        await self._lock.acquire()
        try:
            await self._write_buffer(compact)
        finally:
            self._lock.release()

    async def _write_buffer(self, compact: bool) -> None:
        if self.path is None or not self._loaded:
            return  # never overwrite a log that was not read back
        if not (self._buffer or self._rewrite or compact):
            return
        compact = (
            compact
            or self._rewrite
            or (self._file_done >= _COMPACT_MIN and self._file_done * 2 > self._file_events)
        )
        if compact:
            data = _event_lines(list(self.pending))
            self._file_events, self._file_done = len(self.pending), 0
        else:
            data = b"".join(self._buffer)
        self._buffer, self._rewrite = [], False
        try:
            await deferToThreadPool(
                self._reactor, self._pool, _write, self.path, data, compact, self._fsync
            )
        except Exception:
            # A full disk or a lost mount: the events are still in memory, so the next flush
            # rewrites the whole log instead of appending to a file missing some records.
            log.failure("notifications: writing {path} failed", path=self.path)
            self._rewrite = True
