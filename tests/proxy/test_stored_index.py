"""A single instance's cache index on disk (registry.proxy.stored): the same eviction plan as
the in-memory index, recovered from its snapshot in storage, a capped table in memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, gatherResults
from zope.interface.verify import verifyObject

from registry.proxy import stored
from registry.proxy.index import CacheIndex, ICacheIndex, MemoryIndex
from registry.proxy.stored import SNAPSHOT, IndexDatabase, StoredIndex
from registry.storage.memory import MemoryDriver
from tests.proxy.util import reactor

FOLDER = "txregistry/proxy/hub"


def _fill(index: CacheIndex | IndexDatabase) -> None:
    """Two images sharing a layer (the in-memory index's fixture, tests/proxy/test_index.py)."""
    manifests = [("m1", ["c1", "shared", "l1"], 1), ("m2", ["c2", "shared", "l2"], 5)]
    blobs = [("c1", 10, 2), ("shared", 100, 3), ("l1", 100, 4), ("c2", 10, 6), ("l2", 100, 7)]
    for digest, refs, now in manifests:
        index.add_manifest("r", digest, 10, refs, now)
    for digest, size, now in blobs:
        index.add_blob("r", digest, size, now)


@pytest.fixture
def database() -> Iterator[IndexDatabase]:
    fd, path = tempfile.mkstemp(suffix=".sqlite3")
    os.close(fd)
    db = IndexDatabase(path)
    os.unlink(path)
    yield db
    db.close()


def test_plan_keeps_a_layer_a_cached_manifest_references(database: IndexDatabase) -> None:
    _fill(database)
    assert database.totals() == (340, 5, 2)
    victims = database.plan(10, 250, None, frozenset())
    assert [(v.kind, v.digest) for v in victims] == [
        ("manifest", "m1"),
        ("blob", "c1"),
        ("blob", "l1"),
    ]
    assert victims[1].names == frozenset({"r"})
    # Served right now: the next least recently used image goes instead.
    assert [v.digest for v in database.plan(10, 250, None, frozenset({"m1"}))] == [
        "m2",
        "c2",
        "l2",
    ]
    # The TTL spares what a kept manifest references.
    database.touch_manifest("r", "m2", 100)
    assert {v.digest for v in database.plan(101, None, 50, frozenset())} == {"m1", "c1", "l1"}


# Random caches: manifests (some of them indexes referencing other manifests) and blobs with
# distinct last uses, some in use.  The plan walked once over the table must pick the same
# victims in the same order as the in-memory plan, which starts over after every manifest.
_digests = st.sampled_from([f"d{i}" for i in range(12)])
_entries = st.lists(
    st.tuples(
        st.sampled_from(["blob", "manifest"]),
        st.sampled_from(["a", "b"]),
        _digests,
        st.integers(1, 50),
        st.lists(_digests, max_size=4),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    entries=_entries,
    max_size=st.one_of(st.none(), st.integers(0, 400)),
    ttl=st.one_of(st.none(), st.integers(1, 30)),
    in_use=st.frozensets(_digests, max_size=3),
)
def test_plan_matches_the_in_memory_plan(
    entries: list[tuple[str, str, str, int, list[str]]],
    max_size: int | None,
    ttl: int | None,
    in_use: frozenset[str],
) -> None:
    fd, path = tempfile.mkstemp(suffix=".sqlite3")
    os.close(fd)
    database = IndexDatabase(path)
    os.unlink(path)
    try:
        memory = CacheIndex()
        for now, (kind, name, digest, size, refs) in enumerate(entries):
            if kind == "blob":
                memory.add_blob(name, digest, size, now)
                database.add_blob(name, digest, size, now)
            else:
                memory.add_manifest(name, digest, size, refs, now)
                database.add_manifest(name, digest, size, list(dict.fromkeys(refs)), now)
        for digest in in_use:
            memory.use(digest)
        assert database.totals()[0] == memory.size
        now = len(entries) + 5
        expected = memory.plan(now, max_size, ttl)
        assert database.plan(now, max_size, ttl, in_use) == expected
    finally:
        database.close()


async def _loaded(driver: MemoryDriver, **kwargs: int) -> StoredIndex:
    index = StoredIndex(reactor, "hub", **kwargs)
    await index.load(driver, FOLDER)
    return index


@pytest_twisted.ensureDeferred
async def test_a_restart_recovers_the_index_from_its_snapshot_in_storage() -> None:
    """What one process recorded (sizes, links, references, last uses, including uses of hot
    entries not yet written) is what the next one plans with, read back from storage."""
    driver = MemoryDriver()
    first = await _loaded(driver)
    for digest, refs, now in [("m1", ["c1", "shared", "l1"], 1), ("m2", ["c2", "shared"], 5)]:
        await first.add_manifest("r", digest, 10, refs, now)
    for digest, size, now in [("c1", 10, 2), ("shared", 100, 3), ("l1", 100, 4), ("c2", 10, 6)]:
        await first.add_blob("r", digest, size, now)
    await first.add_blob("other", "l1", 100, 4)
    # m1 used again after m2: it is m2's image that goes first now.
    assert await first.touch_manifest("r", "m1", 8)
    assert first.tables()["index_pending"] == 1  # a hot entry: written later, in a batch
    await first.flush(driver, FOLDER)
    await first.close()
    assert (await driver.stat(f"{FOLDER}/{SNAPSHOT}")).size > 0

    second = await _loaded(driver)
    try:
        assert second.size == 240
        assert await second.knows("shared")
        victims = await second.plan(10, 225, None)
        assert [(v.kind, v.digest) for v in victims] == [("manifest", "m2"), ("blob", "c2")]
        victims = await second.plan(10, 0, None)
        assert [v.digest for v in victims] == ["m2", "c2", "m1", "c1", "shared", "l1"]
        assert victims[-1].names == frozenset({"r", "other"})
        for victim in victims[:2]:
            await second.remove(victim)
        assert second.size == 220
        assert await second.touch_blob("c2", 11) is None
        assert await second.touch_blob("shared", 11) == 100
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_state_json_of_earlier_versions_is_imported_once() -> None:
    driver = MemoryDriver()
    old = CacheIndex()
    _fill(old)
    await driver.put_content(f"{FOLDER}/state.json", old.dumps())
    index = await _loaded(driver)
    try:
        assert index.size == 340
        assert [v.digest for v in await index.plan(10, 250, None)] == ["m1", "c1", "l1"]
        await index.flush(driver, FOLDER)
        assert await driver.list(FOLDER) == [SNAPSHOT]
    finally:
        await index.close()


@pytest_twisted.ensureDeferred
async def test_an_unreadable_snapshot_gives_an_empty_index() -> None:
    driver = MemoryDriver()
    await driver.put_content(f"{FOLDER}/{SNAPSHOT}", b"not a database" * 100)
    index = await _loaded(driver)
    try:
        assert index.size == 0
        await index.add_blob("r", "b1", 5, 1)
        assert await index.touch_blob("b1", 2) == 5
    finally:
        await index.close()


@pytest_twisted.ensureDeferred
async def test_many_names_keep_the_in_memory_tables_at_their_caps() -> None:
    """One manifest per repository name, as a pull-through cache records them: 300 names
    through an index whose hot table holds 8 entries and writes uses in batches of 4 keep at
    most that in memory, and every entry is still on disk, in order."""
    driver = MemoryDriver()
    index = await _loaded(driver, hot_entries=8, touch_batch=4)
    try:
        for n in range(300):
            await index.add_manifest(f"team/app{n}", "m", 10, ["config"], n)
            assert await index.touch_manifest(f"team/app{n}", "m", n + 0.5)
            assert index.tables()["index_hot"] <= 8
            assert index.tables()["index_pending"] <= 4
        await index.add_blob("team/app0", "config", 10, 0)
        assert index.tables()["index_hot"] == 8
        assert index.size == 3010
        # The oldest names go first; the config blob stays while any of them references it.
        victims = await index.plan(1000, 2000, None)
        assert [v.name for v in victims] == [f"team/app{n}" for n in range(101)]
        victims = await index.plan(1000, 0, None)
        assert len(victims) == 301
        assert victims[-1].digest == "config"
    finally:
        await index.close()


def test_both_indexes_provide_the_whole_interface() -> None:
    verifyObject(ICacheIndex, StoredIndex(reactor, "hub"))
    verifyObject(ICacheIndex, MemoryIndex())


@pytest_twisted.ensureDeferred
async def test_concurrent_updates_all_count_in_the_size() -> None:
    """Adds and removes whose database calls overlap (fills committing while an eviction
    removes) all count: the size in memory stays the database's total."""
    driver = MemoryDriver()
    index = await _loaded(driver)
    try:
        await gatherResults(
            [Deferred.fromCoroutine(index.add_blob("r", f"b{n}", 10 + n, n)) for n in range(20)]
        )
        assert index.size == sum(10 + n for n in range(20))
        victims = (await index.plan(30, 0, None))[:10]
        await gatherResults(
            [Deferred.fromCoroutine(index.remove(victim)) for victim in victims]
            + [Deferred.fromCoroutine(index.add_blob("r", f"c{n}", 5, 40)) for n in range(10)]
        )
        assert index.size == sum(10 + n for n in range(10, 20)) + 50
    finally:
        await index.close()


@pytest.fixture
def left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """
    In a temporary folder of its own: the index file of a process killed with ``kill -9``
    (made the way a flush makes one), one named after a process still running on this host,
    and one of another host.  The next index file made in this process looks again.
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(stored, "_swept_by", None)
    killed = subprocess.run(
        [sys.executable, "-c", _MAKE_AND_DIE],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = Path(killed.stdout.strip())
    host = socket.gethostname()
    assert left.parent == tmp_path and left.exists()
    assert left.name.startswith(f"txregistry-index-{host}-")
    dead_pid = left.name[len(f"txregistry-index-{host}-") :].split("-", 1)[0]
    with subprocess.Popen(["sleep", "60"]) as alive:
        try:
            running = tmp_path / f"txregistry-index-{host}-{alive.pid}-abc.sqlite3"
            elsewhere = tmp_path / f"txregistry-index-{host}x-{dead_pid}-abc.sqlite3"
            for path in (running, elsewhere):
                path.write_bytes(b"")
            yield [left, running, elsewhere]
        finally:
            alive.kill()


# A child that makes an index file the way a flush does, prints its path and is killed.
_MAKE_AND_DIE = """
import os, signal
from registry.proxy import stored
path = stored._new_local_file()
print(path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest_twisted.ensureDeferred
async def test_files_left_by_a_killed_process_are_removed_by_the_next(
    left_behind: list[Path],
) -> None:
    """A process killed while a snapshot file still had a name leaves it in the temporary
    folder; the next process of the host to make an index file removes it, and only it: not
    a running process's file, not another host's."""
    left, running, elsewhere = left_behind
    index = await _loaded(MemoryDriver())
    await index.flush(MemoryDriver(), FOLDER)
    await index.close()
    assert not left.exists()
    # Nothing else went, and the files this process made (opened, snapshot) are gone too.
    assert sorted(left.parent.iterdir()) == sorted([running, elsewhere])
