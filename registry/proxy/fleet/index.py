"""
A fleet instance's side of the cache index: what it stored or used since its last push to
Redis, and a capped table of recently used entries.  Redis holds the fleet's index of record
(`registry.proxy.fleet.ledger`), so memory here stays flat whatever the number of cached
manifests and blobs (a pull-through cache adds one manifest entry per repository name pulled).

A use of an entry this process does not remember asks Redis once (``HGET``) and then
remembers the entry's size in ``hot`` (`HOT_ENTRIES` of them, least recently used dropped
first); a hit on a hot entry costs no command.  Uses and additions wait in ``pending`` until the
next push (every second, and before each eviction), which sends them in one batch.

Eviction does not plan here: it walks the fleet's least-recently-used order in Redis a page at
a time (`registry.proxy.cache.ProxyCache._evict_fleet`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
from zope.interface import implementer

from registry.proxy.fleet._redis import RedisUnavailable
from registry.proxy.index import (
    BlobEntry,
    ICacheIndex,
    ManifestEntry,
    Victim,
    count_release,
    count_use,
)
from registry.storage.driver import IStorageDriver

if TYPE_CHECKING:
    from registry.proxy.fleet.ledger import Ledger

# Recently used entries remembered here (a use of one needs no Redis command).
HOT_ENTRIES = 1024


@attrs.define
class Batch:
    """What one push sends: entries added (blobs with the repositories linking them,
    manifests with their references) and uses of entries already in Redis (their last use
    only moves forward)."""

    blobs: dict[str, BlobEntry] = attrs.field(factory=dict)
    manifests: dict[tuple[str, str], ManifestEntry] = attrs.field(factory=dict)
    touched_blobs: dict[str, float] = attrs.field(factory=dict)
    touched_manifests: dict[tuple[str, str], float] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self.blobs or self.manifests or self.touched_blobs or self.touched_manifests)

    def merge(self, other: Batch) -> None:
        """Add ``other`` (a batch whose push failed) back under this one."""
        for digest, blob in other.blobs.items():
            mine = self.blobs.get(digest)
            if mine is None:
                self.blobs[digest] = blob
            else:
                mine.names |= blob.names
                mine.last_used = max(mine.last_used, blob.last_used)
        for key, manifest in other.manifests.items():
            self.manifests.setdefault(key, manifest)
        for digest, when in other.touched_blobs.items():
            self.touched_blobs[digest] = max(when, self.touched_blobs.get(digest, when))
        for mkey, when in other.touched_manifests.items():
            self.touched_manifests[mkey] = max(when, self.touched_manifests.get(mkey, when))


@implementer(ICacheIndex)
@attrs.define(eq=False)
class FleetIndex:
    ledger: Ledger
    hot_entries: int = HOT_ENTRIES
    # The fleet's total as last read from Redis (metrics, the UI).
    size: int = 0
    in_use: Counter[str] = attrs.field(factory=Counter)
    pending: Batch = attrs.field(factory=Batch)
    # Recently used entries known to be in Redis: blob digest -> size; manifest keys.
    hot_blobs: OrderedDict[str, int] = attrs.field(factory=OrderedDict)
    hot_manifests: OrderedDict[tuple[str, str], None] = attrs.field(factory=OrderedDict)

    def use(self, digest: str) -> None:
        count_use(self.in_use, digest)

    def release(self, digest: str) -> None:
        count_release(self.in_use, digest)

    def _remember_blob(self, digest: str, size: int) -> None:
        self.hot_blobs[digest] = size
        self.hot_blobs.move_to_end(digest)
        while len(self.hot_blobs) > self.hot_entries:
            self.hot_blobs.popitem(last=False)

    def _remember_manifest(self, key: tuple[str, str]) -> None:
        self.hot_manifests[key] = None
        self.hot_manifests.move_to_end(key)
        while len(self.hot_manifests) > self.hot_entries:
            self.hot_manifests.popitem(last=False)

    def known_size(self, digest: str) -> int | None:
        """The size of a blob this process added or used lately (no Redis command)."""
        pending = self.pending.blobs.get(digest)
        if pending is not None:
            return pending.size
        return self.hot_blobs.get(digest)

    async def touch_blob(self, digest: str, now: float) -> int | None:
        pending = self.pending.blobs.get(digest)
        if pending is not None:
            pending.last_used = max(pending.last_used, now)
            return pending.size
        size = self.hot_blobs.get(digest)
        if size is None:
            try:
                size = await self.ledger.blob_size(digest)
            except RedisUnavailable:
                # Served from storage all the same; recorded (pushed once Redis is back).
                return None
            if size is None:
                return None
        self._remember_blob(digest, size)
        touched = self.pending.touched_blobs
        touched[digest] = max(now, touched.get(digest, now))
        return size

    async def add_blob(self, name: str, digest: str, size: int, now: float) -> None:
        entry = self.pending.blobs.get(digest)
        if entry is None:
            entry = self.pending.blobs[digest] = BlobEntry(size, now)
        entry.size = size
        entry.last_used = max(entry.last_used, now)
        entry.names.add(name)

    async def touch_manifest(self, name: str, digest: str, now: float) -> bool:
        key = (name, digest)
        pending = self.pending.manifests.get(key)
        if pending is not None:
            pending.last_used = max(pending.last_used, now)
            return True
        if key not in self.hot_manifests:
            try:
                known = await self.ledger.has_manifest(name, digest)
            except RedisUnavailable:
                known = False  # as for a blob: served from storage, recorded for later
            if not known:
                return False
        self._remember_manifest(key)
        touched = self.pending.touched_manifests
        touched[key] = max(now, touched.get(key, now))
        return True

    async def add_manifest(
        self, name: str, digest: str, size: int, refs: Iterable[str], now: float
    ) -> None:
        old = self.pending.manifests.get((name, digest))
        last_used = max(now, old.last_used) if old is not None else now
        refs_tuple = tuple(dict.fromkeys(refs))
        self.pending.manifests[(name, digest)] = ManifestEntry(size, last_used, refs_tuple)

    def drain(self) -> Batch:
        """The pending batch, for a push; what it adds is remembered as hot."""
        batch, self.pending = self.pending, Batch()
        for digest, blob in batch.blobs.items():
            self._remember_blob(digest, blob.size)
        for key in batch.manifests:
            self._remember_manifest(key)
        return batch

    def restore(self, batch: Batch) -> None:
        """A push of ``batch`` failed: send it with the next one."""
        batch.merge(self.pending)
        self.pending = batch

    async def plan(self, now: float, max_size: int | None, ttl: float | None) -> list[Victim]:
        """Nothing: the fleet's eviction walks Redis (`ProxyCache._evict_fleet`)."""
        return []

    async def remove(self, victim: Victim) -> None:
        if victim.kind == "blob":
            self.pending.blobs.pop(victim.digest, None)
            self.pending.touched_blobs.pop(victim.digest, None)
            self.hot_blobs.pop(victim.digest, None)
        else:
            key = (victim.name or "", victim.digest)
            self.pending.manifests.pop(key, None)
            self.pending.touched_manifests.pop(key, None)
            self.hot_manifests.pop(key, None)

    def _pending_with(self, digest: str) -> int:
        return int(digest in self.pending.blobs) + sum(
            1 for _name, d in self.pending.manifests if d == digest
        )

    async def knows(self, digest: str) -> bool:
        return self._pending_with(digest) > 0 or await self.ledger.entries_with(digest) > 0

    async def shares(self, victim: Victim) -> bool:
        # The victim's own entry is still in Redis when this is asked (it goes after its data).
        return (
            self._pending_with(victim.digest) > 0
            or await self.ledger.entries_with(victim.digest) > 1
        )

    def tables(self) -> dict[str, int]:
        return {
            "fleet_hot_blobs": len(self.hot_blobs),
            "fleet_hot_manifests": len(self.hot_manifests),
        }

    async def load(self, driver: IStorageDriver, folder: str) -> tuple[int, int]:
        return 0, 0

    async def flush(self, driver: IStorageDriver, folder: str) -> None:
        return None

    async def close(self) -> None:
        return None
