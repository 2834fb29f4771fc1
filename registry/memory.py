"""
Process-wide memory settings, applied once at start-up.

Blob reads run in worker threads (4 MiB at a time) and glibc gives each thread its own malloc
arena, where freed 4 MiB buffers stay for reuse: measured with bench/run.py, the server's
peak RSS crept from 74 to 87 MiB over a few 1 GiB pulls, in steps, one per arena.  With a
single arena the same buffers are reused whichever thread frees them (77 MiB, and no change in
push or pull speed).  Python's own small objects do not use malloc arenas, so the lock this
adds is taken only for the large buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MiB = 1024 * 1024


def limit_malloc_arenas(
    arenas: int = 1, mmap_threshold: int = 4 * MiB, trim_threshold: int = 8 * MiB
) -> bool:
    """Ask glibc for at most ``arenas`` malloc arenas; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_ARENA_MAX, arenas)
        and mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
