"""
The S3 writer's spooled segments do their file I/O in the thread pool, in order: a stub pool
runs the queued work only when the test says so, so nothing may touch the disk before that.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from registry.storage.s3._writer import _FileSegment


class StubPool:
    """A thread pool whose work runs when `run_all` is called (on the test's thread)."""

    def __init__(self) -> None:
        self.work: list[tuple[Callable[[bool, object], None], Callable[..., object], Any]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, object], None], func: Callable[..., object], *args: Any
    ) -> None:
        self.work.append((on_result, func, args))

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
    assert failures and failures[0].check(FileNotFoundError)


def test_a_discarded_segment_refuses_appends(tmp_path: Path) -> None:
    segment = _FileSegment(StubReactor(StubPool()), str(tmp_path))
    segment.discard()
    with pytest.raises(Exception, match="discarded"):
        segment.append(b"late")
