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

The queue keeps at most ``max_events`` pending events besides those of the POST under way:
one more drops the oldest that is not being delivered, counted in ``dropped``.  The POST's
events cannot go while it may still deliver them; if it fails, they are the oldest waiting
and the first to go, down to ``max_events``.  (Counting them in the bound instead dropped the
newest events whenever one POST held the whole queue, as it does with ``maxevents`` at most
``maxbatch`` and the endpoint down.)  So memory holds at most ``max_events`` plus one batch.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.internet.defer import DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

Entry = tuple[int, bytes]  # (sequence number, the event's JSON)

# A rewrite is not worth it for fewer done events than this.
_COMPACT_MIN = 1024
# Seconds between two tries at writing the log once a write failed (a full disk): each try
# rewrites every pending event, which on a backlog is tens of megabytes of work.
REWRITE_RETRY = 5.0


@attrs.frozen
class LogContents:
    """What a log file holds: its pending events in order, the highest sequence number seen,
    and how many lines were damaged (skipped)."""

    pending: list[Entry]
    last: int
    damaged: int = 0


def _records(path: str) -> Iterator[tuple[bytes, bytes]]:
    """The log's whole lines as (kind, rest), a line at a time (a backlog read whole, and
    split, took three times its size in memory at start); the last line, torn by a crash
    (no newline), is left out."""
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                return
            kind, _, rest = line[:-1].partition(b" ")
            yield kind, rest


def read_log(path: str) -> LogContents:
    """
    The pending events of a log file.  A damaged line (an event that is not a JSON object,
    a record that does not parse, a done range that names events the file never had) is
    skipped and counted: one bad line must neither stop the endpoint nor reach it.

    Read twice: the done ranges first (they follow the events they close), then the events
    still pending, so that done events are never held in memory.
    """
    done: list[tuple[int, int]] = []
    last = 0
    damaged = 0
    try:
        for kind, rest in _records(path):
            try:
                if kind == b"E":
                    last = max(last, int(rest.partition(b" ")[0]))
                elif kind == b"D":
                    first_text, _, last_text = rest.partition(b" ")
                    first, final = int(first_text), int(last_text)
                    if not 1 <= first <= final <= last:
                        raise ValueError("not a range of events written before")
                    done.append((first, final))
                elif kind:
                    raise ValueError("not a record")
                else:
                    raise ValueError("an empty line")
            except ValueError:
                if kind != b"E":  # (a damaged event line is counted in the second pass)
                    damaged += 1
    except FileNotFoundError:
        return LogContents([], 0)
    # Applied once, over the events there are: a range's width costs nothing.
    merged = _merged(done)
    starts = [first for first, _ in merged]
    pending: dict[int, bytes] = {}
    last = 0
    for kind, rest in _records(path):
        if kind != b"E":
            continue
        try:
            seq_text, _, event = rest.partition(b" ")
            seq = int(seq_text)
            if seq < 1 or not isinstance(json.loads(event), dict):
                raise ValueError("not an event")
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            damaged += 1
            continue
        last = max(last, seq)
        i = bisect.bisect_right(starts, seq) - 1
        if i < 0 or seq > merged[i][1]:
            pending[seq] = event  # (an event written twice: its last line counts)
    return LogContents(sorted(pending.items()), last, damaged)


def read_and_adopt(path: str, others: list[str], fsync: bool) -> tuple[LogContents, list[int]]:
    """
    The pending events of the log ``path`` followed by those of the logs ``others`` (queues
    no process writes any more: workers beyond ``[http] workers``), renumbered after
    ``path``'s own and each file's order kept; the result is written to ``path`` before
    ``others`` are removed, so a crash in between can repeat events (at least once) but
    never lose them.  Also how many events each of ``others`` gave.
    """
    own = read_log(path)
    pending, last, damaged = list(own.pending), own.last, own.damaged
    counts = []
    for other in others:
        contents = read_log(other)
        for _, event in contents.pending:
            last += 1
            pending.append((last, event))
        damaged += contents.damaged
        counts.append(len(contents.pending))
    _replace(path, pending, fsync)
    for other in others:
        os.remove(other)
    return LogContents(pending, last, damaged), counts


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` as disjoint ranges in order (done ranges overlap: a drop inside a prefix)."""
    out: list[tuple[int, int]] = []
    for first, final in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], final))
        else:
            out.append((first, final))
    return out


# Events written to a new log in pieces of this many: a backlog joined whole would take its
# size in memory once more.
_LINES_PER_WRITE = 1024


def _event_lines(entries: list[Entry]) -> bytes:
    return b"".join(b"E %d %s\n" % (seq, event) for seq, event in entries)


def _append(path: str, data: bytes, fsync: bool) -> None:
    """Append ``data`` to the log."""
    with open(path, "ab") as file:
        file.write(data)
        if fsync:
            file.flush()
            os.fsync(file.fileno())


def _replace(path: str, entries: list[Entry], fsync: bool) -> None:
    """Replace the log with ``entries`` (atomically: a new file renamed over it; one that
    could not be written whole is removed, so that it holds no space on a full disk)."""
    temp = path + ".new"
    try:
        with open(temp, "wb") as file:
            for start in range(0, len(entries), _LINES_PER_WRITE):
                file.write(_event_lines(entries[start : start + _LINES_PER_WRITE]))
            file.flush()
            if fsync:
                os.fsync(file.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
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
        adopt: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        # Logs of workers that no longer run, whose events `load` moves into this one.
        self.adopt = adopt
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
        self._retry_at = 0.0  # after a failed write: when the next try may be
        self._lock = DeferredLock()
        # Events accepted while `load` reads the log wait here: they come after the old ones.
        self._loaded = path is None
        self._early: list[bytes] = []
        # Why the last write failed, until one succeeds (see `_write_buffer`).
        self._write_problem: str | None = None

    async def load(self) -> None:
        """Read back the events a previous run left pending (before any `append`)."""
        if self.path is None or self._loaded:
            return
        path = self.path
        if self.adopt:
            # Always fsynced: the adopted files are removed once this write is done.
            contents, counts = await deferToThreadPool(
                self._reactor, self._pool, read_and_adopt, path, list(self.adopt), True
            )
            if sum(counts):
                log.warn(
                    "notifications: {count} undelivered events adopted from {adopted} (queues"
                    " of workers beyond [http] workers) into {path}",
                    count=sum(counts),
                    adopted=", ".join(
                        f"{os.path.basename(other)} ({n})"
                        for other, n in zip(self.adopt, counts, strict=True)
                    ),
                    path=path,
                )
            else:  # every event of those workers was delivered: nothing to warn about
                log.info(
                    "notifications: removed {adopted} (queues of workers beyond [http]"
                    " workers, every event delivered)",
                    adopted=", ".join(os.path.basename(other) for other in self.adopt),
                )
            self.adopt = ()
        else:
            contents = await deferToThreadPool(self._reactor, self._pool, read_log, path)
        entries = contents.pending
        if contents.damaged:
            log.warn(
                "notifications: {path}: {damaged} damaged lines skipped",
                path=path,
                damaged=contents.damaged,
            )
        excess = max(0, len(entries) - self.max_events)
        self.pending.extend(entries[excess:])
        self._next_seq = contents.last + 1
        self._loaded = True
        if entries:
            log.info(
                "notifications: {count} undelivered events read back from {path}",
                count=len(entries),
                path=path,
            )
        if excess:
            # maxevents was lowered since they were queued: the oldest go, counted as any drop.
            self.dropped += excess
            log.warn(
                "notifications: {path}: {excess} oldest events dropped (more than maxevents"
                " {maxevents} were waiting)",
                path=path,
                excess=excess,
                maxevents=self.max_events,
            )
            if self.on_drop is not None:
                self.on_drop(excess)
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
        while len(self.pending) - self._in_flight > self.max_events:
            dropped_seq, _ = self.pending[self._in_flight]
            del self.pending[self._in_flight]
            self._mark_done(dropped_seq, dropped_seq, 1)
            self._count_drops(1)

    def _count_drops(self, count: int) -> None:
        self.dropped += count
        if self.on_drop is not None:
            self.on_drop(count)

    @property
    def waiting(self) -> int:
        """Events not delivered yet, including those accepted while the log is read back."""
        return len(self.pending) + len(self._early)

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
        """The events taken were not delivered: they stay first in line, unless the queue is
        above its bound (events accepted while they were being delivered): then the oldest go."""
        self._in_flight = 0
        excess = len(self.pending) - self.max_events
        if excess > 0:
            first, last = self.pending[0][0], self.pending[excess - 1][0]
            for _ in range(excess):
                self.pending.popleft()
            self._mark_done(first, last, excess)
            self._count_drops(excess)

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
        if self._rewrite and not compact and self._reactor.seconds() < self._retry_at:
            # The next try rewrites every pending event: the records meanwhile are in it.
            self._buffer = []
            return
        compact = (
            compact
            or self._rewrite
            or (self._file_done >= _COMPACT_MIN and self._file_done * 2 > self._file_events)
        )
        if compact:
            # Formatted in the pool's thread: a backlog is tens of megabytes of lines.
            write = functools.partial(_replace, self.path, list(self.pending), self._fsync)
            self._file_events, self._file_done = len(self.pending), 0
        else:
            write = functools.partial(_append, self.path, b"".join(self._buffer), self._fsync)
        self._buffer, self._rewrite = [], False
        try:
            await deferToThreadPool(self._reactor, self._pool, write)
        except OSError as exc:
            # A full disk or a lost mount: the events are still in memory, so the next flush
            # rewrites the whole log instead of appending to a file missing some records.
            # Said once when writing stops working and once when it works again, not at
            # every flush in between.
            self._rewrite = True
            self._retry_at = self._reactor.seconds() + REWRITE_RETRY
            if self._write_problem is None:
                log.error(
                    "notifications: cannot write {path}: {reason}; events are kept in memory"
                    " (up to maxevents) and written once it works again",
                    path=self.path,
                    reason=exc.strerror or str(exc),
                )
            self._write_problem = exc.strerror or str(exc)
            return
        if self._write_problem is not None:
            log.info("notifications: writing {path} works again", path=self.path)
            self._write_problem = None
