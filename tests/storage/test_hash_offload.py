"""Hashing uploads on worker threads: order, back-pressure, sharing the pool, errors."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from registry.api.digests import Digest, DigestingHasher
from registry.storage.hash_offload import HashThreads, OffloadedHasher

KiB = 1024


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=1, name="test-hash")
    pool.start()
    yield pool
    pool.stop()


def chunks(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


def expected(parts: list[bytes]) -> Digest:
    return Digest("sha256", hashlib.sha256(b"".join(parts)).hexdigest())


@pytest_twisted.ensureDeferred
async def test_digest_of_everything_fed_in_order(pool: ThreadPool) -> None:
    parts = chunks(50, 37 * KiB)
    lane = OffloadedHasher(DigestingHasher(), HashThreads(reactor, pool))
    for part in parts:
        waiter = lane.update(part)
        if waiter is not None:
            await waiter
    hasher = await lane.settle()
    assert hasher.digest() == expected(parts)


@pytest_twisted.ensureDeferred
async def test_a_full_queue_asks_the_feeder_to_wait(pool: ThreadPool) -> None:
    threads = HashThreads(reactor, pool, high_water=64 * KiB, low_water=16 * KiB)
    lane = OffloadedHasher(DigestingHasher(), threads)
    # Hold the only worker so nothing is hashed while the queue fills.
    gate = threading.Event()
    pool.callInThread(gate.wait)
    parts = chunks(4, 32 * KiB)
    waiters = [lane.update(part) for part in parts]
    assert waiters[0] is None and waiters[1] is None  # 64 KiB queued: at the mark, not over
    assert isinstance(waiters[2], Deferred) and isinstance(waiters[3], Deferred)
    assert not waiters[2].called
    gate.set()
    for waiter in waiters[2:]:
        assert waiter is not None
        await waiter
    assert (await lane.settle()).digest() == expected(parts)


@pytest_twisted.ensureDeferred
async def test_uploads_take_turns_on_a_small_pool(pool: ThreadPool) -> None:
    # One thread, slices of 64 KiB: three uploads of 1 MiB each all finish correctly.
    threads = HashThreads(reactor, pool, high_water=4 * 1024 * KiB, slice_bytes=64 * KiB)
    lanes = [OffloadedHasher(DigestingHasher(), threads) for _ in range(3)]
    data = [chunks(16, 64 * KiB) for _ in lanes]
    for index in range(16):
        for lane, parts in zip(lanes, data, strict=True):
            lane.update(parts[index])
    for lane, parts in zip(lanes, data, strict=True):
        assert (await lane.settle()).digest() == expected(parts)


class _BrokenHasher(DigestingHasher):
    def update(self, data: bytes) -> None:
        raise RuntimeError("the library failed")


@pytest_twisted.ensureDeferred
async def test_a_hashing_error_surfaces_at_settle(pool: ThreadPool) -> None:
    lane = OffloadedHasher(_BrokenHasher(), HashThreads(reactor, pool))
    lane.update(b"x" * 100)
    with pytest.raises(RuntimeError, match="the library failed"):
        await lane.settle()
    assert lane.update(b"more") is None  # further bytes are dropped, not queued
