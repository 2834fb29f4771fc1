"""
A single instance's cache index on disk: memory stays flat whatever the number of cached
manifests and blobs (a pull-through cache adds one manifest entry per repository name pulled).

The entries live in an SQLite database (the standard library's ``sqlite3``) in a temporary
file this process alone owns (unlinked once open, so a crash leaves nothing behind), used by
one thread of its own: every query runs there, never on the reactor thread.  In memory stay
only ``size`` (the sum the metrics and eviction read), the digests in use, a capped table of
recently used entries (``hot``: their sizes) and the uses of those entries not yet written
(``pending``, written in batches: a hit on a hot entry costs no query at all).

Why SQLite and not a log of changes in storage: eviction needs the entries in least-recently
used order and "is this digest still referenced?", which an indexed table answers without
reading everything, and storage drivers (S3) cannot append.  Why a local file and a snapshot in
storage: the storage may be S3, where a database cannot live, and the persisted form must be
where the cache is (a restarted instance on another machine finds it).  So every
``flush_interval``, when something changed, the database is copied (``VACUUM INTO``) and the copy
streamed to ``txregistry/proxy/<upstream>/index.sqlite3`` (written beside, then moved over, so a
reader never sees half of it); at start it is streamed back into the local file, a chunk at a
time.  A crash loses the uses since the last flush, as the ``state.json`` of earlier versions
did; that file, when found without a snapshot, is imported once and then removed.

The local files are named ``txregistry-index-<host>-<pid>-*.sqlite3``
(`registry.proxy.owners`): a process killed with ``kill -9`` while one of them still had a
name (a snapshot being uploaded, one being streamed back) leaves it in the temporary folder,
and the next process of the host to make one removes it.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import socket
import sqlite3
import sys
import tempfile
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.proxy.index import CacheIndex, ICacheIndex, Victim, count_release, count_use
from registry.proxy.owners import left_by_dead_process, owner
from registry.storage.driver import IStorageDriver, PathNotFoundError

log = Logger()

T = TypeVar("T")

SNAPSHOT = "index.sqlite3"
LEGACY_STATE = "state.json"
SCHEMA_VERSION = 1
# Recently used entries whose size is kept in memory (a hit on one needs no query).
HOT_ENTRIES = 1024
# Uses of hot entries written in one transaction once this many are waiting.
TOUCH_BATCH = 256
# The snapshot is copied to and from storage this much at a time.
CHUNK = 1024 * 1024

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('version', {SCHEMA_VERSION});
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, last_used REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_lru ON blobs (last_used, digest);
CREATE TABLE IF NOT EXISTS links (
    digest TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (digest, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
    name TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL, last_used REAL NOT NULL,
    PRIMARY KEY (name, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifests_lru ON manifests (last_used, name, digest);
CREATE INDEX IF NOT EXISTS manifests_digest ON manifests (digest);
CREATE TABLE IF NOT EXISTS refs (
    name TEXT NOT NULL, digest TEXT NOT NULL, ref TEXT NOT NULL, PRIMARY KEY (name, digest, ref)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_ref ON refs (ref);
"""

# Every entry by last use; ties as `CacheIndex.plan` breaks them.  Each arm walks its index,
# and SQLite merges the two (no sort of the whole table).
_BY_LAST_USE = """
SELECT last_used, 'blob', '', digest, size FROM blobs
UNION ALL
SELECT last_used, 'manifest', name, digest, size FROM manifests
ORDER BY 1, 2, 3, 4
"""

Row = tuple[float, str, str, str, int]


class UnusableSnapshot(Exception):
    """The persisted database is not one this version reads."""


class IndexDatabase:
    """The SQL side of `StoredIndex`; every method runs on the index's own thread."""

    def __init__(self, path: str) -> None:
        # One thread uses it (the index's pool has one), not always the one that opened it.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            # The file is this process's scratch copy: durability comes from the snapshots.
            self.db.execute("PRAGMA journal_mode = OFF")
            self.db.execute("PRAGMA synchronous = OFF")
            self.db.execute("PRAGMA cache_size = -1024")  # KiB: the page cache's bound
            self.db.executescript(_SCHEMA)
            (version,) = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise UnusableSnapshot(str(exc)) from None
        if version != SCHEMA_VERSION:
            self.db.close()
            raise UnusableSnapshot(f"schema version {version}")

    def close(self) -> None:
        self.db.close()

    def totals(self) -> tuple[int, int, int]:
        """(bytes, blobs, manifests)."""
        blobs, blob_bytes = self.db.execute("SELECT count(*), total(size) FROM blobs").fetchone()
        manifests, manifest_bytes = self.db.execute(
            "SELECT count(*), total(size) FROM manifests"
        ).fetchone()
        return int(blob_bytes + manifest_bytes), int(blobs), int(manifests)

    # -- updates; each returns the change of the total size

    def add_blob(self, name: str, digest: str, size: int, now: float) -> int:
        db = self.db
        row = db.execute("SELECT size FROM blobs WHERE digest = ?", (digest,)).fetchone()
        db.execute("BEGIN")
        if row is None:
            db.execute("INSERT INTO blobs VALUES (?, ?, ?)", (digest, size, now))
        else:
            db.execute(
                "UPDATE blobs SET size = ?, last_used = max(last_used, ?) WHERE digest = ?",
                (size, now, digest),
            )
        db.execute("INSERT OR IGNORE INTO links VALUES (?, ?)", (digest, name))
        db.execute("COMMIT")
        return size - (row[0] if row is not None else 0)

    def add_manifest(self, name: str, digest: str, size: int, refs: list[str], now: float) -> int:
        db = self.db
        row = db.execute(
            "SELECT size FROM manifests WHERE name = ? AND digest = ?", (name, digest)
        ).fetchone()
        db.execute("BEGIN")
        if row is None:
            db.execute("INSERT INTO manifests VALUES (?, ?, ?, ?)", (name, digest, size, now))
        else:
            db.execute(
                "UPDATE manifests SET size = ?, last_used = max(last_used, ?) "
                "WHERE name = ? AND digest = ?",
                (size, now, name, digest),
            )
            db.execute("DELETE FROM refs WHERE name = ? AND digest = ?", (name, digest))
        db.executemany(
            "INSERT OR IGNORE INTO refs VALUES (?, ?, ?)", [(name, digest, r) for r in refs]
        )
        db.execute("COMMIT")
        return size - (row[0] if row is not None else 0)

    def touch_blob(self, digest: str, now: float) -> int | None:
        row = self.db.execute(
            "UPDATE blobs SET last_used = max(last_used, ?) WHERE digest = ? RETURNING size",
            (now, digest),
        ).fetchone()
        return None if row is None else int(row[0])

    def touch_manifest(self, name: str, digest: str, now: float) -> int | None:
        row = self.db.execute(
            "UPDATE manifests SET last_used = max(last_used, ?) WHERE name = ? AND digest = ? "
            "RETURNING size",
            (now, name, digest),
        ).fetchone()
        return None if row is None else int(row[0])

    def touch_many(
        self, blobs: list[tuple[float, str]], manifests: list[tuple[float, str, str]]
    ) -> None:
        db = self.db
        db.execute("BEGIN")
        db.executemany("UPDATE blobs SET last_used = max(last_used, ?) WHERE digest = ?", blobs)
        db.executemany(
            "UPDATE manifests SET last_used = max(last_used, ?) WHERE name = ? AND digest = ?",
            manifests,
        )
        db.execute("COMMIT")

    def remove(self, victim: Victim) -> int:
        db = self.db
        if victim.kind == "blob":
            row = db.execute("SELECT size FROM blobs WHERE digest = ?", (victim.digest,)).fetchone()
            db.execute("BEGIN")
            db.execute("DELETE FROM blobs WHERE digest = ?", (victim.digest,))
            db.execute("DELETE FROM links WHERE digest = ?", (victim.digest,))
        else:
            key = (victim.name or "", victim.digest)
            row = db.execute(
                "SELECT size FROM manifests WHERE name = ? AND digest = ?", key
            ).fetchone()
            db.execute("BEGIN")
            db.execute("DELETE FROM manifests WHERE name = ? AND digest = ?", key)
            db.execute("DELETE FROM refs WHERE name = ? AND digest = ?", key)
        db.execute("COMMIT")
        return -int(row[0]) if row is not None else 0

    def import_index(self, index: CacheIndex) -> None:
        """Add the entries of an earlier version's ``state.json``."""
        db = self.db
        db.execute("BEGIN")
        for digest, blob in index.blobs.items():
            db.execute(
                "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (digest, blob.size, blob.last_used)
            )
            db.executemany(
                "INSERT OR IGNORE INTO links VALUES (?, ?)", [(digest, n) for n in blob.names]
            )
        for (name, digest), manifest in index.manifests.items():
            db.execute(
                "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)",
                (name, digest, manifest.size, manifest.last_used),
            )
            db.executemany(
                "INSERT OR IGNORE INTO refs VALUES (?, ?, ?)",
                [(name, digest, r) for r in manifest.refs],
            )
        db.execute("COMMIT")

    # -- lookups

    def knows(self, digest: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone()
            is not None
            or self.db.execute(
                "SELECT 1 FROM manifests WHERE digest = ? LIMIT 1", (digest,)
            ).fetchone()
            is not None
        )

    def shares(self, victim: Victim) -> bool:
        db, digest = self.db, victim.digest
        if victim.kind == "manifest":
            if db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone():
                return True
            query = "SELECT 1 FROM manifests WHERE digest = ? AND name != ? LIMIT 1"
            return db.execute(query, (digest, victim.name or "")).fetchone() is not None
        query = "SELECT 1 FROM manifests WHERE digest = ? LIMIT 1"
        return db.execute(query, (digest,)).fetchone() is not None

    def _references(self, digest: str) -> int:
        (count,) = self.db.execute("SELECT count(*) FROM refs WHERE ref = ?", (digest,)).fetchone()
        return int(count)

    def _referenced(self, digest: str) -> bool:
        query = "SELECT 1 FROM refs WHERE ref = ? LIMIT 1"
        return self.db.execute(query, (digest,)).fetchone() is not None

    # -- eviction

    def plan(
        self, now: float, max_size: int | None, ttl: float | None, in_use: frozenset[str]
    ) -> list[Victim]:
        """`CacheIndex.plan` over the table, walking it once in last-use order.

        The in-memory plan starts over after each manifest it evicts (its references may free
        older entries).  Here the entries skipped for being referenced are remembered, and
        when a victim's references drop one of them to none it is taken next, oldest first,
        before the walk goes on: the same victims in the same order, without walking the
        table again (nor counting a layer's references again, which a layer shared by many
        names would make slow)."""
        if max_size is None and ttl is None:
            return []
        size = self.totals()[0]
        released: Counter[str] = Counter()  # references dropped by the planned victims
        skipped: dict[str, list[Row]] = {}  # referenced when walked past
        freed: list[Row] = []  # skipped entries no longer referenced (a heap)
        victims: list[Victim] = []

        def referenced(digest: str) -> bool:
            if not released[digest]:
                return self._referenced(digest)
            return self._references(digest) > released[digest]

        def eligible(last_used: float) -> bool:
            over = max_size is not None and size > max_size
            return over or (ttl is not None and last_used < now - ttl)

        def take(row: Row) -> None:
            nonlocal size
            _, kind, name, digest, entry_size = row
            size -= entry_size
            if kind == "blob":
                linked = self.db.execute("SELECT name FROM links WHERE digest = ?", (digest,))
                names = frozenset(n for (n,) in linked)
                victims.append(Victim("blob", digest, None, entry_size, names))
                return
            victims.append(Victim("manifest", digest, name, entry_size))
            refs = self.db.execute(
                "SELECT ref FROM refs WHERE name = ? AND digest = ?", (name, digest)
            ).fetchall()
            for (ref,) in refs:
                released[ref] += 1
                if ref in skipped and not referenced(ref):
                    for waiting in skipped.pop(ref):
                        heapq.heappush(freed, waiting)

        cursor = self.db.execute(_BY_LAST_USE)
        try:
            for row in cursor:
                if not eligible(row[0]):
                    break
                digest = row[3]
                if digest in in_use:
                    continue
                if referenced(digest):
                    skipped.setdefault(digest, []).append(row)
                    continue
                take(row)
                while freed:
                    earlier = heapq.heappop(freed)
                    if not eligible(earlier[0]):
                        return victims  # nothing after it is older or the cache over
                    take(earlier)
        finally:
            cursor.close()
        return victims

    # -- the persisted form

    def snapshot(self) -> str:
        """A compact copy of the database in a new temporary file; its path."""
        path = _new_local_file()
        os.unlink(path)  # VACUUM INTO wants to create it
        self.db.execute("VACUUM INTO ?", (path,))
        return path


LOCAL_PREFIX = "txregistry-index-"
LOCAL_SUFFIX = ".sqlite3"
# The process that last looked for files left by killed processes (forked workers look again).
_swept_by: int | None = None


def _new_local_file() -> str:
    """A new empty file for a database, named after this process.  Blocking."""
    global _swept_by
    if _swept_by != os.getpid():
        _swept_by = os.getpid()
        remove_left_behind()
    fd, path = tempfile.mkstemp(prefix=f"{LOCAL_PREFIX}{owner()}-", suffix=LOCAL_SUFFIX)
    os.close(fd)
    return path


def remove_left_behind() -> list[str]:
    """Remove the local database files of this host's processes that no longer run; returns
    their paths.  Blocking."""
    folder, host = tempfile.gettempdir(), socket.gethostname()
    removed = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(folder)):
            if not (name.startswith(LOCAL_PREFIX) and name.endswith(LOCAL_SUFFIX)):
                continue
            if left_by_dead_process(name[len(LOCAL_PREFIX) :], host):
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
    if removed:
        log.info(
            "removed the cache index files of stopped processes: {paths}", paths=", ".join(removed)
        )
    return removed


def _open(path: str) -> IndexDatabase:
    """Open the database at ``path`` and unlink the file: it is this process's alone, and no
    crash leaves it behind.  An unusable one is replaced by an empty one (UnusableSnapshot
    still raised, for the log)."""
    try:
        return IndexDatabase(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _open_empty() -> IndexDatabase:
    return _open(_new_local_file())


class _Collect:
    """A consumer keeping what a storage reader writes (one chunk of the snapshot)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


async def _read_chunk(driver: IStorageDriver, path: str, offset: int, length: int) -> bytes:
    producer: IBodyProducer = await driver.reader(path, offset, length)
    consumer = _Collect()
    await producer.startProducing(consumer)
    return b"".join(consumer.chunks)


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def _read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(length)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


HotKey = tuple[str, str, str]  # ("blob", "", digest) or ("manifest", name, digest)


@implementer(ICacheIndex)
class StoredIndex:
    """The index of one instance's cache, on disk; see the module docstring."""

    def __init__(
        self,
        reactor: Any,
        name: str,
        hot_entries: int = HOT_ENTRIES,
        touch_batch: int = TOUCH_BATCH,
    ) -> None:
        self.reactor = reactor
        self.size = 0
        self.in_use: Counter[str] = Counter()
        self.hot_entries = hot_entries
        self.touch_batch = touch_batch
        self.dirty = False
        # Recently used entries' sizes, least recently used first.
        self._hot: OrderedDict[HotKey, int] = OrderedDict()
        # Uses of hot entries not yet written: entry -> last use.
        self._pending: dict[HotKey, float] = {}
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"registry-proxy-index-{name}")
        self._db: IndexDatabase | None = None
        self._waiting: list[Deferred[None]] = []  # calls made before `load` finished
        self._legacy = False
        self._closed = False
        self._trigger: Any = None

    # -- the thread

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        result: T = await deferToThreadPool(self.reactor, self._pool, call, *args)
        return result

    async def _database(self) -> IndexDatabase:
        """The open database; calls made before `load` finished wait for it."""
        if self._db is None:
            waiting: Deferred[None] = Deferred()
            self._waiting.append(waiting)
            await waiting
        assert self._db is not None
        return self._db

    def _ready(self, db: IndexDatabase) -> None:
        self._db = db
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(None)

    def _start(self) -> None:
        if not self._pool.started:
            self._pool.start()
            self._trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool
            )

    def _stop_pool(self) -> None:
        if self._pool.started:
            self._pool.stop()

    # -- in use (memory only)

    def use(self, digest: str) -> None:
        count_use(self.in_use, digest)

    def release(self, digest: str) -> None:
        count_release(self.in_use, digest)

    def tables(self) -> dict[str, int]:
        return {"index_hot": len(self._hot), "index_pending": len(self._pending)}

    # -- the hot entries

    def _remember(self, key: HotKey, size: int) -> None:
        # Many names share one digest (an image pulled under many names): one string for all.
        key = (key[0], key[1], sys.intern(key[2]))
        self._hot[key] = size
        self._hot.move_to_end(key)
        while len(self._hot) > self.hot_entries:
            # A pending use of the entry dropped stays pending: written with the next batch.
            self._hot.popitem(last=False)

    def _hit(self, key: HotKey, now: float) -> int | None:
        size = self._hot.get(key)
        if size is None:
            return None
        self._hot.move_to_end(key)
        self._pending[key] = max(now, self._pending.get(key, now))
        self.dirty = True
        if len(self._pending) >= self.touch_batch:
            Deferred.fromCoroutine(self.write_pending()).addErrback(
                lambda f: log.failure("proxy index: writing uses failed", f)
            )
        return size

    async def write_pending(self) -> None:
        """Write the uses of hot entries waiting to be written (one transaction)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        blobs = [(t, d) for (kind, _, d), t in pending.items() if kind == "blob"]
        manifests = [(t, n, d) for (kind, n, d), t in pending.items() if kind == "manifest"]
        db = await self._database()
        await self._run(db.touch_many, blobs, manifests)

    # -- ICacheIndex

    async def touch_blob(self, digest: str, now: float) -> int | None:
        key: HotKey = ("blob", "", digest)
        size = self._hit(key, now)
        if size is not None:
            return size
        db = await self._database()
        size = await self._run(db.touch_blob, digest, now)
        if size is not None:
            self.dirty = True
            self._remember(key, size)
        return size

    async def add_blob(self, name: str, digest: str, size: int, now: float) -> None:
        db = await self._database()
        change = await self._run(db.add_blob, name, digest, size, now)
        self.size += change  # read after the await: concurrent updates all count
        self.dirty = True
        self._remember(("blob", "", digest), size)

    async def touch_manifest(self, name: str, digest: str, now: float) -> bool:
        key: HotKey = ("manifest", name, digest)
        if self._hit(key, now) is not None:
            return True
        db = await self._database()
        size = await self._run(db.touch_manifest, name, digest, now)
        if size is None:
            return False
        self.dirty = True
        self._remember(key, size)
        return True

    async def add_manifest(
        self, name: str, digest: str, size: int, refs: Iterable[str], now: float
    ) -> None:
        db = await self._database()
        unique = list(dict.fromkeys(refs))
        change = await self._run(db.add_manifest, name, digest, size, unique, now)
        self.size += change  # read after the await: concurrent updates all count
        self.dirty = True
        self._remember(("manifest", name, digest), size)

    async def plan(self, now: float, max_size: int | None, ttl: float | None) -> list[Victim]:
        await self.write_pending()
        db = await self._database()
        return await self._run(db.plan, now, max_size, ttl, frozenset(self.in_use))

    async def remove(self, victim: Victim) -> None:
        key: HotKey = (
            ("blob", "", victim.digest)
            if victim.kind == "blob"
            else ("manifest", victim.name or "", victim.digest)
        )
        self._hot.pop(key, None)
        self._pending.pop(key, None)
        db = await self._database()
        change = await self._run(db.remove, victim)
        self.size += change  # read after the await: concurrent updates all count
        self.dirty = True

    async def knows(self, digest: str) -> bool:
        if ("blob", "", digest) in self._hot:
            return True
        db = await self._database()
        return await self._run(db.knows, digest)

    async def shares(self, victim: Victim) -> bool:
        db = await self._database()
        return await self._run(db.shares, victim)

    # -- persistence

    async def load(self, driver: IStorageDriver, folder: str) -> tuple[int, int]:
        """Stream the snapshot from storage into the local file and open it (an earlier
        version's ``state.json`` imported when there is no snapshot; an unreadable snapshot
        gives an empty index: content is re-added as it is served)."""
        self._start()
        try:
            db = await self._recover(driver, folder)
        except Exception as exc:
            self._ready(await self._run(_open_empty))
            log.warn(
                "proxy index {folder}: the saved index is unusable ({error}); starting empty",
                folder=folder,
                error=str(exc),
            )
            return 0, 0
        self.size, blobs, manifests = await self._run(db.totals)
        self._ready(db)
        return blobs, manifests

    async def _recover(self, driver: IStorageDriver, folder: str) -> IndexDatabase:
        path = f"{folder}/{SNAPSHOT}"
        try:
            total = (await driver.stat(path)).size
        except PathNotFoundError:
            return await self._import_legacy(driver, folder)
        local = await self._run(_new_local_file)
        try:
            for offset in range(0, total, CHUNK):
                data = await _read_chunk(driver, path, offset, min(CHUNK, total - offset))
                await self._run(_append, local, data)
        except BaseException:
            await self._run(_remove, local)
            raise
        return await self._run(_open, local)

    async def _import_legacy(self, driver: IStorageDriver, folder: str) -> IndexDatabase:
        db = await self._run(_open_empty)
        try:
            data = await driver.get_content(f"{folder}/{LEGACY_STATE}")
        except PathNotFoundError:
            return db
        # Read whole, once: the file of earlier versions, removed after the first snapshot.
        await self._run(db.import_index, CacheIndex.loads(data))
        self._legacy = True
        self.dirty = True
        return db

    async def flush(self, driver: IStorageDriver, folder: str) -> None:
        """Copy the database to storage when it changed since the last copy."""
        if not self.dirty or self._db is None:
            return
        self.dirty = False
        try:
            await self.write_pending()
            local = await self._run(self._db.snapshot)
            try:
                await self._upload(driver, local, folder)
            finally:
                await self._run(_remove, local)
        except BaseException:
            self.dirty = True
            raise
        if self._legacy:
            with contextlib.suppress(PathNotFoundError):
                await driver.delete(f"{folder}/{LEGACY_STATE}")
            self._legacy = False

    async def _upload(self, driver: IStorageDriver, local: str, folder: str) -> None:
        final = f"{folder}/{SNAPSHOT}"
        partial = f"{final}.{uuid.uuid4().hex}.part"
        total = await self._run(os.path.getsize, local)
        writer = await driver.writer(partial)
        try:
            for offset in range(0, total, CHUNK):
                data = await self._run(_read_at, local, offset, CHUNK)
                wait = writer.write(data)
                if wait is not None:
                    await wait
            await writer.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await writer.cancel()
            raise
        await driver.move(partial, final)

    async def close(self) -> None:
        """Close the database and stop the thread (after the last flush)."""
        if self._closed:
            return
        self._closed = True
        if self._db is not None:
            await self._run(self._db.close)
        self._stop_pool()
        if self._trigger is not None:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
