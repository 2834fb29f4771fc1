"""
Whether the process that served a cache before this one saved its index at its end.

A single instance copies its index to storage every ``flush_interval``
(`registry.proxy.stored`).  Content cached after the last copy and before a ``kill -9``, a
crash or the OOM killer is in storage but not in the copy read back at the next start: it
would hold its space for good, counted by neither ``max_size`` nor eviction, unless it is
served again.  So while a process serves a cache, ``index.open`` sits beside the saved index;
the save at a clean stop removes it.  Found at start, it says the last save may have missed
something, and the cache counts what its storage holds into the index it read back
(`registry.proxy.cache.ProxyCache.load_state`).

The marker is one small object, written once per start: on S3 too, where nothing can be
appended.  When it cannot be written (a full disk), the cache serves without it and writes
it at a later flush; until then a crash goes unnoticed, as it did before the marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from registry.storage.driver import IStorageDriver, PathNotFoundError

MARKER = "index.open"


async def found(driver: IStorageDriver, folder: str) -> bool:
    """Whether a process before this one left ``folder``'s marker (it never saved at a stop)."""
    try:
        await driver.stat(f"{folder}/{MARKER}")
    except PathNotFoundError:
        return False
    return True


async def write(driver: IStorageDriver, folder: str) -> None:
    """This process serves the cache (its host and pid, for a person reading the storage)."""
    about = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    await driver.put_content(f"{folder}/{MARKER}", json.dumps(about).encode())


async def remove(driver: IStorageDriver, folder: str) -> None:
    """The index was saved whole at a clean stop."""
    with contextlib.suppress(PathNotFoundError):
        await driver.delete(f"{folder}/{MARKER}")
