"""
How every process's log file rotates (a single ``twistd registry``, the supervisor, each
worker), on the standard library alone: the supervisor, which needs no Twisted, rotates its
file the same way.

Names as twistd's: FILE.1 is the newest rotated file, FILE.2 the one before, and so on up to
FILE.KEEP; the oldest beyond that is removed.  A rotation looks at those KEEP names only, never
at the folder (twistd lists every FILE.* and renames each one, on the reactor thread: with
thousands of files left by an unbounded history, one rotation took most of a second), so its
cost does not grow with what else lies there.

A rotation finds FILE already moved away when an external tool (logrotate) renamed it, and
then only opens a new FILE: the tool numbered the old one itself.
"""

from __future__ import annotations

import contextlib
import errno
import os

# What a log file rotates at and how many rotated files it keeps, unless the configuration
# says otherwise (``[log] rotatesize``, ``[log] rotatekeep``): 110 MiB at most per process.
DEFAULT_SIZE = 10 * 1024 * 1024
DEFAULT_KEEP = 10
# The most rotated files kept per log file: a rotation renames each of them, on the thread
# that writes the log (a worker's reactor); a thousand renames take milliseconds.
MAX_KEEP = 1000


def shift(path: str, keep: int) -> None:
    """FILE.KEEP removed, FILE.N renamed FILE.N+1 (N < KEEP), FILE renamed FILE.1.  Raises
    OSError when FILE cannot be renamed (the caller keeps writing where it did)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(f"{path}.{keep}")
    for number in range(keep - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}.{number}", f"{path}.{number + 1}")
    os.rename(path, f"{path}.1")


def moved_away(path: str, fd: int) -> bool:
    """Whether ``path`` no longer names the file open as ``fd``: renamed or removed by another
    program (logrotate; its ``create`` puts a new, empty file there)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: rotate as usual
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino)


def rotate(path: str, keep: int, fd: int) -> None:
    """Make room for a new FILE (the caller opens it): `shift`, unless ``path`` was moved away
    from ``fd`` already."""
    if not moved_away(path, fd):
        shift(path, keep)


def describe(exc: OSError) -> str:
    """``EACCES (Permission denied)``: how the log lines name an error."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{code} ({exc.strerror})" if exc.strerror else code
