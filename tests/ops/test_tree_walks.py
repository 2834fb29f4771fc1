"""
The walks of ``repositories/`` (catalog, gc, upload purging) on trees nobody should have made:
a folder 1,500 levels deep, a symbolic link loop, a level as wide as clients care to make it.
Commands run as child processes, the registry's periodic purge in a registry serving over
loopback.
"""

from __future__ import annotations

import builtins
import datetime
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry import cli as cli_module
from registry.ops.progress import CountingDriver
from registry.ops.purge import purge_uploads
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import Catalog, walk_folders
from registry.storage.filesystem import FilesystemDriver
from registry.storage.uploads import UploadStore
from tests.e2e.harness import write_config
from tests.ops import scenario
from tests.ops.test_cli import Result, cli_sync, config, start_registry
from tests.ops.test_damaged_storage import warnings

__all__ = ["config", "start_registry", "warnings"]

DEPTH = 1500


def run_cli(*arguments: str, timeout: float = 60.0) -> Result:
    """The command as a child process; one that does not exit in time fails the test."""
    return cli_sync(*arguments, timeout=timeout)


def make_deep(parent: Path, depth: int = DEPTH) -> None:
    """``parent/zdeep/aaaa/aaaa/...``, deeper than PATH_MAX: made relative to each folder."""
    fd = os.open(parent, os.O_RDONLY)
    try:
        for name in ["zdeep"] + ["aaaa"] * depth:
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def remove_deep(parent: Path) -> None:
    """
    Undo `make_deep` with two descriptors and no recursion (shutil.rmtree recurses once per
    level): the top folder's child is moved up in its place, level by level.
    """
    fd = os.open(parent, os.O_RDONLY)
    try:
        for _ in range(DEPTH + 2):
            try:
                os.rmdir("zdeep", dir_fd=fd)
                return
            except OSError:
                pass
            top = os.open("zdeep", os.O_RDONLY, dir_fd=fd)
            try:
                os.rename("aaaa", "zdeep.next", src_dir_fd=top, dst_dir_fd=fd)
            finally:
                os.close(top)
            os.rmdir("zdeep", dir_fd=fd)
            os.rename("zdeep.next", "zdeep", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


@pytest.fixture
def repositories(root: Path) -> Iterator[Path]:
    path = root / layout.REPOSITORIES
    yield path
    if (path / "zdeep").exists():
        remove_deep(path)


async def old_upload(driver: FilesystemDriver, name: str) -> str:
    uploads = UploadStore(driver, BlobStore(driver))
    upload = await uploads.start(name)
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    stamp = started.isoformat().replace("+00:00", "Z").encode()
    await driver.put_content(layout.upload_started_at(name, upload), stamp)
    # Idle since then: nothing written to its data either.
    data = os.path.join(driver.root, layout.upload_data(name, upload))
    if os.path.exists(data):
        os.utime(data, (started.timestamp(), started.timestamp()))
    return upload


@pytest_twisted.ensureDeferred
async def test_commands_on_a_very_deep_folder(
    driver: FilesystemDriver, root: Path, config: Path, repositories: Path
) -> None:
    """
    The purge's walk recursed until RecursionError, and the command then never exited: every
    walk is iterative now and stops where no repository name can be.
    """
    await scenario.build_aged(driver, root)
    upload = await old_upload(driver, "app")
    make_deep(repositories)
    result = run_cli("purge-uploads", "--config", str(config), "--age", "1h")
    assert result.code == 0, result
    assert result.out.startswith("purge-uploads: purged 1 upload idle for longer than 1h in ")
    # Nothing but progress lines (a slow machine walks the deep folder for over a second).
    assert all(" folders listed, " in line for line in result.err.splitlines()), result.err
    assert not await UploadStore(driver, BlobStore(driver)).exists("app", upload)
    result = run_cli("catalog-rebuild", "--config", str(config))
    assert result.code == 0, result
    assert result.out.startswith("catalog-rebuild: 2 repositories (2 added, 0 removed) in ")
    result = run_cli("gc", "--config", str(config), "--dry-run", "--delete-untagged")
    assert result.code == 0, result
    assert result.out.startswith("gc: scanned 2 repositories, 11 manifests; ")


@pytest_twisted.ensureDeferred
async def test_commands_do_not_follow_a_symbolic_link_loop(
    driver: FilesystemDriver, root: Path, config: Path, repositories: Path
) -> None:
    """
    ``app/loop -> ..`` made the catalog list ``app/loop/app``, ``app/loop/app/loop/app`` ...,
    gc count (and delete) the same manifests under each, and every purge fail: the link is
    reported in one line and skipped.
    """
    await scenario.build_aged(driver, root)
    await old_upload(driver, "other")
    (repositories / "app" / "loop").symlink_to("..")
    line = f"warn: skipping symbolic link {layout.REPOSITORIES}/app/loop: not followed in "
    result = run_cli("catalog-rebuild", "--config", str(config))
    assert result.code == 0, result
    assert result.out.startswith("catalog-rebuild: 2 repositories (2 added, 0 removed) in ")
    assert result.err.splitlines() == [f"{line}repositories/"]
    result = run_cli("gc", "--config", str(config), "--dry-run", "--delete-untagged")
    assert result.code == 0, result
    assert result.out.startswith("gc: scanned 2 repositories, 11 manifests; ")
    assert "and 4 untagged manifests; nothing deleted" in result.out
    assert result.err.splitlines() == [f"{line}repositories/"]
    result = run_cli("purge-uploads", "--config", str(config), "--age", "1h")
    assert result.code == 0, result
    assert result.out.startswith("purge-uploads: purged 1 upload idle for longer than 1h in ")
    assert result.err.splitlines() == [f"{line}repositories/"]


@pytest_twisted.ensureDeferred
async def test_periodic_purge_on_a_deep_tree_and_a_loop(
    driver: FilesystemDriver,
    root: Path,
    repositories: Path,
    start_registry: Any,
    warnings: list[str],
) -> None:
    """
    The serving registry's purge logged a ~1,000-line traceback at each run and the process
    then ignored SIGTERM: it purges now, and says once that it skips the link.
    """
    await scenario.build_aged(driver, root)
    make_deep(repositories)
    (repositories / "app" / "loop").symlink_to("..")
    uploads = UploadStore(driver, BlobStore(driver))
    upload = await old_upload(driver, "app")
    await start_registry(
        {
            "storage": {"rootdirectory": str(root)},
            "uploads": {"purge_interval": "1s", "purge_age": "1h"},
        }
    )
    for _ in range(100):  # up to 10 s
        if not await uploads.exists("app", upload):
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert not await uploads.exists("app", upload)
    second = await old_upload(driver, "app")
    for _ in range(100):
        if not await uploads.exists("app", second):
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert not await uploads.exists("app", second)
    link = f"{layout.REPOSITORIES}/app/loop"
    assert [w for w in warnings if link in w] == [
        f"skipping symbolic link {link}: not followed in repositories/"
    ]
    assert not [w for w in warnings if "purge failed" in w], warnings


@pytest_twisted.ensureDeferred
async def test_an_unforeseen_error_never_leaves_the_command_waiting(
    tmp_path: Path, driver: FilesystemDriver, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    After an error nobody foresaw, the command prints its line and returns without waiting
    for its storage threads: one stuck there (here, forever blocked) kept it from exiting.
    """
    await scenario.build_aged(driver, root)
    stuck = threading.Event()

    async def broken(reactor_: Any, storage: Any, args: Any, config_: Any, term: Any) -> int:
        storage._in_thread(stuck.wait)
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setitem(cli_module.TASKS, "purge-uploads", broken)
    config_path = write_config(tmp_path / "t.cfg", {"storage": {"rootdirectory": str(root)}})
    args = cli_module.build_parser().parse_args(["purge-uploads", "--config", str(config_path)])
    out, err = _Lines(), _Lines()
    started = time.monotonic()
    try:
        code = await cli_module.run(reactor, args, cli_module.Terminal(out, err))  # type: ignore[arg-type]
    finally:
        stuck.set()
    assert time.monotonic() - started < 60  # a liveness bound: stuck, it would never return
    assert code == cli_module.EXIT_FAILED
    assert err.lines == [
        "txregistry purge-uploads: failed: RecursionError: maximum recursion depth exceeded\n"
    ]


class _Listing(builtins.list[str]):
    """A folder listing that can be weakly referenced, so that it is counted while alive."""


@attrs.define(slots=False)
class HeldListings(CountingDriver):
    """
    The real driver, counting the folder listings alive at once (held by whoever asked for
    them, or by a Deferred not yet awaited) and the listings running at once.
    """

    alive: int = 0
    most_alive: int = 0
    running: int = 0
    most_running: int = 0

    def _held(self, names: builtins.list[str]) -> _Listing:
        listing = _Listing(names)
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(listing, self._gone)
        return listing

    def _gone(self) -> None:
        self.alive -= 1

    async def _listing(self, listed: Any) -> Any:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            return await listed
        finally:
            self.running -= 1

    async def list(self, path: str) -> builtins.list[str]:
        return self._held(await self._listing(super().list(path)))

    async def list_apart(self, path: str) -> tuple[builtins.list[str], builtins.list[str]]:
        plain, links = await self._listing(super().list_apart(path))
        return self._held(plain), links


WIDE = 300


@pytest_twisted.ensureDeferred
async def test_a_wide_level_is_walked_holding_a_few_listings(
    driver: FilesystemDriver, root: Path, repositories: Path
) -> None:
    """
    The walk went level by level, holding every listing of a level at once: one per
    repository a client made side by side (303 here).  Now it holds those of the folders it
    is in, and the ones it reads ahead (``concurrency``), however wide the level.
    """
    await scenario.build_aged(driver, root)
    for i in range(WIDE):  # what abandoned pushes to new names leave
        await old_upload(driver, f"wide/r{i:03d}")
    held = HeldListings(driver)
    assert await Catalog(held, concurrency=8).walk() == ["app", "other"]
    assert held.listed > WIDE
    # repositories/, wide, the folder yielded, and 8 read ahead.
    assert held.most_alive <= 8 + 3, held.most_alive
    assert held.most_running == 8

    held = HeldListings(driver)
    assert await purge_uploads(held, 3600, time.time()) == WIDE
    assert held.listed > 2 * WIDE
    # The same, and the purge's listing of an _uploads folder; 16 read ahead by default.
    assert held.most_alive <= 16 + 4, held.most_alive
    assert held.most_running == 16


@pytest_twisted.ensureDeferred
async def test_the_walk_is_depth_first_and_runs_concurrency_listings_at_most(
    driver: FilesystemDriver, repositories: Path
) -> None:
    """
    A folder comes before what is in it, siblings in order, every folder a name can be
    (and no other) is listed once, and no more than ``concurrency`` listings run at once.
    """
    for folder in ["a/b/c", "a/_layers/x", "a/UPPER/d", "d/e", "z"]:
        (repositories / folder).mkdir(parents=True)
    for i in range(40):
        (repositories / "m" / f"r{i:02d}" / "s").mkdir(parents=True)
    held = HeldListings(driver)
    walked = [name async for name, _ in walk_folders(held, "", concurrency=3)]
    expected = ["", "a", "a/b", "a/b/c", "d", "d/e", "m"]
    for i in range(40):
        expected += [f"m/r{i:02d}", f"m/r{i:02d}/s"]
    assert walked == [*expected, "z"]
    assert held.listed == len(walked)
    assert held.most_running == 3
    walked = [name async for name, _ in walk_folders(held, "m/r07", concurrency=3)]
    assert walked == ["m/r07", "m/r07/s"]


class _Lines:
    """A text stream that keeps what is printed, one entry per line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        if text == "\n" and self.lines:
            self.lines[-1] += text
        else:
            self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass
