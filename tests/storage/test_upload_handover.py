"""
The hasher hand-over between the requests of one upload: claims, parking, take-over, recording
and flushing, first on their own (stub settle and record whose results the test releases), then
through an `UploadStore` over `MemoryDriver`.
"""

from __future__ import annotations

import hashlib

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from registry.api.digests import Digest
from registry.api.errors import RANGE_INVALID, RegistryError
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import PathNotFoundError, WriteRemoved
from registry.storage.memory import MemoryDriver
from registry.storage.upload_handover import HasherHandover
from registry.storage.uploads import INLINE_ALGORITHM, UploadStore
from tests.synchronous import run_now

KEY = ("repo", "u1")


@attrs.define
class Steps:
    """Settling and recording that finish when the test says so."""

    settling: list[Deferred[str]] = attrs.Factory(list)
    recorded: list[tuple[str, str]] = attrs.Factory(list)
    fail_record: bool = False

    async def settle(self, parked: str) -> str:
        waiter: Deferred[str] = Deferred()
        self.settling.append(waiter)
        return await waiter

    async def record(self, parked: str, settled: str) -> None:
        if self.fail_record:
            raise OSError("disk full")
        self.recorded.append((parked, settled))


def handover(steps: Steps) -> HasherHandover[str, str]:
    return HasherHandover(steps.settle, steps.record)


def test_one_writer_at_a_time() -> None:
    claims = handover(Steps())
    assert claims.claim(KEY)
    assert not claims.claim(KEY)
    assert claims.claim(("repo", "u2"))  # another upload is independent
    claims.release(KEY)
    claims.release(KEY)  # idempotent
    assert claims.claim(KEY)


def test_a_parked_hasher_is_recorded_once_settled_and_waiters_wait_for_that() -> None:
    steps = Steps()
    claims = handover(steps)
    claims.park(KEY, "appender-1")
    assert claims.is_parked(KEY)
    waiting = Deferred.fromCoroutine(claims.recorded(KEY))
    flushed = Deferred.fromCoroutine(claims.flush())
    assert not waiting.called and not flushed.called
    steps.settling[0].callback("hasher-1")
    assert steps.recorded == [("appender-1", "hasher-1")]
    assert waiting.called and flushed.called
    assert not claims.is_parked(KEY)


def test_the_next_request_takes_the_hasher_over_without_waiting_and_nothing_is_recorded() -> None:
    steps = Steps()
    claims = handover(steps)
    claims.park(KEY, "appender-1")
    assert claims.take_over(KEY) == "appender-1"
    assert not claims.is_parked(KEY)
    assert Deferred.fromCoroutine(claims.recorded(KEY)).called  # no wait on one's own hashing
    steps.settling[0].callback("hasher-1")
    assert steps.recorded == []  # the new owner records its own state later
    assert claims.take_over(KEY) is None


@pytest.mark.expect_log(r"disk full")
def test_a_failed_recording_is_logged_and_waiters_go_on() -> None:
    steps = Steps(fail_record=True)
    claims = handover(steps)
    claims.park(KEY, "appender-1")
    waiting = Deferred.fromCoroutine(claims.recorded(KEY))
    logged: list[str] = []

    def observe(event: dict[str, object]) -> None:
        if "log_failure" in event:
            logged.append(str(event.get("log_format")))

    globalLogPublisher.addObserver(observe)
    try:
        steps.settling[0].callback("hasher-1")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert waiting.called and waiting.result is None
    assert logged and "re-hashes the stored data" in logged[0]


def test_a_hasher_already_settled_is_recorded_at_once() -> None:
    recorded: list[tuple[str, str]] = []

    async def settle(parked: str) -> str:
        return "hasher"

    async def record(parked: str, settled: str) -> None:
        recorded.append((parked, settled))

    claims: HasherHandover[str, str] = HasherHandover(settle, record)
    claims.park(KEY, "appender")
    assert recorded == [("appender", "hasher")]
    assert not claims.is_parked(KEY)
    assert Deferred.fromCoroutine(claims.recorded(KEY)).called


# Through the store, over the in-memory driver.


def sha256(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


@pytest.fixture
def store() -> UploadStore:
    driver = MemoryDriver()
    return UploadStore(driver, BlobStore(driver), state_after_answer=True)


def test_a_second_request_on_an_upload_being_written_gets_416(store: UploadStore) -> None:
    run_now(_second_request_gets_416(store))


async def _second_request_gets_416(store: UploadStore) -> None:
    upload = await store.start("repo")
    first = await store.open("repo", upload)
    with pytest.raises(RegistryError) as info:
        await store.open("repo", upload)
    assert info.value.code is RANGE_INVALID
    first.write(b"abc")
    await first.close()
    again = await store.open("repo", upload, start=3)
    assert again.size == 3
    await again.close()


def test_answered_requests_leave_their_state_at_their_offset(store: UploadStore) -> None:
    run_now(_answered_requests_leave_their_state(store))


async def _answered_requests_leave_their_state(store: UploadStore) -> None:
    upload = await store.start("repo")
    chunks = [b"a" * 1000, b"b" * 500]
    offset = 0
    for chunk in chunks:
        appender = await store.open("repo", upload, start=offset)
        appender.write(chunk)
        await appender.close()
        offset += len(chunk)
    await store.flush()
    states = await store.driver.list(layout.upload_hashstates("repo", upload, INLINE_ALGORITHM))
    assert states == ["1500"]  # the one the last request reached; the earlier one dropped
    appender = await store.open("repo", upload, start=1500)
    assert await store.commit(appender, sha256(b"".join(chunks))) == 1500


class _CancelledElsewhere(MemoryDriver):
    """A driver shared with another process that cancels ``victim`` just before this one
    writes the upload's hash state (the other process's DELETE landing in between)."""

    victim: tuple[str, str] | None = None

    async def put_content(self, path: str, content: bytes) -> None:
        if self.victim is not None and "hashstates" in path:
            name, upload = self.victim
            self.victim = None
            other = UploadStore(self, BlobStore(self))
            await other.cancel(name, upload)
        await super().put_content(path, content)


def test_a_state_saved_after_another_process_cancelled_the_upload_leaves_nothing() -> None:
    """The state written after the folder went would make part of the upload's folder again
    (kept until the purge), and the request would say its bytes were kept: removed again, and
    the request ends as one whose upload was removed."""
    driver = _CancelledElsewhere()
    store = UploadStore(driver, BlobStore(driver), state_after_answer=False)
    run_now(_state_saved_after_a_cancel(store, driver))


async def _state_saved_after_a_cancel(store: UploadStore, driver: _CancelledElsewhere) -> None:
    upload = await store.start("repo")
    appender = await store.open("repo", upload)
    appender.write(b"abc" * 1000)
    driver.victim = ("repo", upload)
    with pytest.raises(WriteRemoved):
        await appender.close()
    assert driver.victim is None  # the cancel did land in between
    with pytest.raises(PathNotFoundError):
        await driver.list(layout.upload_dir("repo", upload))
