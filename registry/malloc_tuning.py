"""
Process memory: glibc malloc settings applied once at start-up, and giving freed heap pages
back to the kernel after large transfers.

Why any of this: blob bodies pass through the process as 1-2 MiB buffers (socket reads on a
push, file reads on a pull), allocated on one thread and often freed on another.  Measured with
bench/run.py and /proc/<pid>/smaps:

- glibc gives each thread its own arena, where freed buffers stay for reuse: peak RSS crept from
  74 to 87 MiB over a few pulls, one step per arena.  One arena fixes that (Python's own small
  objects do not use malloc arenas, so its lock is taken only for the large buffers).
- Left to itself, glibc adjusts its mmap and trim thresholds as buffers come and go; with pushes
  hashed on a worker thread it kept returning the top of the heap and faulting it back in (about
  20,000 page faults per GiB pushed).  Fixed thresholds keep the buffers on the heap.  Putting
  them in mmap instead (a threshold below their size) kept RSS lowest but cost 65% more CPU per
  GiB pushed, in page faults and zeroing.
- The heap only shrinks from its top, so after a mix of pushes and pulls free buffers in its
  middle stayed resident (heap 12 MiB idle, 30-34 MiB after).  `HeapTrimmer` calls
  ``malloc_trim`` shortly after a large transfer ends, which returns those pages too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MiB = 1024 * 1024


@functools.cache
def _libc() -> Any:
    """Looked up once: find_library runs ldconfig in a subprocess."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def limit_malloc_arenas(
    arenas: int = 1, mmap_threshold: int = 4 * MiB, trim_threshold: int = 8 * MiB
) -> bool:
    """One arena, buffers below ``mmap_threshold`` on the heap; False where that is not glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_ARENA_MAX, arenas)
        and mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def release_startup_memory() -> None:
    """
    Once a process serves: collect start-up's garbage (import-time cycles, the configuration
    parsing's) and give the heap pages it freed back to the kernel.  Measured on an idle
    worker: 0.5-1 MiB of RSS; the call takes about a millisecond, once.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim_function: Callable[[int], int] = trim
    return trim_function


class HeapTrimmer:
    """
    Once requests have moved ``min_bytes`` since the last trim, trim the heap ``delay`` seconds
    later (in a worker thread: the call walks the free lists holding malloc's lock).  Several
    large requests close together share one trim.  Only requests of ``counted_bytes`` or more
    count: blob bodies pass through large buffers, manifests and small blobs do not.  The
    bytes add up across requests, because an upload sent as many PATCHes of a few MiB each
    would otherwise never reach ``min_bytes`` and its buffers would stay in the heap.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: ThreadPool,
        min_bytes: int = 16 * MiB,
        delay: float = 1.0,
        counted_bytes: int = 1 * MiB,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self.min_bytes = min_bytes
        self.delay = delay
        self.counted_bytes = counted_bytes
        self._moved = 0
        self._trim = trim if trim is not None else _malloc_trim()
        self._scheduled = False
        self.trims = 0

    def transferred(self, size: int) -> None:
        if self._trim is None or size < self.counted_bytes:
            return
        self._moved += size
        if self._moved < self.min_bytes or self._scheduled:
            return
        self._scheduled = True
        self._reactor.callLater(self.delay, self._run)

    def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        self._moved = 0

        def done(result: object) -> None:
            self._scheduled = False
            self.trims += 1

        deferToThreadPool(self._reactor, self._threadpool, trim, 0).addBoth(done)
