"""
One process per queue file: an exclusive ``flock`` on ``<queue file>.lock``, taken at start-up
and held until the queue's last write at stop (a ``kill -9`` or a crash releases it with the
process).

Each process keeps its queue in memory and rewrites its file at stop, so two processes on one
file (two instances sharing a storage folder, whose ``<rootdirectory>/notifications`` is the
default ``queuedir``) lost the events of all but the last to stop, without a word.  A process
that finds the lock held refuses to start, naming the holder: the lock file holds the
holder's pid and host, written by the holder.

``flock`` rather than ``fcntl`` record locks: a record lock goes away as soon as the process
closes any descriptor of the file, and is not kept across twistd's fork into the background.
The lock file is left in place at stop: removing it would let a process that opened it just
before lock a file nobody else sees any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

SUFFIX = ".lock"


class QueueInUse(Exception):
    """The queue file is locked by another live process; `str` is one line naming it."""

    def __init__(self, queue: str, holder: str) -> None:
        super().__init__(
            f"the notifications queue {queue} is in use by another process{holder}: give"
            " each instance its own [notifications] queuedir"
        )
        self.queue = queue
        self.holder = holder


def lock_path(queue: str) -> str:
    """The lock file of the queue file ``queue`` (unique: a queue file ends in ``.log``)."""
    return queue + SUFFIX


def _holder(fd: int) -> str:
    """`` (pid N)``, or `` (pid N on HOST)`` when the holder runs elsewhere (a shared
    network folder), from what the holder wrote; empty when it wrote nothing yet."""
    try:
        words = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    if not words or not words[0].isdigit():
        return ""
    host = words[1] if len(words) > 1 else None
    if host is None or host == socket.gethostname():
        return f" (pid {words[0]})"
    return f" (pid {words[0]} on {host})"


class QueueLock:
    """The lock of one queue file, held by this process (`take`) until `release`."""

    def __init__(self, queue: str, fd: int) -> None:
        self.queue = queue
        self._fd: int | None = fd
        self._written_by = 0  # the pid the lock file names

    @classmethod
    def take(cls, queue: str) -> QueueLock:
        """
        Lock ``queue`` for this process, at once or not at all: `QueueInUse` when another
        process holds it, `OSError` when its lock file cannot be opened.  (At start-up,
        before the reactor runs: these are a few system calls on a small file.)
        """
        fd = os.open(lock_path(queue), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise QueueInUse(queue, holder) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(queue, fd)
        lock.claim()
        return lock

    def claim(self) -> None:
        """
        Name this process in the lock file: at `take`, and again once twistd's fork into the
        background changed the pid (the lock itself goes with the open file, to the child).
        Nothing to do when it names this process already.
        """
        pid = os.getpid()
        if self._fd is None or self._written_by == pid:
            return
        with contextlib.suppress(OSError):  # the name is for the message only
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{pid} {socket.gethostname()}\n".encode(), 0)
            self._written_by = pid

    def release(self) -> None:
        """Let another process have the queue (after this one's last write)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock
