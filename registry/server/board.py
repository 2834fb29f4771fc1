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
