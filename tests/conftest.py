"""Shared fixtures: see tests/e2e/conftest.py for the running-server fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.python.threadpool import ThreadPool

from tests.threads import started_pool


@pytest.fixture
def thread_pool() -> Iterator[ThreadPool]:
    """A started pool of four threads: what a storage driver gets in the tests."""
    yield from started_pool("test-pool", 4)


@pytest.fixture
def one_thread_pool() -> Iterator[ThreadPool]:
    """A started pool of one thread: work queued behind a held thread waits, visibly."""
    yield from started_pool("test-one-thread", 1)
