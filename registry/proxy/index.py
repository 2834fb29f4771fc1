"""
What the cache holds and when each piece was last used: the state behind eviction.

`ICacheIndex` is what the cache asks of it.  Three implementations: `MemoryIndex` (a
`CacheIndex` in memory, for caches built without a service), a fleet instance's
`registry.proxy.fleet.index.FleetIndex` (the index is in Redis) and
`registry.proxy.stored.StoredIndex` (a single instance's: entries on disk, only a capped table
of recently used ones in memory, persisted to storage every ``flush_interval``).  Content the
persisted form does not know (written after the last flush before a crash) is added back the
next time it is served.  `CacheIndex.dumps`/`loads` are the ``state.json`` of earlier versions,
which a `StoredIndex` imports once.

Eviction is reference-aware: a blob is a candidate only when no cached manifest references it,
a manifest only when no cached index references it, and nothing marked in use (being served or
filled) is ever chosen.  Evicting a manifest releases its references, which can make older blobs
candidates in turn.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Awaitable, Iterable

import attrs
from zope.interface import Attribute, Interface, implementer

from registry.storage.driver import IStorageDriver

STATE_VERSION = 1


@attrs.define
class BlobEntry:
    size: int
    last_used: float
    names: set[str] = attrs.field(factory=set)  # local repositories linking it


@attrs.define
class ManifestEntry:
    size: int
    last_used: float
    refs: tuple[str, ...] = ()  # config, layers and child manifests (digest strings)


@attrs.frozen
class Victim:
    kind: str  # "blob" or "manifest"
    digest: str
    name: str | None = None  # the repository, for a manifest
    size: int = 0
    names: frozenset[str] = frozenset()  # for a blob: the repositories linking it


@attrs.define
class CacheIndex:
    blobs: dict[str, BlobEntry] = attrs.field(factory=dict)
    manifests: dict[tuple[str, str], ManifestEntry] = attrs.field(factory=dict)
    refcount: Counter[str] = attrs.field(factory=Counter)
    in_use: Counter[str] = attrs.field(factory=Counter)
    dirty: bool = False

    # -- size

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs.values()) + sum(
            m.size for m in self.manifests.values()
        )

    # -- updates

    def add_blob(self, name: str, digest: str, size: int, now: float) -> None:
        digest = sys.intern(digest)
        entry = self.blobs.get(digest)
        if entry is None:
            entry = self.blobs[digest] = BlobEntry(size, now)
        entry.size = size
        entry.last_used = max(entry.last_used, now)
        entry.names.add(name)
        self.dirty = True

    def touch_blob(self, digest: str, now: float) -> bool:
        """Record a use; False when the index does not know the blob."""
        entry = self.blobs.get(digest)
        if entry is None:
            return False
        entry.last_used = max(entry.last_used, now)
        self.dirty = True
        return True

    def add_manifest(
        self, name: str, digest: str, size: int, refs: Iterable[str], now: float
    ) -> None:
        # Digests are interned: many manifests (one per repository name pulled) share one
        # config or layer digest, and each copy of the string would cost about 120 bytes.
        key = (name, sys.intern(digest))
        old = self.manifests.get(key)
        if old is not None:
            self.refcount.subtract(old.refs)
        refs_tuple = tuple(dict.fromkeys(sys.intern(r) for r in refs))
        self.manifests[key] = ManifestEntry(
            size, max(now, old.last_used if old else now), refs_tuple
        )
        self.refcount.update(refs_tuple)
        self.dirty = True

    def touch_manifest(self, name: str, digest: str, now: float) -> bool:
        entry = self.manifests.get((name, digest))
        if entry is None:
            return False
        entry.last_used = max(entry.last_used, now)
        self.dirty = True
        return True

    def remove(self, victim: Victim) -> None:
        if victim.kind == "blob":
            self.blobs.pop(victim.digest, None)
        else:
            entry = self.manifests.pop((victim.name or "", victim.digest), None)
            if entry is not None:
                self.refcount.subtract(entry.refs)
        self.dirty = True

    def use(self, digest: str) -> None:
        count_use(self.in_use, digest)

    def release(self, digest: str) -> None:
        count_release(self.in_use, digest)

    def knows(self, digest: str) -> bool:
        return digest in self.blobs or any(d == digest for _, d in self.manifests)

    # -- eviction

    def plan(self, now: float, max_size: int | None, ttl: float | None) -> list[Victim]:
        """What to evict, in order, so that the cache fits ``max_size`` and holds nothing
        unused for longer than ``ttl``; the index itself is not changed."""
        size = self.size
        refcount = Counter(self.refcount)
        removed: set[tuple[str, str, str]] = set()
        victims: list[Victim] = []
        entries: list[tuple[float, str, str, str]] = [
            (b.last_used, "blob", "", d) for d, b in self.blobs.items()
        ] + [(m.last_used, "manifest", n, d) for (n, d), m in self.manifests.items()]
        entries.sort()
        progress = True
        while progress:
            progress = False
            for last_used, kind, name, digest in entries:
                over = max_size is not None and size > max_size
                expired = ttl is not None and last_used < now - ttl
                if not over and not expired:
                    break  # sorted by last use: nothing later is expired either
                key = (kind, name, digest)
                if key in removed or self.in_use.get(digest, 0) > 0 or refcount[digest] > 0:
                    continue
                removed.add(key)
                if kind == "blob":
                    blob = self.blobs[digest]
                    size -= blob.size
                    victims.append(Victim("blob", digest, None, blob.size, frozenset(blob.names)))
                else:
                    manifest = self.manifests[(name, digest)]
                    size -= manifest.size
                    refcount.subtract(manifest.refs)
                    victims.append(Victim("manifest", digest, name, manifest.size))
                    if manifest.refs:
                        progress = True
                        break  # restart: the released references may free older entries
        return victims

    # -- persistence

    def dumps(self) -> bytes:
        state = {
            "version": STATE_VERSION,
            "blobs": {d: [b.size, b.last_used, sorted(b.names)] for d, b in self.blobs.items()},
            "manifests": [
                [n, d, m.size, m.last_used, list(m.refs)] for (n, d), m in self.manifests.items()
            ],
        }
        return json.dumps(state, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes) -> CacheIndex:
        """Rebuild from `dumps` output; anything unreadable gives an empty index (the state is
        an optimisation: content it forgets is re-added when used)."""
        index = cls()
        try:
            state = json.loads(data)
            if state.get("version") != STATE_VERSION:
                return index
            for digest, (size, last_used, names) in state["blobs"].items():
                entry = BlobEntry(int(size), float(last_used), set(names))
                index.blobs[sys.intern(str(digest))] = entry
            for name, digest, size, last_used, refs in state["manifests"]:
                refs_tuple = tuple(sys.intern(str(r)) for r in refs)
                index.manifests[(str(name), sys.intern(str(digest)))] = ManifestEntry(
                    int(size), float(last_used), refs_tuple
                )
                index.refcount.update(refs_tuple)
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()
        return index


class ICacheIndex(Interface):
    """
    What `registry.proxy.cache.ProxyCache` asks of its index: entries recorded as content is
    cached and served, an eviction plan, and the index's persisted form.

    Lookups and updates are awaited: an implementation may keep its entries on disk and
    reach them off the reactor thread (`registry.proxy.stored.StoredIndex`).  ``size`` and
    the use counts are kept in memory, for metrics and for eviction's in-use check.
    """

    size = Attribute("int: bytes of everything the index holds")
    in_use = Attribute("Counter[str]: digests being served or filled by this process")

    def use(digest: str) -> None:
        """Count a read or fill of ``digest`` (never evicted while counted)."""

    def release(digest: str) -> None:
        """The end of one `use`."""

    def touch_blob(digest: str, now: float) -> Awaitable[int | None]:
        """Record a use of a cached blob; its recorded size, None when the index lacks it."""

    def add_blob(name: str, digest: str, size: int, now: float) -> Awaitable[None]:
        """Record a blob linked into repository ``name`` (or one more repository linking it)."""

    def touch_manifest(name: str, digest: str, now: float) -> Awaitable[bool]:
        """Record a use of a cached manifest; False when the index lacks it."""

    def add_manifest(
        name: str, digest: str, size: int, refs: Iterable[str], now: float
    ) -> Awaitable[None]:
        """Record a manifest of ``name`` and the digests it keeps cached (``refs``)."""

    def plan(now: float, max_size: int | None, ttl: float | None) -> Awaitable[list[Victim]]:
        """What to evict, in order (`CacheIndex.plan`'s contract); the index is not changed."""

    def remove(victim: Victim) -> Awaitable[None]:
        """Forget an evicted entry."""

    def knows(digest: str) -> Awaitable[bool]:
        """Whether any blob or manifest entry has ``digest``."""

    def shares(victim: Victim) -> Awaitable[bool]:
        """Whether another entry of this index has the victim's digest (its data stays)."""

    def tables() -> dict[str, int]:
        """Entries of the in-memory tables whose keys clients choose (tests check the caps)."""

    def load(driver: IStorageDriver, folder: str) -> Awaitable[tuple[int, int]]:
        """Recover the persisted form under ``folder``; (blobs, manifests) recovered."""

    def flush(driver: IStorageDriver, folder: str) -> Awaitable[None]:
        """Write the persisted form under ``folder`` when something changed."""

    def close() -> Awaitable[None]:
        """Release what `load` opened (after the last `flush`)."""


@implementer(ICacheIndex)
@attrs.define
class MemoryIndex:
    """A `CacheIndex` held in memory, for caches built without a service (tests): nothing is
    persisted."""

    entries: CacheIndex = attrs.field(factory=CacheIndex)

    @property
    def size(self) -> int:
        return self.entries.size

    @property
    def in_use(self) -> Counter[str]:
        return self.entries.in_use

    def use(self, digest: str) -> None:
        self.entries.use(digest)

    def release(self, digest: str) -> None:
        self.entries.release(digest)

    async def touch_blob(self, digest: str, now: float) -> int | None:
        entry = self.entries.blobs.get(digest)
        if entry is None:
            return None
        self.entries.touch_blob(digest, now)
        return entry.size

    async def add_blob(self, name: str, digest: str, size: int, now: float) -> None:
        self.entries.add_blob(name, digest, size, now)

    async def touch_manifest(self, name: str, digest: str, now: float) -> bool:
        return self.entries.touch_manifest(name, digest, now)

    async def add_manifest(
        self, name: str, digest: str, size: int, refs: Iterable[str], now: float
    ) -> None:
        self.entries.add_manifest(name, digest, size, refs, now)

    async def plan(self, now: float, max_size: int | None, ttl: float | None) -> list[Victim]:
        return self.entries.plan(now, max_size, ttl)

    async def remove(self, victim: Victim) -> None:
        self.entries.remove(victim)

    async def knows(self, digest: str) -> bool:
        return self.entries.knows(digest)

    async def shares(self, victim: Victim) -> bool:
        digest = victim.digest
        if digest in self.entries.blobs and victim.kind == "manifest":
            return True
        others = [key for key in self.entries.manifests if key[1] == digest]
        return bool(others) and others != [(victim.name, digest)]

    def tables(self) -> dict[str, int]:
        return {}

    async def load(self, driver: IStorageDriver, folder: str) -> tuple[int, int]:
        return len(self.entries.blobs), len(self.entries.manifests)

    async def flush(self, driver: IStorageDriver, folder: str) -> None:
        return None

    async def close(self) -> None:
        return None


def count_use(in_use: Counter[str], digest: str) -> None:
    """One more reader or fill of ``digest`` (eviction skips it while counted)."""
    in_use[digest] += 1


def count_release(in_use: Counter[str], digest: str) -> None:
    """One reader or fill of ``digest`` done; the entry goes at zero (the table stays small)."""
    in_use[digest] -= 1
    if in_use[digest] <= 0:
        del in_use[digest]
