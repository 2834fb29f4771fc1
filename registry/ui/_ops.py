"""
What the cache and storage pages show: the figures the pull-through caches keep (the same
ones ``/metrics`` exports), the storage's space and uploads, and the last garbage collection.
"""

from __future__ import annotations

import os.path
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

from registry.handlers.context import RegistryContext
from registry.storage import layout
from registry.storage.driver import PathNotFoundError
from registry.ui import _format

if TYPE_CHECKING:
    # For annotations only: the cache (and its HTTP client) loads only with [proxy:NAME].
    from registry.proxy.cache import ProxyCache


def cache_row(cache: ProxyCache) -> dict[str, Any]:
    """One upstream's figures: counters added up across restarts (`registry.proxy.totals`),
    the rest as they are now."""
    totals = cache.totals.current(cache)
    hits = totals["hits"]
    requests = hits + totals["misses"]
    max_size = cache.config.max_size
    rate = cache.client.rate_limit
    remaining = rate.remaining if rate is not None else None
    used = cache.index.size
    if max_size:
        size = f"{_format.size(used)} of {_format.size(max_size)} "
        size += f"({_format.percent(used, max_size)})"
    else:
        size = f"{_format.size(used)} (no max_size)"
    return {
        "name": cache.name,
        "remote": cache.config.remoteurl,
        "items": [
            ("Counted since", _format.date(cache.totals.since)),
            ("Hit ratio", f"{_format.percent(hits, requests)} ({hits} of {requests})"),
            ("Served from the cache", _format.size(totals["served_bytes"])),
            ("Fetched from upstream", _format.size(totals["upstream_bytes"])),
            ("Cache size", size),
            ("Evictions", f"{totals['evictions']} ({_format.size(totals['evicted_bytes'])})"),
            ("Stale serves", str(totals["stale_served"])),
            ("Upstream errors", str(totals["upstream_errors"])),
            ("Rate limit remaining", "—" if remaining is None else str(remaining)),
            ("Fills in flight", str(cache.fills_everywhere)),
        ],
    }


def gc_items(status: dict[str, Any], whole: bool) -> list[tuple[str, str]]:
    """The recorded last run (`registry.ops.gcstatus`), read leniently: it is a file.  What
    it scanned and deleted are facts about the whole registry (how much other teams store):
    shown only when ``whole`` (the reader may pull every repository), as in `StorageFacts`."""

    def number(key: str) -> int:
        value = status.get(key)
        return value if isinstance(value, int) else 0

    def when(key: str) -> float | None:
        value = status.get(key)
        return float(value) if isinstance(value, int | float) else None

    started, finished = when("started"), when("finished")
    dry = bool(status.get("dry_run"))
    mode = "dry run" if dry else "deleting"
    if status.get("delete_untagged"):
        mode += ", untagged too"
    duration = f"{finished - started:.1f} s" if started and finished else "—"
    items = [
        ("Finished", _format.date(finished)),
        ("Duration", duration),
        ("Mode", mode),
    ]
    if whole:
        items.append(("Repositories scanned", str(number("repositories"))))
        if dry:
            would = f"{number('blobs_to_delete')} blobs, {_format.size(number('bytes_to_free'))}"
            items.append(("Would delete", would))
        else:
            done = f"{number('blobs_deleted')} blobs, {_format.size(number('bytes_freed'))}"
            items.append(("Deleted", done))
    items.append(("Errors", str(number("errors"))))
    return items


def space_used(status: dict[str, Any] | None) -> str:
    """
    The registry's own bytes (its blobs' data), as the last gc counted them.  Storage keeps no
    running total (several instances and registry:2 may write the same storage; S3 has no cheap
    size of a prefix), so the figure is only as fresh as the last ``txregistry gc``.
    """
    if status is None:
        return "not known yet: txregistry gc counts it"
    stored, count = status.get("bytes_stored"), status.get("blobs_stored")
    finished = status.get("stored_as_of", status.get("finished"))  # the run that counted them
    if not isinstance(stored, int) or not isinstance(count, int):
        return "not known yet: the last gc did not count it"
    when = _format.date(float(finished)) if isinstance(finished, int | float) else "—"
    blobs = "1 blob" if count == 1 else f"{count} blobs"
    return f"{_format.size(stored)} in {blobs} (as of the last gc at {when})"


@attrs.define
class StorageFacts:
    ctx: RegistryContext
    # Uploads in progress are counted by listing every repository: remembered this long.
    uploads_ttl: float = 30.0
    batch: int = 64
    _uploads: tuple[float, int] | None = None

    async def items(
        self, gc: dict[str, Any] | None, may_pull: Callable[[str], bool], tag_dates: int = 0
    ) -> tuple[list[tuple[str, str]], bool]:
        """
        The storage's facts; ``gc`` is the last recorded collection, if any, ``tag_dates`` the
        number of repositories whose tag dates the UI holds in memory.  Facts about the whole
        registry (where it keeps its files, how many repositories and uploads it holds, how
        many of them people have opened lately) are for someone who may pull every
        repository; anyone else is told how many repositories they may pull, as the list
        shows them.  Also whether the reader may pull every repository.
        """
        config = self.ctx.config
        names, _ = await self.ctx.catalog.list_repositories()
        visible = sum(1 for name in names if may_pull(name))
        whole = visible == len(names)
        items: list[tuple[str, str]] = [("Driver", config.storage.driver)]
        # The bytes every team stores: a whole-registry fact too.
        space = [("Space used by the registry", space_used(gc))] if whole else []
        if config.storage.driver == "filesystem":
            root = os.path.abspath(config.storage.rootdirectory)  # noqa: ASYNC240 - no I/O
            if whole:
                items.append(("Root directory", root))
            items.extend(space)
            # On a disk the registry has to itself, its usage is the registry's size: a
            # whole-registry fact as well (watched over time, it shows what others push).
            if whole:
                try:
                    usage = await deferToThread(shutil.disk_usage, root)
                except OSError:
                    items.append(("Disk", "unavailable"))
                else:
                    # As df counts: of what the registry may use, blocks reserved for root
                    # left out (used + free is then the whole, and the share is df's).
                    usable = usage.used + usage.free
                    used = f"{_format.size(usage.used)} of {_format.size(usable)} "
                    used += f"({_format.percent(usage.used, usable)}), "
                    used += f"{_format.size(usage.free)} free"
                    items.append(("Disk used (the whole file system)", used))
        elif config.storage.driver == "s3":
            items.append(("Bucket", config.storage.bucket))
            items.extend(space)
        else:
            items.extend(space)
        if whole:
            items.append(("Repositories", str(len(names))))
            items.append(("Uploads in progress", str(await self.uploads_in_progress(names))))
            plural = "y" if tag_dates == 1 else "ies"
            items.append(("Tag dates in memory", f"{tag_dates} repositor{plural}"))
        else:
            items.append(("Repositories you may pull", str(visible)))
        items.append(("Deletes", "enabled" if config.storage.delete_enabled else "disabled"))
        items.append(("Read-only mode", "on" if config.maintenance.readonly else "off"))
        return items, whole

    async def uploads_in_progress(self, names: list[str]) -> int:
        now = float(self.ctx.reactor.seconds())
        if self._uploads is not None and now - self._uploads[0] < self.uploads_ttl:
            return self._uploads[1]

        async def count(name: str) -> int:
            try:
                return len(await self.ctx.driver.list(layout.uploads_dir(name)))
            except PathNotFoundError:
                return 0

        total = 0
        for start in range(0, len(names), self.batch):
            counts = await gatherResults(
                [Deferred.fromCoroutine(count(n)) for n in names[start : start + self.batch]],
                consumeErrors=True,
            )
            total += sum(counts)
        self._uploads = (now, total)
        return total
