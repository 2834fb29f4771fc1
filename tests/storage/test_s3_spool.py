"""
The S3 writer's spooled segments do their file I/O in the thread pool, in order: a stub pool
runs the queued work only when the test says so, so nothing may touch the disk before that.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from registry.storage.driver import StorageError, StorageFull
from registry.storage.s3 import S3Driver
from registry.storage.s3._writer import SPOOL_BACKLOG, _FileSegment
from tests.storage.s3front import RecordingFront, s3_front  # noqa: F401 - the fixture
from tests.storage.s3server import S3Server
from tests.storage.test_driver_s3 import settings_for

MIB = 1024 * 1024


class StubPool:
    """A thread pool whose work runs when `run_all` is called (on the test's thread)."""

    def __init__(self) -> None:
        self.work: list[tuple[Callable[[bool, object], None], Callable[..., object], Any]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, object], None], func: Callable[..., object], *args: Any
    ) -> None:
        self.work.append((on_result, func, args))

    def release(self) -> None:
        """From now on run work as it comes (on the reactor thread: small test files)."""
        self.run_all()
        self.callInThreadWithCallback = self._run_now  # type: ignore[method-assign]

    def _run_now(
        self, on_result: Callable[[bool, object], None], func: Callable[..., object], *args: Any
    ) -> None:
        self.work.append((on_result, func, args))
        self.run_all()

    def run_all(self) -> int:
        ran = 0
        while self.work:
            on_result, func, args = self.work.pop(0)
            ran += 1
            try:
                result = func(*args)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)
        return ran


class StubReactor:
    def __init__(self, pool: StubPool) -> None:
        self.pool = pool

    def getThreadPool(self) -> StubPool:
        return self.pool

    def callFromThread(self, func: Callable[..., object], *args: Any) -> None:
        func(*args)


def test_appends_reach_the_disk_only_in_the_pool_and_in_order(tmp_path: Path) -> None:
    pool = StubPool()
    segment = _FileSegment(StubReactor(pool), str(tmp_path))
    segment.append(b"first,")
    segment.append(b"second")
    assert segment.size == 12
    assert segment._file is None and len(pool.work) == 1  # create queued, nothing done
    read = Deferred.fromCoroutine(segment.read())
    assert not read.called
    assert pool.run_all() == 4  # create, two writes, read: one at a time, in order
    assert read.result == b"first,second"
    segment.discard()
    assert pool.run_all() == 1 and segment._file is None


def test_ready_waits_for_the_writes_then_the_producer_has_every_byte(tmp_path: Path) -> None:
    pool = StubPool()
    segment = _FileSegment(StubReactor(pool), str(tmp_path))
    segment.append(b"x" * 1000)
    ready = Deferred.fromCoroutine(segment.ready())
    assert not ready.called
    pool.run_all()
    assert ready.called and ready.result is None
    producer = segment.producer()
    assert producer.length == 1000
    producer.stopProducing()
    segment.discard()
    pool.run_all()


def test_a_disk_failure_is_reported_once_and_later_work_is_skipped(tmp_path: Path) -> None:
    pool = StubPool()
    segment = _FileSegment(StubReactor(pool), str(tmp_path / "missing"))
    segment.append(b"lost")
    ready = Deferred.fromCoroutine(segment.ready())
    assert pool.run_all() == 1  # the create failed; the write and flush never ran
    failures: list[Failure] = []
    ready.addErrback(failures.append)
    assert failures and failures[0].check(StorageError)
    assert str(failures[0].value) == (
        f"spooling an S3 upload part in {tmp_path / 'missing'}: No such file or directory"
    )


def test_a_segment_whose_write_failed_still_closes_its_file_when_discarded(
    tmp_path: Path,
) -> None:
    """The disk filled up mid-segment: later writes are skipped, but the close is not (an
    unlinked part file left open keeps its blocks until the process ends)."""
    pool = StubPool()
    segment = _FileSegment(StubReactor(pool), str(tmp_path))
    pool.run_all()
    file = segment._file
    assert file is not None

    def full(data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    segment._write = full  # type: ignore[method-assign]
    segment.append(b"refused")
    segment.append(b"skipped")
    ready = Deferred.fromCoroutine(segment.ready())
    failures: list[Failure] = []
    ready.addErrback(failures.append)
    assert pool.run_all() == 1  # the first write failed; the second and the flush never ran
    assert failures and failures[0].check(StorageFull)  # a 503 that says why
    segment.discard()
    assert pool.run_all() == 1
    assert segment._file is None and file.closed


def test_a_discarded_segment_refuses_appends(tmp_path: Path) -> None:
    segment = _FileSegment(StubReactor(StubPool()), str(tmp_path))
    segment.discard()
    with pytest.raises(Exception, match="discarded"):
        segment.append(b"late")


class HeldPoolReactor:
    """The real reactor, with a `StubPool` as its thread pool: the disk is "slow" at will."""

    def __init__(self, pool: StubPool) -> None:
        self.pool = pool

    def getThreadPool(self) -> StubPool:
        return self.pool

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


@pytest_twisted.ensureDeferred
async def test_writes_wait_while_spooled_bytes_wait_for_the_disk(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    tmp_path: Path,
) -> None:
    """
    A spool disk slower than the client makes ``write`` ask its caller to wait once
    ``SPOOL_BACKLOG`` bytes are still on their way to the files, instead of keeping them in
    memory; once the disk catches up the writer takes more, and every byte reaches S3.
    """
    pool = StubPool()
    settings = settings_for(
        s3_server, regionendpoint=s3_front.endpoint, chunksize=5 * MIB, spooldirectory=tmp_path
    )
    driver = S3Driver(HeldPoolReactor(pool), settings)
    chunks = [os.urandom(MIB) for _ in range(7)]
    try:
        writer = await driver.writer("spool/held/data")
        at_bound = SPOOL_BACKLOG // MIB
        assert [writer.write(chunk) for chunk in chunks[:at_bound]] == [None] * at_bound
        waiting = writer.write(chunks[at_bound])
        assert isinstance(waiting, Deferred) and not waiting.called
        assert len(pool.work) == 1  # nothing written yet: the file is still being created
        for _ in range(1000):  # the disk catches up, one pool job per reactor turn
            if waiting.called:
                break
            pool.run_all()
            await deferLater(reactor, 0, lambda: None)
        assert waiting.called
        pool.release()
        for chunk in chunks[at_bound + 1 :]:
            pending = writer.write(chunk)
            if pending is not None:
                await pending
        await writer.commit()
        assert await driver.get_content("spool/held/data") == b"".join(chunks)
    finally:
        await driver.close()
    asked = [(seen.method, sorted(seen.query)) for seen in s3_front.on_key("spool/held/data")]
    assert asked[:4] == [
        ("POST", ["uploads"]),
        ("PUT", ["partNumber", "uploadId"]),
        ("PUT", ["partNumber", "uploadId"]),
        ("POST", ["uploadId"]),
    ]
    assert not any(seen.is_copy for seen in s3_front.seen)
