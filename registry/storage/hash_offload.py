"""
Hashing an upload on a worker thread while the reactor thread reads the socket and writes.

Why: a push is CPU-bound on one core, and sha256 is the largest part of it.  With a hasher that
releases the GIL (`registry.api.digests.releases_gil`), the reactor thread receives and writes
chunk N+1 while a worker hashes chunk N, so the two halves of the work run on two cores.

Each upload is a *lane*: its chunks are hashed in order by at most one worker at a time, from a
pool shared by every upload and sized to the cores.  A worker gives its thread back after a
slice of bytes, so many concurrent uploads take turns instead of the first ones starving the
rest.  When more than ``high_water`` bytes wait to be hashed, `OffloadedHasher.update` returns a
Deferred and the upload's socket stays paused until the queue is down to ``low_water``: memory
per upload is bounded whatever the client's speed.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from registry.api.digests import DigestingHasher

MiB = 1024 * 1024


@attrs.frozen
class HashThreads:
    """Where upload hashing runs: the worker pool, and the reactor to report back to."""

    reactor: Any
    pool: ThreadPool
    # A few socket reads (1 MiB each) of slack: the hasher is faster than any client, so a
    # deeper queue only holds more memory per upload while the machine is busy (four
    # concurrent S3 pushes on one worker peaked 7 MiB lower with 2/1 than with 6/2).
    high_water: int = 2 * MiB
    low_water: int = 1 * MiB
    slice_bytes: int = 32 * MiB


class OffloadedHasher:
    """
    Feeds a `DigestingHasher` from the reactor thread and hashes on a worker.  Call `settle`
    before reading the hasher's digest or state: it waits for every queued byte.
    """

    def __init__(self, hasher: DigestingHasher, threads: HashThreads, batch: int = 0) -> None:
        """``batch``: how many bytes to queue before a worker is woken (`settle` hashes what
        is left).  Each wake-up is a thread hop that costs the reactor thread a lock handoff;
        a caller whose chunks are large and come fast (a cache fill) wakes one per batch."""
        self.hasher = hasher
        self._threads = threads
        self._batch = min(batch, threads.high_water)
        self._lock = threading.Lock()
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._running = False
        self._error: BaseException | None = None
        self._room_waiters: list[Deferred[None]] = []
        self._idle_waiters: list[Deferred[None]] = []
        self._wake_scheduled = False

    # Reactor thread -------------------------------------------------------------------------

    def update(self, data: bytes) -> Deferred[None] | None:
        """Queue ``data``; a Deferred means "stop feeding until this fires"."""
        waiter: Deferred[None] | None = None
        with self._lock:
            if self._error is not None:
                return None  # reported by settle()
            self._chunks.append(data)
            self._queued += len(data)
            start = not self._running and self._queued >= self._batch
            self._running = self._running or start
            if self._queued > self._threads.high_water:
                waiter = Deferred()
                self._room_waiters.append(waiter)
        if start:
            self._threads.pool.callInThread(self._work)
        return waiter

    async def settle(self) -> DigestingHasher:
        """The hasher, once everything queued is hashed; raises the hashing error if any."""
        with self._lock:
            waiter: Deferred[None] | None = None
            start = not self._running and bool(self._chunks)  # a batch not yet full
            self._running = self._running or start
            if self._running:
                waiter = Deferred()
                self._idle_waiters.append(waiter)
        if start:
            self._threads.pool.callInThread(self._work)
        if waiter is not None:
            await waiter
        if self._error is not None:
            raise self._error
        return self.hasher

    def _wake(self) -> None:
        with self._lock:
            self._wake_scheduled = False
            room: list[Deferred[None]] = []
            idle: list[Deferred[None]] = []
            if self._queued <= self._threads.low_water or not self._running:
                room, self._room_waiters = self._room_waiters, []
            if not self._running:
                idle, self._idle_waiters = self._idle_waiters, []
        for waiter in room + idle:
            waiter.callback(None)

    # Worker thread --------------------------------------------------------------------------

    def _schedule_wake(self) -> None:
        """Under the lock: ask the reactor thread to fire whichever waiters are due."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._threads.reactor.callFromThread(self._wake)

    def _work(self) -> None:
        budget = self._threads.slice_bytes
        while True:
            with self._lock:
                if not self._chunks:
                    self._running = False
                    if self._room_waiters or self._idle_waiters:
                        self._schedule_wake()
                    return
                if budget <= 0:
                    # Back of the queue: other uploads get the thread for a while.
                    self._threads.pool.callInThread(self._work)
                    return
                data = self._chunks.popleft()
            try:
                self.hasher.update(data)
            except Exception as exc:  # a broken library; the upload fails at settle()
                with self._lock:
                    self._error = exc
                    self._chunks.clear()
                    self._queued = 0
                    self._running = False
                    self._schedule_wake()
                return
            budget -= len(data)
            with self._lock:
                self._queued -= len(data)
                if self._room_waiters and self._queued <= self._threads.low_water:
                    self._schedule_wake()


async def all_hashed(hasher: DigestingHasher | OffloadedHasher) -> DigestingHasher:
    """The hasher with every byte given to it hashed (an `OffloadedHasher` waits for its
    queue), for its digest."""
    return await hasher.settle() if isinstance(hasher, OffloadedHasher) else hasher
