"""Worker thread pools for tests, started and stopped around each use."""

from __future__ import annotations

from collections.abc import Iterator

from twisted.python.threadpool import ThreadPool


def started_pool(name: str, threads: int) -> Iterator[ThreadPool]:
    """For ``yield from`` in a fixture: a started pool, stopped when the fixture ends."""
    pool = ThreadPool(minthreads=1, maxthreads=threads, name=name)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()
