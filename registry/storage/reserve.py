"""
Room kept on a filesystem storage for a garbage collection on a full disk.

A collector writes a few small files before it deletes anything (its run marker, beside each
blob a ``doomed`` file: `registry.storage.gcguard`), so on a disk filled to its last block it
could not start, and a full disk is when it is needed most.  So the registry keeps
``txregistry/gc/reserve``, a file of `RESERVE_SIZE` bytes: a collector that finds the disk full
removes it and starts, and the file is written back once there is room again (at the end of a
collection, and when the registry starts).  Only for the filesystem driver: an S3 bucket does
not fill up.
"""

from __future__ import annotations

import contextlib

from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageError

RESERVE = f"{layout.OWN}/gc/reserve"
# Far more than a collection writes before its first delete frees a blob's space.
RESERVE_SIZE = 1024 * 1024


async def keep_reserve(driver: IStorageDriver) -> None:
    """Write the reserve if it is missing or was used; a full disk leaves it so (said nowhere:
    the next collection or start tries again)."""
    try:
        if (await driver.stat(RESERVE)).size >= RESERVE_SIZE:
            return
    except PathNotFoundError:
        pass
    with contextlib.suppress(StorageError):
        await driver.put_content(RESERVE, bytes(RESERVE_SIZE))


async def release_reserve(driver: IStorageDriver) -> bool:
    """Give the reserve's room back to the disk now; whether there was any.  It is replaced by
    an empty file rather than deleted: a delete may free the space only later (the filesystem
    driver empties its trash on a thread), a replace frees the old file's blocks at once."""
    try:
        if (await driver.stat(RESERVE)).size == 0:
            return False
    except PathNotFoundError:
        return False
    await driver.put_content(RESERVE, b"")
    return True
