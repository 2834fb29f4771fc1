"""The repository catalog: its index, pagination, and the registry:2 walk behind it."""

from __future__ import annotations

import collections
import errno
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from registry.api.digests import digest_of
from registry.api.errors import PAGINATION_NUMBER_INVALID, RegistryError
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import (
    COMPLETE_MARKER,
    NOTED_MAX,
    UNWRITTEN_RECHECK,
    Catalog,
    ICatalog,
    entry_name,
    entry_path,
    name_of_entry,
)
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageFull
from registry.storage.filesystem import FilesystemDriver
from tests.storage.manifest_fixtures import blobs, driver

__all__ = ["blobs", "driver"]

R = layout.REPOSITORIES
HEX = digest_of(b"x").hex


async def registry2_repository(driver: IStorageDriver, name: str, kind: str = "_layers") -> None:
    """Write what registry:2 leaves for a repository (one of its three kinds of folder)."""
    if kind == "_layers":
        path = f"{R}/{name}/_layers/sha256/{HEX}/link"
    elif kind == "_manifests":
        path = f"{R}/{name}/_manifests/revisions/sha256/{HEX}/link"
    else:
        path = f"{R}/{name}/_uploads/2b0e5b1c-8a2f-4c3e-9a57-6f1d1f0c4e11/startedat"
    await driver.put_content(path, b"sha256:" + HEX.encode())


def test_provides_interface(driver: IStorageDriver) -> None:
    assert verifyObject(ICatalog, Catalog(driver))


def test_entry_names() -> None:
    for name in ["a", "a/b", "a-b/c.d/e__f"]:
        assert "/" not in entry_name(name)
        assert name_of_entry(entry_name(name)) == name


@pytest_twisted.ensureDeferred
async def test_note_and_list(driver: IStorageDriver) -> None:
    catalog = Catalog(driver)
    assert await catalog.list_repositories() == ([], False)
    for name in ["b/x", "a", "a/b", "a-b", "c"]:
        await registry2_repository(driver, name)
        await catalog.note_repository(name)
        await catalog.note_repository(name)
    # Component by component, as registry:2 walks: "a/b" before "a-b".
    everything = ["a", "a/b", "a-b", "b/x", "c"]
    assert await catalog.list_repositories() == (everything, False)
    assert await catalog.list_repositories(2) == (everything[:2], True)
    assert await catalog.list_repositories("2", "a/b") == (everything[2:4], True)
    assert await catalog.list_repositories(2, "b/x") == (["c"], False)
    assert await catalog.list_repositories(0) == ([], False)
    with pytest.raises(RegistryError) as info:
        await catalog.list_repositories("x")
    assert info.value.code is PAGINATION_NUMBER_INVALID
    await catalog.forget_repository("a-b")
    await catalog.forget_repository("never")
    assert await catalog.list_repositories() == (["a", "a/b", "b/x", "c"], False)


@pytest_twisted.ensureDeferred
async def test_page_bounds(driver: IStorageDriver) -> None:
    catalog = Catalog(driver, default_page=2, max_page=3)
    for name in ["a", "b", "c", "d", "e"]:
        await registry2_repository(driver, name)
        await catalog.note_repository(name)
    assert await catalog.list_repositories() == (["a", "b"], True)
    assert await catalog.list_repositories(100) == (["a", "b", "c"], True)


class _CountedCalls:
    """The driver, counting the calls made of each of its methods."""

    def __init__(self, driver: IStorageDriver) -> None:
        self._driver = driver
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._driver, name)
        if not callable(call):
            return call

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return call(*args, **kwargs)

        return counted


@pytest_twisted.ensureDeferred
async def test_three_thousand_repositories(driver: IStorageDriver) -> None:
    """Listing from the index is one folder listing per page, whatever the repositories'
    depth: a tree walk would list every folder (thousands here)."""
    catalog = Catalog(driver)
    names = [f"team{i % 37}/service-{i:04d}" + ("/sub" if i % 5 == 0 else "") for i in range(3000)]
    for name in names:
        await registry2_repository(driver, name)
        await catalog.note_repository(name)
    await driver.put_content(COMPLETE_MARKER, b"1")
    expected = sorted(names)
    counted = _CountedCalls(driver)
    reader = Catalog(counted)  # type: ignore[arg-type]  # a fresh process: nothing cached
    repositories, more = await reader.list_repositories()
    assert repositories == expected and not more
    full = counted.calls["list"]
    collected: list[str] = []
    last = None
    for _ in range(100):  # 6 pages of 500
        page, more = await reader.list_repositories(500, last)
        collected += page
        if not more:
            break
        last = page[-1]
    assert collected == expected
    paged = counted.calls["list"] - full
    assert full == 1, counted.calls
    assert paged == 6, counted.calls
    # The fallback: the same data as registry:2 left it, found by a full walk.
    await driver.delete(f"{layout.OWN}/catalog")
    repositories, more = await Catalog(driver).list_repositories()
    assert repositories == expected and not more


@pytest_twisted.ensureDeferred
async def test_registry2_data_without_index(driver: IStorageDriver, blobs: BlobStore) -> None:
    await registry2_repository(driver, "alpine")
    await registry2_repository(driver, "library/ubuntu", "_manifests")
    await registry2_repository(driver, "deep/a/b/c/d/e/f", "_manifests")
    await registry2_repository(driver, "nested")
    await registry2_repository(driver, "nested/inner")
    # Decoys: a repository-looking folder inside an _ folder, bad names, stray files.
    await driver.put_content(f"{R}/alpine/_layers/sha256/_layers/x/link", b"x")
    await driver.put_content(f"{R}/alpine/_manifests/tags/_layers/link", b"x")
    await driver.put_content(f"{R}/UPPER/_layers/sha256/{HEX}/link", b"x")
    await driver.put_content(f"{R}/-dash/_layers/sha256/{HEX}/link", b"x")
    await driver.put_content(f"{R}/stray-file", b"x")
    await driver.put_content(f"{R}/notrepo/readme", b"x")
    catalog = Catalog(driver)
    expected = ["alpine", "deep/a/b/c/d/e/f", "library/ubuntu", "nested", "nested/inner"]
    assert await catalog.list_repositories() == (expected, False)
    await driver.stat(COMPLETE_MARKER)
    # registry:2 writes another repository: listed after an explicit rebuild only.
    await registry2_repository(driver, "later")
    assert (await Catalog(driver).list_repositories())[0] == expected
    assert await catalog.rebuild() == sorted([*expected, "later"])
    assert (await Catalog(driver).list_repositories())[0] == sorted([*expected, "later"])


@pytest_twisted.ensureDeferred
async def test_an_upload_alone_is_no_repository(driver: IStorageDriver) -> None:
    """As registry:2: a folder holding only ``_uploads`` (a push started) is not listed, and
    an entry an earlier rebuild wrote for it goes; a tag alone or a layer link alone is one."""
    await registry2_repository(driver, "pushing", "_uploads")
    await registry2_repository(driver, "pushing/inner", "_uploads")
    await registry2_repository(driver, "linked", "_layers")
    await registry2_repository(driver, "revised", "_manifests")
    await driver.put_content(
        f"{R}/tagged/_manifests/tags/v1/current/link", b"sha256:" + HEX.encode()
    )
    await driver.put_content(entry_path("pushing"), b"pushing")
    catalog = Catalog(driver)
    assert await catalog.rebuild() == ["linked", "revised", "tagged"]
    assert await catalog.list_repositories() == (["linked", "revised", "tagged"], False)


@pytest_twisted.ensureDeferred
async def test_rebuild_prunes_vanished(driver: IStorageDriver) -> None:
    catalog = Catalog(driver)
    await registry2_repository(driver, "kept")
    await catalog.note_repository("gone/away")
    await catalog.note_repository("kept")
    assert await catalog.rebuild() == ["kept"]
    assert await catalog.list_repositories() == (["kept"], False)
    # The process-local memo was dropped too: noting again writes the entry again.
    await catalog.note_repository("gone/away")
    assert await catalog.list_repositories() == (["gone/away", "kept"], False)


@pytest_twisted.ensureDeferred
async def test_empty_storage(driver: IStorageDriver) -> None:
    catalog = Catalog(driver)
    assert await catalog.walk() == []
    assert await catalog.list_repositories() == ([], False)
    await catalog.ensure_index()


@pytest_twisted.ensureDeferred
async def test_concurrent_rebuilds_share_one_walk(driver: IStorageDriver) -> None:
    walks = []

    class Counting(Catalog):
        async def walk(self) -> list[str]:
            walks.append(1)
            return await super().walk()

    for i in range(20):
        await registry2_repository(driver, f"r{i:02d}/x")
    catalog = Counting(driver)
    results = await gatherResults([catalog.rebuild(), catalog.rebuild(), catalog.rebuild()])
    if isinstance(driver, FilesystemDriver):
        # Listings run in threads, so the three calls overlap; the in-memory driver answers
        # at once and each rebuild has finished before the next starts.
        assert len(walks) == 1
    assert results[0] == results[1] == results[2] == [f"r{i:02d}/x" for i in range(20)]
    walks.clear()
    first = catalog.rebuild()
    first.addErrback(lambda failure: failure.trap(CancelledError))
    first.cancel()
    assert await catalog.rebuild() == results[0]
    if isinstance(driver, FilesystemDriver):
        assert len(walks) == 1


@pytest_twisted.ensureDeferred
async def test_rebuild_failure_reaches_every_waiter(driver: IStorageDriver) -> None:
    class Broken(Catalog):
        async def walk(self) -> list[str]:
            raise OSError("disk on fire")

    catalog = Broken(driver)
    one, two = catalog.rebuild(), catalog.rebuild()
    for waiter in (one, two):
        with pytest.raises(OSError):
            await waiter
    with pytest.raises(OSError):
        await catalog.list_repositories()
    with pytest.raises(PathNotFoundError):
        await driver.stat(COMPLETE_MARKER)


@pytest_twisted.ensureDeferred
async def test_walk_finds_every_registry2_repository(driver: IStorageDriver) -> None:
    names = [f"org{i % 10}/team{i % 7}/app{i:03d}" for i in range(300)]
    for name in names:
        await registry2_repository(driver, name)
    assert await Catalog(driver).walk() == sorted(names)


@pytest_twisted.ensureDeferred
async def test_noted_names_are_bounded(driver: IStorageDriver) -> None:
    # Clients choose the names a pull-through cache notes: the memo of entries already
    # written keeps the most recent NOTED_MAX, and a name that fell out is noted again.
    catalog = Catalog(driver)
    for n in range(NOTED_MAX + 50):
        await catalog.note_repository(f"team/app{n}")
    assert catalog.noted_count == NOTED_MAX
    await driver.delete(entry_path("team/app0"))
    await catalog.note_repository("team/app0")
    assert catalog.noted_count == NOTED_MAX
    assert await driver.get_content(entry_path("team/app0")) == b"team/app0"


@pytest_twisted.ensureDeferred
async def test_an_entry_a_rebuild_removed_is_written_again(driver: IStorageDriver) -> None:
    """A serving process remembers the entries it wrote; a rebuild in another process that
    removed one (its repository was removed by hand) does not keep a push again unlisted."""
    serving = Catalog(driver)
    await registry2_repository(driver, "zz/gone")
    await serving.note_repository("zz/gone")
    await driver.delete(layout.repository("zz/gone"))
    assert await Catalog(driver).rebuild() == []
    await registry2_repository(driver, "zz/gone")
    await serving.note_repository("zz/gone")
    assert await Catalog(driver).list_repositories() == (["zz/gone"], False)


@pytest_twisted.ensureDeferred
async def test_a_push_while_a_rebuild_removes_its_entry_is_listed(driver: IStorageDriver) -> None:
    """The push lands between the rebuild's look at the folder and its delete of the entry:
    its note still finds the entry, and the rebuild writes it back after the delete."""
    serving = Catalog(driver)
    await registry2_repository(driver, "zz/gone")
    await serving.note_repository("zz/gone")
    await driver.delete(layout.repository("zz/gone"))

    class PushBeforeDelete:
        def __getattr__(self, name: str) -> Any:
            return getattr(driver, name)

        async def delete(self, path: str) -> None:
            if path == entry_path("zz/gone"):
                await registry2_repository(driver, "zz/gone")
                await serving.note_repository("zz/gone")
            await driver.delete(path)

    assert await Catalog(PushBeforeDelete()).rebuild() == []  # type: ignore[arg-type]
    assert await Catalog(driver).list_repositories() == (["zz/gone"], False)


class _Full:
    """The driver, refusing every write while ``full`` as a full disk does (deletes work)."""

    def __init__(self, driver: IStorageDriver) -> None:
        self._driver = driver
        self.full = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    async def put_content(self, path: str, data: bytes) -> None:
        if self.full:
            error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise StorageFull(f"writing {path}: {error.strerror}") from error
        await self._driver.put_content(path, data)


@pytest_twisted.ensureDeferred
async def test_an_entry_refused_for_want_of_room_is_listed_from_memory(
    driver: IStorageDriver,
) -> None:
    """
    Entries refused on a full disk: noting them does not fail (what they are about is
    stored), the process lists them from memory with one warning, and the index is marked
    incomplete, so that a process starting meanwhile walks.  Once there is room, the listing
    that looks again (`UNWRITTEN_RECHECK` on) finds it, the next writes the index, and a
    process listing the index all along lists them from then on.
    """
    clock = Clock()
    storage = _Full(driver)
    catalog, other = Catalog(storage, clock=clock), Catalog(driver)  # type: ignore[arg-type]
    for name in ("a", "c"):
        await registry2_repository(driver, name)
        await catalog.note_repository(name)
    assert await catalog.list_repositories() == (["a", "c"], False)
    assert await other.list_repositories() == (["a", "c"], False)
    storage.full = True
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for name in ("b", "d"):
            await registry2_repository(driver, name)  # its link, before it is noted
            await catalog.note_repository(name)
            await catalog.note_repository(name)
        everything = (["a", "b", "c", "d"], False)
        assert await catalog.list_repositories() == everything
        with pytest.raises(PathNotFoundError):
            await driver.stat(COMPLETE_MARKER)
        assert await Catalog(storage).list_repositories() == everything  # type: ignore[arg-type]
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "catalog entry" in formatEvent(e)]
    assert lines == [
        "the catalog entry of b cannot be written (no space left on device): listing the 3"
        " repositories from memory until there is room"
    ]
    storage.full = False
    assert await catalog.list_repositories() == everything  # not looked at again yet
    with pytest.raises(PathNotFoundError):
        await driver.stat(entry_path("b"))
    clock.advance(UNWRITTEN_RECHECK)
    assert await catalog.list_repositories() == everything
    assert await catalog.list_repositories() == everything
    assert await driver.get_content(entry_path("b")) == b"b"
    assert await driver.get_content(entry_path("d")) == b"d"
    await driver.stat(COMPLETE_MARKER)
    assert await other.list_repositories() == everything


class _FullAtTheMarker(_Full):
    """The disk fills while the first walk writes the index: its ``complete`` marker waits
    for ``release`` and is then refused."""

    def __init__(self, driver: IStorageDriver) -> None:
        super().__init__(driver)
        self.at_marker: Deferred[None] = Deferred()
        self.release: Deferred[None] = Deferred()

    async def put_content(self, path: str, data: bytes) -> None:
        if path == COMPLETE_MARKER:
            self.at_marker.callback(None)
            await self.release
            self.full = True
        await super().put_content(path, data)


@pytest_twisted.ensureDeferred
async def test_a_push_during_the_first_walk_is_listed_when_the_disk_fills(
    driver: IStorageDriver,
) -> None:
    """
    The first walk (at start, on storage without a complete index) lists the folders before a
    push makes its repository; the push writes its entry; then the disk fills before the walk
    marks the index complete.  The registry lists from memory: it listed only what the walk
    had found (none of the pushed repository, in a CI run); now the entries written meanwhile
    too.
    """
    storage = _FullAtTheMarker(driver)
    catalog = Catalog(storage)  # type: ignore[arg-type]
    await registry2_repository(driver, "a")
    building = ensureDeferred(catalog.ensure_index())
    await storage.at_marker  # walked (found "a"), indexed, now writing the marker
    await registry2_repository(driver, "team/app")
    await catalog.note_repository("team/app")
    storage.release.callback(None)
    await building
    assert await catalog.list_repositories() == (["a", "team/app"], False)
