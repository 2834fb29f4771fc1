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
from registry.api.errors import RANGE_INVALID, RegistryError
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
async def test_a_batch_wakes_one_worker_and_settle_hashes_the_rest(
    pool: ThreadPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``batch``, a worker is woken only once that much is queued, not per chunk; what
    is left when the feeder is done is hashed by `settle`, in order."""
    wakes: list[object] = []
    real = pool.callInThread

    def counting(f: object, *args: object, **kwargs: object) -> None:
        wakes.append(f)
        real(f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pool, "callInThread", counting)
    threads = HashThreads(reactor, pool, high_water=1024 * KiB, low_water=256 * KiB)
    lane = OffloadedHasher(DigestingHasher(), threads, batch=256 * KiB)
    parts = chunks(10, 64 * KiB)
    for part in parts[:3]:
        assert lane.update(part) is None
    assert wakes == []  # 192 KiB queued: under the batch
    for part in parts[3:]:
        waiter = lane.update(part)
        if waiter is not None:
            await waiter
    assert 1 <= len(wakes) <= 3
    assert (await lane.settle()).digest() == expected(parts)


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
async def test_by_default_a_few_socket_reads_wait_at_most(
    pool: ThreadPool, held: threading.Event
) -> None:
    """
    An upload whose hashing is behind holds at most about 2 MiB waiting (two 1 MiB socket
    reads), then its socket is paused: what a busy machine costs in memory per push.
    """
    lane = OffloadedHasher(DigestingHasher(), HashThreads(reactor, pool))
    parts = chunks(3, 1024 * KiB)
    waiters = [lane.update(part) for part in parts]
    assert waiters[:2] == [None, None]
    assert isinstance(waiters[2], Deferred) and not waiters[2].called
    held.set()
    await waiters[2]
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


def _single_instance_store(pool: ThreadPool) -> tuple[MemoryDriver, UploadStore]:
    driver = MemoryDriver()
    store = UploadStore(
        driver, BlobStore(driver), HashThreads(reactor, pool), state_after_answer=True
    )
    return driver, store


async def _upload_holding(store: UploadStore, data: bytes) -> str:
    """A new upload after one request that sent ``data``; returns its id."""
    upload_id = await store.start("repo")
    appender = await store.open("repo", upload_id)
    appender.write(data)
    await appender.close()
    return upload_id


async def _recorded_digest(driver: MemoryDriver, upload_id: str, offset: int) -> Digest:
    """The digest of the hash state recorded at ``offset``."""
    state = await driver.get_content(layout.upload_hashstate("repo", upload_id, "sha256", offset))
    return DigestingHasher("sha256", state).digest()


@pytest_twisted.ensureDeferred
async def test_status_and_cancel_wait_for_the_state_of_the_previous_request(
    pool: ThreadPool, held: threading.Event
) -> None:
    """
    `UploadAppender.close` returns once the bytes are stored; the hash state follows in the
    background.  Asking for the upload's status waits for it.
    """
    driver, store = _single_instance_store(pool)
    # The only hashing thread is held: hashing is behind.
    data = os.urandom(100 * KiB)
    upload_id = await _upload_holding(store, data)
    with pytest.raises(PathNotFoundError):
        await _recorded_digest(driver, upload_id, len(data))

    size = Deferred.fromCoroutine(store.size("repo", upload_id))
    assert not size.called
    held.set()
    assert await size == len(data)
    # Recorded before the status was answered.
    assert await _recorded_digest(driver, upload_id, len(data)) == expected([data])
    await store.cancel("repo", upload_id)
    assert not await store.exists("repo", upload_id)


@pytest_twisted.ensureDeferred
async def test_next_request_takes_over_a_hasher_that_is_behind(
    pool: ThreadPool, held: threading.Event
) -> None:
    """
    The next PATCH does not wait for the previous one's hasher to drain: it goes on feeding
    the same hasher, and only the last request's state is recorded.
    """
    driver, store = _single_instance_store(pool)
    parts = chunks(3, 64 * KiB)
    upload_id = await _upload_holding(store, parts[0])
    for index, part in enumerate(parts[1:], start=1):
        reopened = Deferred.fromCoroutine(store.open("repo", upload_id, start=index * 64 * KiB))
        assert reopened.called, "the next request waited for the hasher"
        appender = await reopened
        appender.write(part)
        await appender.close()
    held.set()
    total = 3 * 64 * KiB
    assert await store.size("repo", upload_id) == total
    assert await _recorded_digest(driver, upload_id, total) == expected(parts)
    for offset in (64 * KiB, 128 * KiB):  # never recorded: the hasher was taken over
        with pytest.raises(PathNotFoundError):
            await _recorded_digest(driver, upload_id, offset)
    appender = await store.open("repo", upload_id)
    await store.commit(appender, expected(parts))
    assert await store.blobs.exists(expected(parts)) is not None


@pytest_twisted.ensureDeferred
async def test_a_refused_request_gives_the_hasher_back(
    pool: ThreadPool, held: threading.Event
) -> None:
    """A chunk at the wrong offset is refused; the state of the bytes before it is still recorded."""
    driver, store = _single_instance_store(pool)
    data = os.urandom(100 * KiB)
    upload_id = await _upload_holding(store, data)
    with pytest.raises(RegistryError) as refused:
        await store.open("repo", upload_id, start=5)
    assert refused.value.code is RANGE_INVALID
    held.set()
    assert await store.size("repo", upload_id) == len(data)
    assert await _recorded_digest(driver, upload_id, len(data)) == expected([data])
    appender = await store.open("repo", upload_id, start=len(data))
    appender.write(b"tail")
    await store.commit(appender, expected([data, b"tail"]))


@pytest_twisted.ensureDeferred
async def test_a_hasher_is_not_taken_over_when_the_data_changed_under_it(
    pool: ThreadPool, held: threading.Event
) -> None:
    """Stored data that no longer ends where the hasher does is hashed again from storage."""
    driver, store = _single_instance_store(pool)
    upload_id = await _upload_holding(store, b"hashed")
    # Something else appended to the data file (a repair by hand, another tool).
    writer = await driver.writer(layout.upload_data("repo", upload_id), append=True)
    writer.write(b" and more")
    await writer.close()
    held.set()
    appender = await store.open("repo", upload_id)
    assert appender.size == len(b"hashed and more")
    await store.commit(appender, expected([b"hashed and more"]))


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
    assert await _recorded_digest(driver, upload_id, len(data)) == expected([data])


@pytest_twisted.ensureDeferred
async def test_flush_waits_for_every_state_being_recorded(
    pool: ThreadPool, held: threading.Event
) -> None:
    """
    `UploadStore.flush` (what a stop awaits after draining) returns once the hash state of
    every answered request is in storage, so the next request after a restart resumes from it
    instead of hashing the stored bytes again.
    """
    driver, store = _single_instance_store(pool)
    data = [os.urandom(100 * KiB), os.urandom(50 * KiB)]
    uploads = [await _upload_holding(store, part) for part in data]
    flushed = Deferred.fromCoroutine(store.flush())
    assert not flushed.called  # the hashing thread is held: nothing is recorded yet
    held.set()
    await flushed
    for upload_id, part in zip(uploads, data, strict=True):
        assert await _recorded_digest(driver, upload_id, len(part)) == expected([part])
