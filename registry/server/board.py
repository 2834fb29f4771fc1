"""
The accept board's layout, shared by the supervisor and its workers (`registry.server.balance`
says what it is for).  A module of its own, with no Twisted, for the supervisor's program.

One slot per worker: its open connections, and when it last said it was alive
(``CLOCK_MONOTONIC``, which every process on the machine shares).  A slot is written by its
own worker only (and cleared by the supervisor once that worker has exited).
"""

from __future__ import annotations

import os
import struct

SLOT = struct.Struct("<qd")
# How old a heartbeat may be before its worker counts as stuck (or gone).
STALE = 2.0


def available() -> bool:
    """Whether this platform can share a board (Linux's memfd)."""
    return hasattr(os, "memfd_create")


def create_board(workers: int) -> int:
    """A zeroed board for ``workers``: a descriptor to hand each worker."""
    fd = os.memfd_create("txregistry-accept-board", os.MFD_CLOEXEC)
    os.ftruncate(fd, workers * SLOT.size)
    return fd


def clear_slot(fd: int, slot: int) -> None:
    """Forget a worker that exited: its slot reads as long dead."""
    os.pwrite(fd, SLOT.pack(0, 0.0), slot * SLOT.size)


def cleared(fd: int, slot: int) -> bool:
    """
    Whether the slot is clear: its worker has not started listening, has stopped (it clears
    its own slot as it stops accepting, to drain), or is gone.
    """
    _connections, heartbeat = SLOT.unpack(os.pread(fd, SLOT.size, slot * SLOT.size))
    return bool(heartbeat == 0.0)


def silent_for(fd: int, slot: int, now: float) -> float | None:
    """
    How long the worker in ``slot`` has not renewed its heartbeat, when that is longer than
    `STALE` (``now``: ``time.monotonic()``); None while it renews it, or while its slot is
    clear (not listening yet, draining, or gone).
    """
    _connections, heartbeat = SLOT.unpack(os.pread(fd, SLOT.size, slot * SLOT.size))
    if heartbeat == 0.0 or now - heartbeat <= STALE:
        return None
    return now - float(heartbeat)
