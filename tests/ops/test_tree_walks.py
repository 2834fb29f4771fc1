"""
The walks of ``repositories/`` (catalog, gc, upload purging) on trees nobody should have made:
a folder 1,500 levels deep, a symbolic link loop.  Commands run as child processes, the
registry's periodic purge in a registry serving over loopback.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry import cli as cli_module
from registry.storage import layout
from registry.storage.blobs import BlobStore
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
    assert result.out.startswith("purge-uploads: purged 1 uploads older than 1h in ")
    assert result.err == ""
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
    assert result.out.startswith("purge-uploads: purged 1 uploads older than 1h in ")
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
    assert time.monotonic() - started < 5
    assert code == cli_module.EXIT_FAILED
    assert err.lines == [
        "txregistry purge-uploads: failed: RecursionError: maximum recursion depth exceeded\n"
    ]


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
