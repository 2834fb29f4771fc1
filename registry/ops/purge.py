"""
Purging abandoned uploads, as registry:2 does (``uploadpurging``): every ``interval``, remove
uploads idle for longer than ``age``: since their start and since their data's last write, as
the driver accounts for its writes (`IStorageDriver.write_activity`), and never while a
request writes them.  Without it, clients that give up mid-push leave data in
``_uploads`` forever.  On drivers with staged writes (S3), it also discards the unfinished
writes nothing will finish (incomplete multipart uploads, invisible to readers), older than
the same age: at a blob's key those of pushes or copies whose process was killed mid-write,
below ``repositories/`` those of no upload kept (a process killed mid-request, a request
still writing when its upload was removed).  The driver knows which of them a writer is at
work on (S3: the write's mark or lease) and keeps those, and the uploads kept here keep
what they will continue from.

On a filesystem, the folders a purged upload leaves empty go too: its ``_uploads`` folder, its
repository's folder when that held nothing else (no ``_manifests``, no ``_layers``, no
repository below it), and so on up to ``repositories/``.  registry:2 removes the upload's own
folder only, so every push to a new name that was abandoned leaves two folders behind for good,
and a client can make as many as it makes POSTs.  Only empty folders are removed, each with
``rmdir`` (never a recursive delete): what a push to that name writes meanwhile is never lost.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

from twisted.logger import Logger

from registry.storage import layout
from registry.storage.catalog import walk_folders
from registry.storage.driver import (
    IEmptyFolders,
    IStagedWrites,
    IStorageDriver,
    NotAFileError,
    PathNotFoundError,
)

log = Logger()


async def upload_folders(
    driver: IStorageDriver, path: str = layout.REPOSITORIES
) -> AsyncIterator[str]:
    """
    Every ``_uploads`` folder below ``path`` (``repositories/`` or a folder in it), found by
    the catalog's walk: iterative, bounded by the name grammar (uploads only ever start under
    a valid name), not following symbolic links, holding a bounded number of listings however
    many repositories there are.
    """
    under = path.removeprefix(layout.REPOSITORIES).lstrip("/")
    async for name, children in walk_folders(driver, under):
        if name and "_uploads" in children:
            yield f"{layout.repository(name)}/_uploads"


# How far ahead of this host's clock a ``startedat`` may be (another host's clock).
_CLOCK_SKEW = 300.0


def _parse_started(text: str) -> float | None:
    try:
        value = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


async def _upload_exists(driver: IStorageDriver, path: str) -> bool:
    """Whether ``path`` is the data of an upload that is there (its ``startedat`` is)."""
    folder, _, name = path.rpartition("/")
    if name != layout.UPLOAD_DATA or folder.rpartition("/")[0].rpartition("/")[2] != "_uploads":
        return False
    try:
        await driver.stat(f"{folder}/startedat")
    except (PathNotFoundError, NotAFileError):
        return False
    return True


async def purge_uploads(driver: IStorageDriver, age: float, now: float) -> int:
    """Delete uploads idle for longer than ``age`` seconds; returns how many were removed."""
    removed = 0
    folders = IEmptyFolders(driver, None)
    async for folder in upload_folders(driver):
        try:
            upload_ids = await driver.list(folder)
        except PathNotFoundError:
            upload_ids = []
        kept = 0
        for upload_id in upload_ids:
            upload = f"{folder}/{upload_id}"
            try:
                started = _parse_started((await driver.get_content(f"{upload}/startedat")).decode())
            except (PathNotFoundError, NotAFileError, UnicodeDecodeError):
                started = None
            if started is not None and started > now + _CLOCK_SKEW:
                started = None  # a date to come (a host's clock ahead, junk) is no date
            try:
                if started is None:  # no date, or one that does not parse: the folder's
                    started = (await driver.stat(upload)).modified
            except PathNotFoundError:
                continue
            idle = now - started
            # Abandoned means idle: a long upload still receiving data (tens of GB, a slow
            # link) is as old as its start but was written to a moment ago.  The driver
            # knows where a file's unfinished writes are (on S3 not at its path, which has
            # the data only once the upload is committed) and whether a request writes it
            # right now, which keeps it whatever the age.
            try:
                activity = await driver.write_activity(f"{upload}/{layout.UPLOAD_DATA}", now)
            except (PathNotFoundError, NotAFileError):
                activity = None
            if activity is not None:
                idle = min(idle, activity.idle)
            if idle < age or (activity is not None and activity.writing):
                kept += 1
                continue
            try:
                await driver.delete(upload)
            except PathNotFoundError:
                continue
            removed += 1
            log.info("purged abandoned upload {upload}", upload=upload)
        if folders is not None and not kept:
            # Empty now, or already (registry:2 leaves them): gone, where the driver keeps them.
            await folders.remove_empty_folders(folder, layout.REPOSITORIES)
    if IStagedWrites.providedBy(driver):
        staged = await driver.abort_stale_writes(layout.BLOBS, age, now)
        if staged:
            log.info("purged {count} abandoned staged blob writes", count=staged)
        # Unfinished writes of upload data no upload refers to any more: a request still
        # writing when its upload was cancelled, or killed before it recorded its write.
        # Those of an upload that is still there (kept above, or started since) stay while
        # it may continue them: however old, an upload's write is its data so far.

        async def owned(path: str) -> bool:
            return await _upload_exists(driver, path)

        unreferenced = await driver.abort_stale_writes(layout.REPOSITORIES, age, now, owned)
        if unreferenced:
            log.info("purged {count} abandoned upload data writes", count=unreferenced)
        removed += staged + unreferenced
    return removed
