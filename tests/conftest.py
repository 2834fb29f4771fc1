"""Shared fixtures: see tests/e2e/conftest.py for the running-server fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.python.threadpool import ThreadPool


@pytest.fixture
def one_thread_pool() -> Iterator[ThreadPool]:
    """A started pool of one thread: work queued behind a held thread waits, visibly."""
    pool = ThreadPool(minthreads=1, maxthreads=1, name="test-one-thread")
    pool.start()
    yield pool
    pool.stop()
