"""
Setting disk space aside for an upload before its body arrives (Linux ``fallocate``).

Why: on ext4 and XFS, appending to a file allocates its blocks page by page as the data comes
(delayed-allocation bookkeeping for every 4 KiB written).  With the whole request reserved in
one call, a write only copies into the page cache, which takes kernel time off the thread that
also reads the socket.

``FALLOC_FL_KEEP_SIZE`` leaves the file's size alone: the size is how much of an upload was
received, so reserved space must not show as data.  Space reserved and not written (a client
that left early) is handed back by truncating the file to its size.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from typing import Any

_FALLOC_FL_KEEP_SIZE = 1


@functools.cache
def _fallocate() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


def reserve_space(fd: int, offset: int, length: int) -> bool:
    """
    Allocate ``length`` bytes from ``offset`` without changing the size.  False where the
    system or filesystem cannot (the writes then allocate as they go); OSError(ENOSPC) when
    the disk does not have the space.
    """
    function = _fallocate()
    if function is None or length <= 0:
        return False
    if function(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSPC, errno.EDQUOT):
        # ext4 keeps whatever it allocated before running out: give it back at once.
        release_unused(fd)
        raise OSError(code, os.strerror(code))
    return False  # EOPNOTSUPP and the like: a filesystem without preallocation


def release_unused(fd: int) -> None:
    """Give back what was reserved beyond the data (truncating to the current size)."""
    os.ftruncate(fd, os.fstat(fd).st_size)
