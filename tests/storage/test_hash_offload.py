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
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import PathNotFoundError
from registry.storage.hash_offload import HashThreads, OffloadedHasher
from registry.storage.memory import MemoryDriver
from registry.storage.uploads import UploadStore

KiB = 1024


@pytest.fixture
def pool(one_thread_pool: ThreadPool) -> ThreadPool:
    return one_thread_pool


@pytest.fixture
def held(pool: ThreadPool) -> Iterator[threading.Event]:
    """The pool's only thread, busy until the test sets the event (or the test ends)."""
    gate = threading.Event()
    pool.callInThread(gate.wait)
    yield gate
    gate.set()


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
async def test_a_full_queue_asks_the_feeder_to_wait(
    pool: ThreadPool, held: threading.Event
) -> None:
    threads = HashThreads(reactor, pool, high_water=64 * KiB, low_water=16 * KiB)
    lane = OffloadedHasher(DigestingHasher(), threads)
    # The only worker is held, so nothing is hashed while the queue fills.
    parts = chunks(4, 32 * KiB)
    waiters = [lane.update(part) for part in parts]
    assert waiters[0] is None and waiters[1] is None  # 64 KiB queued: at the mark, not over
    assert isinstance(waiters[2], Deferred) and isinstance(waiters[3], Deferred)
    assert not waiters[2].called
    held.set()
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


@pytest_twisted.ensureDeferred
async def test_next_request_waits_for_the_state_of_the_previous_one(
    pool: ThreadPool, held: threading.Event
) -> None:
    """
    `UploadAppender.close` returns once the bytes are stored; the hash state follows in the
    background.  Opening the upload again (the next PATCH, a GET, a cancel) waits for it.
    """
    driver = MemoryDriver()
    store = UploadStore(
        driver, BlobStore(driver), HashThreads(reactor, pool), state_after_answer=True
    )
    upload_id = await store.start("repo")
    appender = await store.open("repo", upload_id)
    # The only hashing thread is held: hashing is behind.
    data = os.urandom(100 * KiB)
    appender.write(data)
    await appender.close()
    state_path = layout.upload_hashstate("repo", upload_id, "sha256", len(data))
    with pytest.raises(PathNotFoundError):
        await driver.get_content(state_path)

    reopened = Deferred.fromCoroutine(store.open("repo", upload_id))
    size = Deferred.fromCoroutine(store.size("repo", upload_id))
    assert not reopened.called and not size.called
    held.set()
    appender = await reopened
    assert await size == len(data)
    assert await driver.get_content(state_path)  # recorded before the upload was reopened
    appender.write(b"tail")
    await store.commit(appender, expected([data, b"tail"]))
    assert await store.blobs.exists(expected([data, b"tail"])) is not None


@pytest_twisted.ensureDeferred
async def test_on_shared_storage_the_state_is_recorded_before_answering(
    pool: ThreadPool, held: threading.Event
) -> None:
    """Without ``state_after_answer`` (S3: another instance may take the next PATCH at once),
    closing waits for the hasher and the state."""
    driver = MemoryDriver()
    store = UploadStore(driver, BlobStore(driver), HashThreads(reactor, pool))
    upload_id = await store.start("repo")
    appender = await store.open("repo", upload_id)
    data = os.urandom(100 * KiB)
    appender.write(data)
    closed = Deferred.fromCoroutine(appender.close())
    assert not closed.called
    held.set()
    await closed
    state = await driver.get_content(
        layout.upload_hashstate("repo", upload_id, "sha256", len(data))
    )
    assert DigestingHasher("sha256", state).digest() == expected([data])
