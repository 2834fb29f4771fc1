"""Heap trimming after large transfers: when it runs, and that glibc's call is reachable."""

from __future__ import annotations

import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from registry.malloc_tuning import HeapTrimmer, MiB, _malloc_trim
from tests.e2e.harness import sleep


@pytest.fixture
def pool(one_thread_pool: ThreadPool) -> ThreadPool:
    return one_thread_pool


class RecordingTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


@pytest_twisted.ensureDeferred
async def test_only_large_transfers_trim_and_close_ones_share_a_trim(pool: ThreadPool) -> None:
    trim = RecordingTrim()
    trimmer = HeapTrimmer(reactor, pool, min_bytes=16 * MiB, delay=0.05, trim=trim)
    for _ in range(100):
        trimmer.transferred(MiB - 1)  # manifests, small blobs: no trim
    await sleep(0.2)
    assert trim.calls == []
    trimmer.transferred(64 * MiB)
    trimmer.transferred(1024 * MiB)
    assert trim.calls == []  # later, not while the request finishes
    await sleep(0.2)
    assert trim.calls == [0]
    trimmer.transferred(32 * MiB)
    await sleep(0.2)
    assert trim.calls == [0, 0]
    assert trimmer.trims == 2


@pytest_twisted.ensureDeferred
async def test_many_chunks_of_one_upload_add_up_to_a_trim(pool: ThreadPool) -> None:
    trim = RecordingTrim()
    trimmer = HeapTrimmer(reactor, pool, min_bytes=16 * MiB, delay=0.05, trim=trim)
    for _ in range(3):
        trimmer.transferred(4 * MiB)
    await sleep(0.2)
    assert trim.calls == []  # 12 MiB so far
    trimmer.transferred(4 * MiB)
    await sleep(0.2)
    assert trim.calls == [0]
    for _ in range(3):
        trimmer.transferred(4 * MiB)  # counted again from zero after the trim
    await sleep(0.2)
    assert trim.calls == [0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_trim_is_found() -> None:
    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
