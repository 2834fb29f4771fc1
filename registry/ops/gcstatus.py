"""
The last garbage collection, as a small JSON file the web UI shows
(``txregistry/gc/last.json``; registry:2 ignores the folder).  Written by ``txregistry gc`` at
the end of each run, dry runs included.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError

if TYPE_CHECKING:
    # The collector itself is for ``txregistry gc``; a serving registry only reads the file.
    from registry.ops.gc import GCOptions, GCStats

STATUS_PATH = f"{layout.OWN}/gc/last.json"


async def record(
    driver: IStorageDriver, options: GCOptions, stats: GCStats, started: float, finished: float
) -> None:
    status: dict[str, Any] = {
        "started": started,
        "finished": finished,
        "dry_run": options.dry_run,
        "delete_untagged": options.delete_untagged,
        "repositories": stats.repositories_scanned,
        "blobs_deleted": stats.blobs_deleted,
        "bytes_freed": stats.bytes_freed,
        "blobs_to_delete": stats.blobs_to_delete,
        "bytes_to_free": stats.bytes_to_free,
        "manifests_deleted": stats.revisions_deleted,
        "errors": len(stats.errors),
    }
    if stats.phase in ("mark", "examine"):
        # Stopped before every blob was looked at: its counts are a part of the registry.
        # The figures of the run that counted (the storage page, the metrics) stay.
        previous = await last(driver) or {}
        for key in ("blobs_stored", "bytes_stored", "stored_as_of"):
            if key in previous:
                status[key] = previous[key]
        if "blobs_stored" in previous and "stored_as_of" not in previous:
            status["stored_as_of"] = previous.get("finished")
    else:
        # The registry's own space (blob data) once the run ended, for the storage page.
        status["blobs_stored"] = stats.blobs_stored
        status["bytes_stored"] = stats.bytes_stored
        status["stored_as_of"] = finished
    await driver.put_content(STATUS_PATH, json.dumps(status, sort_keys=True).encode())


async def last(driver: IStorageDriver) -> dict[str, Any] | None:
    """The recorded status, or None when no run was recorded (or the file is unreadable)."""
    try:
        status = json.loads(await driver.get_content(STATUS_PATH))
    except (PathNotFoundError, ValueError):
        return None
    return status if isinstance(status, dict) else None
