"""The driver suite against the filesystem and in-memory drivers."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from registry.storage import filesystem, preallocate
from registry.storage.driver import (
    IEmptyFolders,
    NotAFileError,
    PathBusyError,
    PathNotFoundError,
    StorageError,
    StorageFull,
    VersionChangedError,
)
from registry.storage.filesystem import FilesystemDriver
from registry.storage.memory import MemoryDriver
from tests.storage.driver_suite import DriverSuite


class TestMemoryDriver(DriverSuite):
    @pytest.fixture
    def driver(self) -> MemoryDriver:
        return MemoryDriver()


class TestFilesystemDriver(DriverSuite):
    folder_content_error = NotAFileError
    sees_writers = False

    @pytest.fixture
    def driver(self, tmp_path: Path, thread_pool: ThreadPool) -> FilesystemDriver:
        return FilesystemDriver(str(tmp_path / "root"), reactor, thread_pool)

    def test_paths_stay_in_root(self, driver: FilesystemDriver) -> None:
        with pytest.raises(ValueError):
            driver._full("a/../../etc")

    @pytest_twisted.ensureDeferred
    async def test_a_write_replaces_an_empty_folder_only(
        self, driver: FilesystemDriver, tmp_path: Path
    ) -> None:
        """
        A folder standing where a file goes (damage) is replaced by a write or a move when
        empty (nothing can be lost), refused naming the path when it holds something.
        """
        root = tmp_path / "root"
        await driver.put_content("seed", b"")
        (root / "empty").mkdir()
        await driver.put_content("empty", b"x")
        assert (root / "empty").read_bytes() == b"x"
        await driver.put_content("moved-from", b"y")
        (root / "moved").mkdir()
        await driver.move("moved-from", "moved")
        assert (root / "moved").read_bytes() == b"y"
        (root / "full" / "inside").mkdir(parents=True)
        with pytest.raises(NotAFileError, match="storage damaged at full: a folder where"):
            await driver.put_content("full", b"z")
        await driver.put_content("moved-from", b"y")
        with pytest.raises(NotAFileError):
            await driver.move("moved-from", "full")
        assert (root / "full" / "inside").is_dir()
        assert sorted(p.name for p in root.iterdir()) == [
            "empty",
            "full",
            "moved",
            "moved-from",
            "seed",
        ]

    @pytest_twisted.ensureDeferred
    async def test_one_appender_at_a_time(self, driver: FilesystemDriver, tmp_path: Path) -> None:
        """An appender has the file to itself (a lock other processes see too) until it is
        closed, also after ``commit``, while its caller moves the file away; one that opens
        the path after that move finds nothing to continue, never the moved one."""
        await (await driver.writer("u/data")).close()
        first = await driver.writer("u/data", append=True)
        first.write(b"first")
        with pytest.raises(PathBusyError):
            await driver.writer("u/data", append=True)
        await first.commit()
        with pytest.raises(PathBusyError):  # committed, not closed: still its own
            await driver.writer("u/data", append=True)
        await driver.move("u/data", "blob/data")
        await first.close()
        with pytest.raises(PathNotFoundError):  # the moved one is out of reach
            await driver.writer("u/data", append=True)
        assert (tmp_path / "root/blob/data").read_bytes() == b"first"
        await (await driver.writer("u/data")).close()  # a new upload there: appendable again
        second = await driver.writer("u/data", append=True)
        assert second.size == 0
        await second.close()


MiB = 1024 * 1024


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


async def wait_until_empty(folder: Path) -> None:
    for _ in range(200):
        if not any(folder.iterdir()):
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{folder} still holds {sorted(p.name for p in folder.iterdir())}")


class TestFilesystemReservation:
    """`reserve` pre-allocates in windows, and what was not written is given back."""

    @pytest.fixture
    def driver(self, tmp_path: Path, thread_pool: ThreadPool) -> FilesystemDriver:
        return FilesystemDriver(str(tmp_path / "root"), reactor, thread_pool)

    @pytest_twisted.ensureDeferred
    async def test_windows_then_release(self, driver: FilesystemDriver, tmp_path: Path) -> None:
        path = tmp_path / "root/w/big"
        writer = await driver.writer("w/big")
        await writer.reserve(200 * MiB)
        if allocated(path) == 0:
            pytest.skip("this filesystem does not pre-allocate")
        # One window, not the 200 MiB announced.
        assert 64 * MiB <= allocated(path) < 65 * MiB
        assert path.stat().st_size == 0
        for _ in range(65):
            writer.write(b"x" * MiB)
        # The write past the first window took the next one.
        assert 128 * MiB <= allocated(path) < 129 * MiB
        await writer.close()
        assert path.stat().st_size == 65 * MiB
        assert 65 * MiB <= allocated(path) < 65 * MiB + 64 * 1024

    @pytest_twisted.ensureDeferred
    async def test_exact_body_keeps_no_spare(
        self, driver: FilesystemDriver, tmp_path: Path
    ) -> None:
        data = os.urandom(3 * MiB + 5)
        writer = await driver.writer("w/exact")
        await writer.reserve(len(data))
        writer.write(data)
        await writer.commit()
        path = tmp_path / "root/w/exact"
        assert path.read_bytes() == data
        assert allocated(path) < len(data) + 64 * 1024

    @pytest_twisted.ensureDeferred
    async def test_full_disk_is_a_storage_error(
        self, driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def no_space(fd: int, offset: int, length: int) -> bool:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(filesystem, "reserve_space", no_space)
        writer = await driver.writer("w/full")
        with pytest.raises(
            StorageError, match="reserving 1048576 bytes for w/full: No space left on device"
        ):
            await writer.reserve(MiB)
        await writer.cancel()

    def test_partial_allocation_given_back(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ext4 keeps what it allocated before ENOSPC; reserve_space must hand it back."""
        real = preallocate._fallocate()
        if real is None:
            pytest.skip("no fallocate here")

        def runs_out(fd: int, mode: int, offset: int, length: int) -> int:
            real(fd, mode, offset, 8 * MiB)
            ctypes.set_errno(errno.ENOSPC)
            return -1

        monkeypatch.setattr(preallocate, "_fallocate", lambda: runs_out)
        path = tmp_path / "f"
        with open(path, "wb") as file:
            file.write(b"d" * 4096)
            file.flush()
            with pytest.raises(OSError) as raised:
                preallocate.reserve_space(file.fileno(), 4096, 100 * MiB)
        assert raised.value.errno == errno.ENOSPC
        if allocated(path) == 0:
            pytest.skip("this filesystem does not pre-allocate")
        assert path.stat().st_size == 4096
        assert allocated(path) < MiB


class TestFilesystemTrash:
    """Deleting renames into ``.trash`` and empties it in the pool."""

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        return tmp_path / "root"

    @pytest.fixture
    def driver(self, root: Path, thread_pool: ThreadPool) -> FilesystemDriver:
        return FilesystemDriver(str(root), reactor, thread_pool)

    @pytest_twisted.ensureDeferred
    async def test_gone_at_once_and_emptied(self, driver: FilesystemDriver, root: Path) -> None:
        await driver.put_content("d/sub/file", b"x" * 100_000)
        await driver.put_content("d/other", b"y")
        await driver.delete("d/sub")
        assert not (root / "d/sub").exists()
        assert await driver.list("d") == ["other"]
        await wait_until_empty(root / ".trash")
        with pytest.raises(PathNotFoundError):
            await driver.delete("d/sub")
        with pytest.raises(PathNotFoundError):
            await driver.delete("d/other/below-a-file")
        assert await driver.get_content("d/other") == b"y"

    @pytest_twisted.ensureDeferred
    async def test_deletes_wait_once_the_pool_is_far_behind(
        self, root: Path, one_thread_pool: ThreadPool
    ) -> None:
        """
        Deleting in a loop (the upload purge) queued one emptying per path, faster than the
        pool ran them: memory grew with the number deleted.  Past `_TRASH_BACKLOG` waiting
        emptyings, a delete waits for the pool (its path gone from its place already).
        """
        import threading

        from twisted.internet.threads import deferToThreadPool

        driver = FilesystemDriver(str(root), reactor, one_thread_pool)
        count = 3 * filesystem._TRASH_BACKLOG
        for i in range(count):
            await driver.put_content(f"d/{i}/file", b"x")
        release = threading.Event()
        holder = deferToThreadPool(reactor, one_thread_pool, release.wait, 30)
        try:
            deleting = Deferred.fromCoroutine(self._delete_all(driver, count))
            assert not deleting.called
            waiting = filesystem._TRASH_BACKLOG + 1
            assert len(list((root / ".trash").iterdir())) == waiting
            assert len(list((root / "d").iterdir())) == count - waiting
        finally:
            release.set()
        await holder
        await deleting
        assert not (root / "d").exists()
        await wait_until_empty(root / ".trash")

    @staticmethod
    async def _delete_all(driver: FilesystemDriver, count: int) -> None:
        for i in range(count):
            await driver.delete(f"d/{i}")
        await driver.delete("d")

    @pytest_twisted.ensureDeferred
    async def test_leftovers_emptied_at_start(self, root: Path, thread_pool: ThreadPool) -> None:
        (root / ".trash/abc/deep").mkdir(parents=True)
        (root / ".trash/abc/deep/data").write_bytes(b"z" * 1000)
        (root / ".trash/file").write_bytes(b"z")
        FilesystemDriver(str(root), reactor, thread_pool).empty_trash()
        await wait_until_empty(root / ".trash")

    @pytest_twisted.ensureDeferred
    async def test_a_trash_gone_while_emptying_is_one_warning(
        self, driver: FilesystemDriver, root: Path, thread_pool: ThreadPool
    ) -> None:
        """The storage changed under a pending emptying (a root replaced, a lost mount): one
        line, no traceback (the log watch fails the test on one), the rest at next start."""
        import threading

        from twisted.internet.threads import deferToThreadPool
        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []

        def observe(event: dict[str, object]) -> None:
            lines.append(formatEvent(event))

        await driver.put_content("d/file", b"x")
        # Hold every pool thread so the emptying waits until the trash is gone.
        release = threading.Event()
        holders = [
            deferToThreadPool(reactor, thread_pool, release.wait, 30)
            for _ in range(thread_pool.max)
        ]
        globalLogPublisher.addObserver(observe)
        try:
            await driver.delete("d/file")
            (root / ".trash").rename(root / "trash-moved")
            (root / ".trash").write_bytes(b"a file now")
            release.set()
            for holder in holders:
                await holder
            for _ in range(500):  # bounded: the emptying ran once the pool was free
                if any("could not empty the storage trash" in line for line in lines):
                    break
                await deferLater(reactor, 0.01, lambda: None)
        finally:
            release.set()
            globalLogPublisher.removeObserver(observe)
        assert [line for line in lines if "trash" in line] == [
            "could not empty the storage trash: Not a directory"
        ]

    @pytest_twisted.ensureDeferred
    async def test_without_a_usable_trash(self, driver: FilesystemDriver, root: Path) -> None:
        """A file where the trash would be: deleting still works, in place."""
        root.mkdir()
        (root / ".trash").write_bytes(b"not a folder")
        await driver.put_content("t/a/b", b"1")
        await driver.delete("t/a")
        assert not (root / "t/a").exists()
        with pytest.raises(PathNotFoundError):
            await driver.delete("t/a")
        driver.empty_trash()  # nothing to do, and no error
        assert (root / ".trash").read_bytes() == b"not a folder"


@pytest.mark.parametrize("kind", ["filesystem", "memory"])
@pytest_twisted.ensureDeferred
async def test_appending_never_creates(kind: str, tmp_path: Path, thread_pool: ThreadPool) -> None:
    """An upload cancelled while a PATCH was on its way: the PATCH's appender must not make
    the upload's folder and data again (it resurrected the upload after its DELETE)."""
    root = tmp_path / "root"
    driver = (
        FilesystemDriver(str(root), reactor, thread_pool)
        if kind == "filesystem"
        else MemoryDriver()
    )
    with pytest.raises(PathNotFoundError):
        await driver.writer("repo/_uploads/u1/data", append=True)
    assert not (root / "repo").exists()
    writer = await driver.writer("repo/_uploads/u1/data")
    await writer.close()
    await driver.delete("repo/_uploads/u1")
    with pytest.raises(PathNotFoundError):
        await driver.writer("repo/_uploads/u1/data", append=True)
    with pytest.raises(PathNotFoundError):
        await driver.stat("repo/_uploads/u1")


@pytest_twisted.ensureDeferred
async def test_create_without_hard_links(
    tmp_path: Path, thread_pool: ThreadPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links (vfat, some network and FUSE mounts: link(2)
    says EPERM), create-if-absent still works, and still refuses an existing file: gc
    could not start there at all."""

    def no_links(source: str, target: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(filesystem.os, "link", no_links)
    driver = FilesystemDriver(str(tmp_path), reactor, thread_pool)
    await driver.create("own/marker", b"first")
    assert await driver.get_content("own/marker") == b"first"
    with pytest.raises(VersionChangedError):
        await driver.create("own/marker", b"second")
    assert await driver.get_content("own/marker") == b"first"
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["marker"]


@pytest_twisted.ensureDeferred
async def test_remove_empty_folders(tmp_path: Path, thread_pool: ThreadPool) -> None:
    """
    Empty folders go from ``path`` upward, each only if empty (``rmdir``), up to ``keep``
    and never ``keep`` itself; one already gone is passed over, a file or a folder with
    anything in it stops the climb.
    """
    driver = FilesystemDriver(str(tmp_path), reactor, thread_pool)
    assert verifyObject(IEmptyFolders, driver)
    (tmp_path / "r/a/b/c/_uploads").mkdir(parents=True)
    (tmp_path / "r/a/kept").write_bytes(b"")
    assert await driver.remove_empty_folders("r/a/b/c/_uploads", "r") == 3
    assert sorted(p.name for p in (tmp_path / "r/a").iterdir()) == ["kept"]
    assert await driver.remove_empty_folders("r/a/gone/_uploads", "r") == 0
    (tmp_path / "r/a/kept").unlink()
    assert await driver.remove_empty_folders("r/a/gone/_uploads", "r") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r"]
    assert not any((tmp_path / "r").iterdir())
    (tmp_path / "r/x").write_bytes(b"a file, not a folder")
    assert await driver.remove_empty_folders("r/x", "r") == 0
    assert (tmp_path / "r/x").read_bytes() == b"a file, not a folder"
    with pytest.raises(ValueError):
        await driver.remove_empty_folders("r", "r")
    with pytest.raises(ValueError):
        await driver.remove_empty_folders("rx/a", "r")


@pytest.mark.parametrize("meanwhile", [False, True], ids=["alone", "meanwhile"])
@pytest_twisted.ensureDeferred
async def test_a_write_that_fails_removes_the_folders_it_made(
    meanwhile: bool, tmp_path: Path, thread_pool: ThreadPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A full disk makes the folders of a write, then refuses its bytes: the folders it made
    go (a link's folders left behind made a repository of a name never pushed), those that
    were there stay, empty ones too, and so does one another write put a file in meanwhile.
    """
    driver = FilesystemDriver(str(tmp_path), reactor, thread_pool)
    (tmp_path / "repo/kept").mkdir(parents=True)

    def no_room(source: str, full: str, path: str) -> None:
        if meanwhile:
            (tmp_path / "repo/kept/a/other").write_bytes(b"")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(filesystem, "_replace", no_room)
    with pytest.raises(StorageFull, match="writing repo/kept/a/b/link: No space left"):
        await driver.put_content("repo/kept/a/b/link", b"x")
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["repo", "repo/kept", *(["repo/kept/a", "repo/kept/a/other"] * meanwhile)]


class _PurgedMeanwhile(FilesystemDriver):
    """
    Removes one folder (``rmdir``, as the upload purge does with the folders it empties)
    right after this driver made it for a write: between the ``mkdir`` of a parent and that
    of its child, or between the last ``mkdir`` and the ``open`` of the file.
    """

    def __init__(self, victim: str, *args: Any) -> None:
        super().__init__(*args)
        self.victim: str | None = os.path.join(self.root, victim)

    def _make_folder(self, directory: str, made: list[str] | None = None) -> None:
        super()._make_folder(directory, made)
        if directory == self.victim:
            self.victim = None
            os.rmdir(directory)


@pytest.mark.parametrize("victim", ["repo", "repo/_uploads/u1"], ids=["parent", "folder"])
@pytest.mark.parametrize("write", ["put_content", "create", "writer", "move"])
@pytest_twisted.ensureDeferred
async def test_a_write_makes_again_a_folder_removed_meanwhile(
    victim: str, write: str, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """
    A push to a name whose emptied folders the purge removes at that moment: the write makes
    them again, rather than failing with "No such file or directory" (a 503 for a POST).
    """
    driver = _PurgedMeanwhile(victim, str(tmp_path), reactor, thread_pool)
    path = "repo/_uploads/u1/file"
    if write == "put_content":
        await driver.put_content(path, b"x")
    elif write == "create":
        await driver.create(path, b"x")
    elif write == "writer":
        writer = await driver.writer(path)
        writer.write(b"x")
        await writer.commit()
    else:
        (tmp_path / "source").write_bytes(b"x")
        await driver.move("source", path)
    assert driver.victim is None
    assert (tmp_path / path).read_bytes() == b"x"
    assert sorted(p.name for p in (tmp_path / "repo/_uploads/u1").iterdir()) == ["file"]
