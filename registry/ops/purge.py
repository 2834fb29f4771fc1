"""
Purging abandoned uploads, as registry:2 does (``uploadpurging``): every ``interval``, remove
uploads started more than ``age`` ago.  Without it, clients that give up mid-push leave data in
``_uploads`` forever.  On drivers with staged writes (S3), it also discards the staged blob
writes of pushes whose process was killed mid-body (incomplete multipart uploads at a blob's
key, invisible to readers), older than the same age.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

from twisted.logger import Logger

from registry.storage import layout
from registry.storage.catalog import walk_folders
from registry.storage.driver import (
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
    a valid name), not following symbolic links.
    """
    under = path.removeprefix(layout.REPOSITORIES).lstrip("/")
    async for name, children in walk_folders(driver, under):
        if name and "_uploads" in children:
            yield f"{layout.repository(name)}/_uploads"


def _parse_started(text: str) -> float | None:
    try:
        value = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


async def purge_uploads(driver: IStorageDriver, age: float, now: float) -> int:
    """Delete uploads older than ``age`` seconds; returns how many were removed."""
    removed = 0
    async for folder in upload_folders(driver):
        try:
            upload_ids = await driver.list(folder)
        except PathNotFoundError:
            continue
        for upload_id in upload_ids:
            upload = f"{folder}/{upload_id}"
            try:
                started = _parse_started((await driver.get_content(f"{upload}/startedat")).decode())
            except (PathNotFoundError, NotAFileError, UnicodeDecodeError):
                try:
                    started = (await driver.stat(upload)).modified
                except PathNotFoundError:
                    continue
            if started is None or now - started < age:
                continue
            try:
                await driver.delete(upload)
            except PathNotFoundError:
                continue
            removed += 1
            log.info("purged abandoned upload {upload}", upload=upload)
    if IStagedWrites.providedBy(driver):
        staged = await driver.abort_stale_writes(layout.BLOBS, age, now)
        if staged:
            log.info("purged {count} abandoned staged blob writes", count=staged)
        # Unfinished writes of upload data no upload refers to any more: a request still
        # writing when its upload was cancelled, or whose state write failed.  An upload's
        # data writes start after the upload, so one older than ``age`` belongs to an upload
        # removed above (or gone already).
        unreferenced = await driver.abort_stale_writes(layout.REPOSITORIES, age, now)
        if unreferenced:
            log.info("purged {count} abandoned upload data writes", count=unreferenced)
        removed += staged + unreferenced
    return removed
