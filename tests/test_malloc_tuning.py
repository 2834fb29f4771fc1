"""Heap trimming after large transfers: when it runs, and that glibc's call is reachable."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock

from registry.malloc_tuning import HeapTrimmer, MiB, _malloc_trim


class ClockReactor(Clock):
    """A Clock that also takes results back from "threads" (`deferToThreadPool` needs it)."""

    def callFromThread(self, func: Callable[..., object], *args: Any) -> None:
        func(*args)


class InlinePool:
    """A thread pool that runs the work at once: the trim's timing is what is tested here."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, object], None], func: Callable[..., object], *args: Any
    ) -> None:
        on_result(True, func(*args))


class RecordingTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def trimmer_with(trim: RecordingTrim) -> tuple[HeapTrimmer, ClockReactor]:
    clock = ClockReactor()
    pool: Any = InlinePool()
    return HeapTrimmer(clock, pool, min_bytes=16 * MiB, delay=0.05, trim=trim), clock


def test_only_large_transfers_trim_and_close_ones_share_a_trim() -> None:
    trim = RecordingTrim()
    trimmer, clock = trimmer_with(trim)
    for _ in range(100):
        trimmer.transferred(MiB - 1)  # manifests, small blobs: no trim
    assert clock.getDelayedCalls() == []
    trimmer.transferred(64 * MiB)
    trimmer.transferred(1024 * MiB)
    assert len(clock.getDelayedCalls()) == 1  # close ones share a trim
    assert trim.calls == []  # later, not while the request finishes
    clock.advance(0.05)
    assert trim.calls == [0]
    trimmer.transferred(32 * MiB)
    clock.advance(0.05)
    assert trim.calls == [0, 0]
    assert trimmer.trims == 2


def test_many_chunks_of_one_upload_add_up_to_a_trim() -> None:
    trim = RecordingTrim()
    trimmer, clock = trimmer_with(trim)
    for _ in range(3):
        trimmer.transferred(4 * MiB)
    assert clock.getDelayedCalls() == []  # 12 MiB so far
    trimmer.transferred(4 * MiB)
    clock.advance(0.05)
    assert trim.calls == [0]
    for _ in range(3):
        trimmer.transferred(4 * MiB)  # counted again from zero after the trim
    clock.advance(1.0)
    assert trim.calls == [0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_trim_is_found() -> None:
    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
