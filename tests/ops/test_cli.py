"""
``python -m registry.cli`` end to end, as a child process over a real data folder: output,
exit statuses, and (for gc) that what is kept still pulls over HTTP afterwards.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool

from registry import cli as cli_module
from registry.api.digests import Digest
from registry.ops import gcstatus
from registry.storage import gcguard, layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import ENTRIES_DIR
from registry.storage.filesystem import FilesystemDriver
from registry.storage.reserve import RESERVE, RESERVE_SIZE
from registry.storage.uploads import UploadStore
from tests.e2e.conftest import start_registry
from tests.e2e.harness import REPO_ROOT, start_in_process, write_config
from tests.e2e.test_full_disk import fill, small_disk  # noqa: F401 - fixture
from tests.ops import scenario
from tests.ops.scenario import (
    DELETED_DEFAULT,
    DELETED_UNTAGGED,
    age_everything,
    assert_pullable,
    blob_digests,
    make_young,
)
from tests.proxy.util import wait_for

__all__ = ["start_registry"]


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


def cli_sync(
    *arguments: str,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path = REPO_ROOT,
) -> Result:
    """The command as a child process; one that does not exit in time fails the test."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    environment["PYTHONPATH"] = str(REPO_ROOT)
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "registry.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def parsed_in_process(*arguments: str) -> Result:
    """The command line parsed as the command parses it, in this process: for usage errors,
    which argparse reports before anything runs."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_module.parse_arguments(arguments)
        except SystemExit as exited:
            code = exited.code
    assert isinstance(code, int), code
    return Result(code, out.getvalue(), err.getvalue())


async def cli(*arguments: str, env: dict[str, str] | None = None) -> Result:
    """Run in a thread: the registry under test may be serving from this reactor."""
    result: Result = await deferToThread(cli_sync, *arguments, env=env)
    return result


@pytest.fixture
def config(tmp_path: Path, root: Path) -> Path:
    return write_config(tmp_path / "tap.cfg", {"storage": {"rootdirectory": str(root)}})


def test_empty_storage_root_is_refused(tmp_path: Path) -> None:
    # The command runs in tmp_path: an empty root would have been walked (and written) there.
    empty = write_config(tmp_path / "empty.cfg", {"storage": {"rootdirectory": ""}})
    for command in ("gc", "catalog-rebuild", "reindex-referrers", "purge-uploads"):
        result = cli_sync(command, "--config", str(empty), cwd=tmp_path)
        assert result.code == 2, result
        assert result.err.splitlines() == [
            "txregistry: configuration error: [storage] rootdirectory: empty (the filesystem"
            " driver needs a folder; without one it would store in the current directory)"
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.cfg"]


def test_help_lists_commands() -> None:
    result = cli_sync("--help")
    assert result.code == 0
    for command in ("gc", "catalog-rebuild", "reindex-referrers", "purge-uploads"):
        assert command in result.out
    result = cli_sync("gc", "--help")
    assert result.code == 0
    for option in ("--dry-run", "--delete-untagged", "--grace", "--config"):
        assert option in result.out


def test_config_error_is_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.cfg", {"storage": {"rootdirectry": "/x"}})
    result = cli_sync("gc", "--config", str(bad))
    assert result.code == 2
    assert result.err.strip() == (
        "txregistry: configuration error: [storage] rootdirectry: unknown key"
    )
    assert result.out == ""
    result = cli_sync("gc", "--config", str(tmp_path / "missing.cfg"))
    assert result.code == 2
    assert "cannot read config file" in result.err
    assert "Traceback" not in result.err
    result = cli_sync("gc", "--grace", "soon")
    assert result.code == 2
    assert "not a duration" in result.err


def test_bad_option_values_are_usage_errors(tmp_path: Path) -> None:
    """Refused by argparse (exit 2, an error line naming the option), before any storage."""
    config = write_config(
        tmp_path / "tap.cfg", {"storage": {"rootdirectory": str(tmp_path / "nowhere")}}
    )
    cases = [
        (("gc", "--concurrency", "0"), "argument --concurrency: must be at least 1: '0'"),
        (("gc", "--concurrency", "-3"), "argument --concurrency: must be at least 1: '-3'"),
        (("gc", "--concurrency", "many"), "argument --concurrency: not a whole number: 'many'"),
        # Written with a space or with ``=``, a negative value reaches the check (argparse
        # alone read ``--age -5m`` as a missing value: "expected one argument").
        (("purge-uploads", "--age=-5m"), "argument --age: must not be negative: '-5m'"),
        (("purge-uploads", "--age", "-5m"), "argument --age: must not be negative: '-5m'"),
        (("gc", "--grace", "-1h"), "argument --grace: must not be negative: '-1h'"),
        (("gc", "--grace", "--dry-run"), "argument --grace: expected one argument"),
        (("gc", "--grace=-1h"), "argument --grace: must not be negative: '-1h'"),
        (("gc", "--grace", "-5"), "argument --grace: must not be negative: '-5'"),
        (
            ("gc", "--progress-interval", "0"),
            "argument --progress-interval: must be more than 0: '0'",
        ),
        (
            ("gc", "--progress-interval=-1"),
            "argument --progress-interval: must be more than 0: '-1'",
        ),
    ]
    # The first as the command runs (a child process), the others parsed in this process:
    # a child per case made this the suite's slowest test on a busy machine.
    for index, (arguments, message) in enumerate(cases):
        run = cli_sync if index == 0 else parsed_in_process
        result = run(*arguments, "--config", str(config))
        assert result.code == 2, (arguments, result)
        # One line, without argparse's usage block before it.
        assert result.err == f"txregistry {arguments[0]}: error: {message}\n", result.err
        assert result.out == ""
    result = cli_sync("gc", "--bogus")
    assert (result.code, result.err) == (2, "txregistry: error: unrecognized arguments: --bogus\n")
    assert not (tmp_path / "nowhere").exists()


def test_missing_storage_is_an_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "tap.cfg", {"storage": {"rootdirectory": str(tmp_path / "nowhere")}}
    )
    for command in ("gc", "catalog-rebuild", "reindex-referrers", "purge-uploads"):
        result = cli_sync(command, "--config", str(config))
        assert result.code == 1, (command, result)
        assert "no registry data in" in result.err
        assert "Traceback" not in result.err
        assert not (tmp_path / "nowhere").exists()


@pytest_twisted.ensureDeferred
async def test_gc_dry_run_then_delete_untagged(
    driver: FilesystemDriver, root: Path, config: Path, start_registry: object
) -> None:
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)

    result = await cli("gc", "--config", str(config), "--dry-run", "--delete-untagged", "-v")
    assert result.code == 0, result
    assert blob_digests(root) == before
    to_free = sum(len(content.data[label]) for label in DELETED_UNTAGGED)
    assert f"would delete {len(DELETED_UNTAGGED)} blobs" in result.out
    assert "and 4 untagged manifests; nothing deleted" in result.out
    listed = {line.split()[-1] for line in result.err.splitlines() if "would delete blob" in line}
    assert content.labels(listed) == DELETED_UNTAGGED
    assert f"({to_free} B)" in result.out or f"({to_free / 1024:.1f} KiB)" in result.out

    result = await cli(
        "gc", "--config", str(config), "--delete-untagged", "--progress-interval", "0.01"
    )
    assert result.code == 0, result
    assert content.labels(before - blob_digests(root)) == DELETED_UNTAGGED
    lines = result.out.splitlines()
    assert lines[0].startswith(
        "gc: scanned 2 repositories, 11 manifests; examined 31 blobs: 20 in use"
    )
    assert "1 within the grace period" in lines[0]
    assert lines[-1].startswith(f"gc: deleted {len(DELETED_UNTAGGED)} blobs, 4 untagged manifests")
    assert "Traceback" not in result.err
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})  # type: ignore[operator]
    await assert_pullable(registry.url, content, DELETED_UNTAGGED)

    # Nothing more to do the second time.
    result = await cli("gc", "--config", str(config), "--delete-untagged")
    assert result.code == 0
    assert "gc: deleted 0 blobs, 0 untagged manifests" in result.out


@pytest_twisted.ensureDeferred
async def test_gc_online_over_http_content(tmp_path: Path, start_registry: object) -> None:
    """
    Content pushed through the HTTP API; gc runs (as a command) while that registry keeps
    serving; then everything kept pulls from the running registry, and pushes still work.
    """
    root = tmp_path / "served"
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})  # type: ignore[operator]
    content = await scenario.build(*scenario.http_pushers(registry.url))
    age_everything(root)
    make_young(root, content.digests["ORPHAN_NEW"])
    config = write_config(tmp_path / "online.cfg", {"storage": {"rootdirectory": str(root)}})
    result = await cli("gc", "--config", str(config), "--progress-interval", "0.01")
    assert result.code == 0, result
    assert "gc: deleted 1 blobs, freed" in result.out
    await assert_pullable(registry.url, content, DELETED_DEFAULT)
    push_blob, put_manifest = scenario.http_pushers(registry.url)
    config_blob, layer = b'{"after":"gc"}', content.data["L1"]
    await push_blob("app", config_blob)
    body = scenario.image(config_blob, [layer])
    await put_manifest("app", "after-gc", body, scenario.mt.OCI_IMAGE_MANIFEST)


def orphan_blobs(root: Path, count: int, seconds_old: float = 7200.0) -> int:
    """``count`` unreferenced blobs written straight to disk; returns their total size."""
    then = time.time() - seconds_old
    total = 0
    for i in range(count):
        data = b"orphan %d" % i
        digest = Digest.parse(scenario.sha256(data))
        path = root / layout.blob_data(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (then, then))
        total += len(data)
    return total


@pytest_twisted.ensureDeferred
async def test_gc_progress_lines(driver: FilesystemDriver, root: Path, config: Path) -> None:
    """Progress goes to stderr, at most one line per interval, only when it changed."""
    await scenario.build_aged(driver, root)
    size = orphan_blobs(root, 3000)
    result = await cli("gc", "--config", str(config), "--progress-interval", "0.02")
    assert result.code == 0, result
    progress = [line for line in result.err.splitlines() if line.startswith("gc: ")]
    assert progress, result.err
    assert all(a != b for a, b in itertools.pairwise(progress))
    assert any(line.startswith(("gc: examine: ", "gc: sweep: ")) for line in progress), progress
    assert "gc: deleted 3,001 blobs, freed " in result.out
    assert size > 0
    assert len(blob_digests(root)) == 31 - 1


@pytest_twisted.ensureDeferred
async def test_gc_progress_during_the_sweep(
    driver: FilesystemDriver, root: Path, config: Path
) -> None:
    """
    The filesystem's stat and delete complete inline: the run still gives the reactor turns,
    so progress lines come during the sweep (and the manifest deletion), not only after it.
    """
    await scenario.build_aged(driver, root)
    orphans = 10_000
    orphan_blobs(root, orphans)
    result = await cli(
        "gc", "--config", str(config), "--delete-untagged", "--progress-interval", "0.01"
    )
    assert result.code == 0, result
    total = orphans + len(DELETED_UNTAGGED)
    sweeping = [
        line
        for line in result.err.splitlines()
        if line.startswith("gc: sweep: 4/4 untagged manifests, ")
        and not line.startswith(f"gc: sweep: 4/4 untagged manifests, {total:,}/")
    ]
    assert sweeping, result.err
    assert all(line.endswith(" freed") for line in sweeping), sweeping
    assert f"/{total:,} blobs deleted" in sweeping[0]
    assert f"gc: deleted {total:,} blobs, 4 untagged manifests, freed " in result.out


@pytest_twisted.ensureDeferred
async def test_catalog_rebuild(driver: FilesystemDriver, root: Path, config: Path) -> None:
    await scenario.build_aged(driver, root)  # through the stores, without noting the catalog
    await driver.put_content(f"{ENTRIES_DIR}/gone", b"gone")
    result = await cli("catalog-rebuild", "--config", str(config))
    assert result.code == 0, result
    assert result.out.startswith("catalog-rebuild: 2 repositories (2 added, 1 removed) in ")
    assert sorted(await driver.list(ENTRIES_DIR)) == ["app", "other"]


@pytest_twisted.ensureDeferred
async def test_a_repository_pushed_again_after_a_rebuild_is_listed(
    tmp_path: Path, start_registry: object
) -> None:
    """
    A repository removed by hand, the catalog rebuilt (dropping its entry) while the
    registry serves, then pushed again: the serving process had written its entry before,
    and lists it again all the same, as it does after a restart.
    """
    root = tmp_path / "served"
    sections = {"storage": {"rootdirectory": str(root)}}
    registry = await start_registry(sections)  # type: ignore[operator]
    push_blob, put_manifest = scenario.http_pushers(registry.url)
    config_blob, layer = b'{"pushed":"again"}', b"layer"

    async def push(tag: str) -> None:
        for blob in (config_blob, layer):
            await push_blob("zz/gone", blob)
        body = scenario.image(config_blob, [layer])
        await put_manifest("zz/gone", tag, body, scenario.mt.OCI_IMAGE_MANIFEST)

    async def catalog() -> list[str]:
        response = await treq.get(f"{registry.url}/v2/_catalog")
        assert response.code == 200
        names: list[str] = (await response.json())["repositories"]
        return names

    await push("one")
    assert await catalog() == ["zz/gone"]
    shutil.rmtree(root / layout.repository("zz/gone"))
    config = write_config(tmp_path / "rebuild.cfg", sections)
    result = await cli("catalog-rebuild", "--config", str(config))
    assert result.code == 0, result
    assert result.out.startswith("catalog-rebuild: 0 repositories (0 added, 1 removed) in ")
    assert await catalog() == []

    await push("two")
    assert await catalog() == ["zz/gone"]


@pytest_twisted.ensureDeferred
async def test_catalog_rebuild_skips_a_purged_upload(
    driver: FilesystemDriver, root: Path, config: Path
) -> None:
    """
    An upload started then purged leaves nothing of ``abandoned``; registry:2's purge leaves
    an empty ``_uploads``, and that is no repository either (as for registry:2).
    """
    await scenario.build_aged(driver, root)
    uploads = UploadStore(driver, BlobStore(driver))
    upload = await uploads.start("abandoned")
    await driver.put_content(layout.upload_started_at("abandoned", upload), b"2020-01-01T00:00:00Z")
    idle = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC).timestamp()
    os.utime(root / layout.upload_data("abandoned", upload), (idle, idle))
    result = await cli("purge-uploads", "--config", str(config), "--age", "1h")
    assert result.code == 0, result
    assert not (root / layout.repository("abandoned")).exists()
    (root / layout.repository("left/by/registry2") / "_uploads").mkdir(parents=True)
    result = await cli("catalog-rebuild", "--config", str(config))
    assert result.code == 0, result
    assert result.out.startswith("catalog-rebuild: 2 repositories (2 added, 0 removed) in ")
    assert sorted(await driver.list(ENTRIES_DIR)) == ["app", "other"]


@pytest_twisted.ensureDeferred
async def test_reindex_referrers(driver: FilesystemDriver, root: Path, config: Path) -> None:
    content = await scenario.build_aged(driver, root)
    await driver.delete(f"{layout.OWN}/referrers")
    result = await cli("reindex-referrers", "--config", str(config))
    assert result.code == 0, result
    assert result.out.startswith("reindex-referrers: 3 referrers indexed in 2 repositories in ")
    listed = await driver.list(f"{layout.OWN}/referrers/app/sha256")
    subjects = {f"sha256:{hex_}" for hex_ in listed}
    assert content.labels(subjects) == {"M1", "M2", "MA"}


@pytest_twisted.ensureDeferred
async def test_purge_uploads(driver: FilesystemDriver, root: Path, config: Path) -> None:
    await scenario.build_aged(driver, root)
    uploads = UploadStore(driver, BlobStore(driver))
    old = await uploads.start("app")
    fresh = await uploads.start("other")
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    await driver.put_content(
        layout.upload_started_at("app", old), started.isoformat().replace("+00:00", "Z").encode()
    )
    os.utime(root / layout.upload_data("app", old), (started.timestamp(), started.timestamp()))
    result = await cli("purge-uploads", "--config", str(config), "--age", "2h")
    assert result.code == 0, result
    assert result.out.startswith("purge-uploads: purged 1 upload idle for longer than 2h in ")
    assert not await uploads.exists("app", old)
    assert await uploads.exists("other", fresh)


@pytest_twisted.ensureDeferred
async def test_gc_unreadable_manifest_aborts_with_a_line(
    driver: FilesystemDriver, root: Path, config: Path
) -> None:
    """An I/O error (here a symlink loop, which even root cannot read) stops gc: exit 1."""
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    data = root / layout.blob_data(Digest.parse(content.digests["M3"]))
    data.unlink()
    data.symlink_to(data.name)
    result = await cli("gc", "--config", str(config), "--delete-untagged")
    assert result.code == 1, result
    # The driver names the file and the system's reason (a StorageError, as for any I/O error).
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("txregistry gc: gc aborted, nothing deleted: StorageError: reading ")
    assert last.endswith(": Too many levels of symbolic links")
    assert "Traceback" not in result.err
    assert result.out == ""
    assert blob_digests(root) == before - {content.digests["M3"]}
    # Recorded as the last run (the UI's storage page and the gc metrics show it failed).
    status = json.loads((root / gcstatus.STATUS_PATH).read_bytes())
    assert status["errors"] == 1


@pytest_twisted.ensureDeferred
async def test_gc_while_another_run_holds_the_marker_is_refused_in_one_line(
    driver: FilesystemDriver, root: Path, config: Path
) -> None:
    """A live run's marker (this test's own process stands for it): not started, exit 1;
    the marker stays; a dry run writes none and runs alongside."""
    await scenario.build_aged(driver, root)
    before = blob_digests(root)
    marker = root / layout.ROOT / gcguard.RUNNING.split("v2/", 1)[1]
    marker.parent.mkdir(parents=True, exist_ok=True)
    holder = {"started": int(time.time()), "run": "0123abcd", "host": socket.gethostname()}
    text = json.dumps({**holder, "pid": os.getpid()}) + "\n"
    marker.write_text(text)
    result = await cli("gc", "--config", str(config))
    assert result.code == 1, result
    assert result.err.count("\n") == 1, result.err
    assert result.err.startswith(
        f"txregistry gc: another gc run is in progress (run 0123abcd on {socket.gethostname()}, "
        f"pid {os.getpid()}, started "
    )
    assert result.err.rstrip().endswith(f"{gcguard.RUNNING}): not started")
    assert marker.read_text() == text
    assert blob_digests(root) == before
    result = await cli("gc", "--config", str(config), "--dry-run")
    assert result.code == 0, result
    assert marker.read_text() == text


@pytest_twisted.ensureDeferred
async def test_gc_during_a_push_over_http(tmp_path: Path, start_registry: object) -> None:
    """
    A push caught half way (config uploaded, a layer's upload started with one chunk sent,
    manifest not yet put): gc --delete-untagged, run as a command while the registry serves,
    deletes none of it, and the push then completes and pulls.
    """
    root = tmp_path / "served"
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})  # type: ignore[operator]
    url = registry.url
    content = await scenario.build(*scenario.http_pushers(url))
    age_everything(root)
    push_blob, put_manifest = scenario.http_pushers(url)
    config_blob = b'{"pushed":"during gc"}'
    layer = b"a layer in two chunks " * 2000
    await push_blob("app", config_blob)
    response = await treq.post(f"{url}/v2/app/blobs/uploads/")
    assert response.code == 202
    location = response.headers.getRawHeaders(b"location")[0].decode()
    location = location if location.startswith("http") else url + location
    half = len(layer) // 2
    response = await treq.patch(
        location,
        data=layer[:half],
        headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{half - 1}"},
    )
    assert response.code == 202, await response.text()
    location = response.headers.getRawHeaders(b"location")[0].decode()
    location = location if location.startswith("http") else url + location

    config = write_config(tmp_path / "online.cfg", {"storage": {"rootdirectory": str(root)}})
    result = await cli("gc", "--config", str(config), "--delete-untagged")
    assert result.code == 0, result
    assert f"gc: deleted {len(DELETED_UNTAGGED) + 1} blobs, 4 untagged manifests" in result.out

    separator = "&" if "?" in location else "?"
    response = await treq.put(
        f"{location}{separator}digest={scenario.sha256(layer)}",
        data=layer[half:],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.code == 201, await response.text()
    body = scenario.image(config_blob, [layer])
    await put_manifest("app", "pushed-during-gc", body, scenario.mt.OCI_IMAGE_MANIFEST)
    response = await treq.get(
        f"{url}/v2/app/manifests/pushed-during-gc",
        headers={"Accept": scenario.mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 200
    assert await response.content() == body
    for data in (config_blob, layer):
        response = await treq.get(f"{url}/v2/app/blobs/{scenario.sha256(data)}")
        assert response.code == 200
        assert await response.content() == data
    await assert_pullable(url, content, DELETED_UNTAGGED | {"ORPHAN_NEW"})


def test_catalog_rebuild_shows_progress_while_indexing(root: Path, config: Path) -> None:
    """
    After the walk, the index entries are written: a million of them take over a minute,
    which was silent (only the walk's folder count was shown, no longer changing).
    """
    repositories = root / layout.REPOSITORIES
    count = 3000
    for i in range(count):
        (repositories / f"team{i // 100}" / f"app{i}" / "_layers").mkdir(parents=True)
    result = cli_sync("catalog-rebuild", "--config", str(config), "--progress-interval", "0.01")
    assert result.code == 0, result
    assert result.out.startswith(f"catalog-rebuild: {count:,} repositories ({count:,} added, ")
    indexing = [
        line for line in result.err.splitlines() if line.startswith("catalog-rebuild: indexing, ")
    ]
    assert indexing, result.err
    assert all(line.endswith(f"/{count:,} repositories") for line in indexing), indexing


@pytest_twisted.ensureDeferred
async def test_gc_starts_on_a_full_disk_with_the_room_kept_for_it(
    small_disk: Path,  # noqa: F811
    tmp_path: Path,
    thread_pool: ThreadPool,
) -> None:
    """The registry keeps a reserve file beside its data; a gc that finds the disk full
    (its run marker cannot be written) removes it, says so, and deletes the garbage; the
    next run with room writes it back."""
    root = small_disk / "data"
    driver = FilesystemDriver(str(root), reactor, thread_pool)
    content = await scenario.build_aged(driver, root)
    config = write_config(tmp_path / "tap.cfg", {"storage": {"rootdirectory": str(root)}})
    # Before this version served the data (no reserve yet): what to do, in one line.
    filler = fill(small_disk)
    result = await cli("gc", "--config", str(config))
    assert result.code == 1, result
    assert result.err.strip().splitlines()[-1] == (
        "txregistry gc: gc aborted, nothing deleted: the disk is full and holds no room kept"
        f" for a collection ({RESERVE}): free a few KiB (a run writes a small marker before"
        " it deletes) and run again"
    )
    filler.unlink()
    (tmp_path / "run").mkdir()
    registry = await start_in_process(tmp_path / "run", {"storage": {"rootdirectory": str(root)}})
    reserve = root / RESERVE
    await wait_for(reserve.exists)  # written at start, after the storage probe
    await registry.stop()
    assert reserve.stat().st_size == RESERVE_SIZE
    filler = fill(small_disk)
    result = await cli("gc", "--config", str(config))
    assert result.code == 0, result
    assert "gc: the disk is full: removed the 1048576 bytes kept for a collection" in result.err
    assert content.labels(blob_digests(root)) & DELETED_DEFAULT == set()
    filler.unlink()
    result = await cli("gc", "--config", str(config))
    assert result.code == 0, result
    assert reserve.stat().st_size == RESERVE_SIZE


def _orphans(root: Path, count: int) -> None:
    """``count`` blobs no repository links, written an hour and more ago."""
    old = time.time() - 7200
    for i in range(count):
        digest = Digest.parse(scenario.sha256(f"orphan {i}".encode()))
        data = root / layout.blob_data(digest)
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(b"x")
        os.utime(data, (old, old))
    (root / layout.REPOSITORIES).mkdir(parents=True, exist_ok=True)


def _as_from_a_terminal() -> None:
    """SIGINT as a command started from a terminal has it.  A suite started in the background
    by a non-interactive shell (``.ci/run &``) ignores SIGINT, its children inherit that, and
    the reactor, as every POSIX program, leaves an ignored SIGINT ignored: the gc would then
    run to its end, whatever the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_gc_stopped_by_a_signal_withdraws_records_and_exits_1(
    tmp_path: Path, signal_number: int
) -> None:
    """A systemd timeout, a cancelled CI job, Ctrl-C in the sweep: the deletes stop, the run
    marker goes (writers stop paying for a run that is over), the run is recorded with an
    error, and the command exits 1 with a line saying so, no traceback."""
    root = tmp_path / "data"
    _orphans(root, 4000)
    config = write_config(tmp_path / "tap.cfg", {"storage": {"rootdirectory": str(root)}})
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    environment["PYTHONPATH"] = str(REPO_ROOT)
    command = [sys.executable, "-m", "registry.cli", "gc", "--config", str(config)]
    # Progress lines often enough that the first one of the sweep comes early in it: the
    # signal then lands while there is still a lot to delete (at 0.05 s, a quick machine had
    # deleted 3,935 of the 4,000 by the first line, and the run ended before the signal).
    command += ["--concurrency", "1", "--progress-interval", "0.005"]
    for _attempt in range(3):  # a sweep that ended before the signal landed is run again
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            preexec_fn=_as_from_a_terminal,
        )
        try:
            assert child.stderr is not None
            for _ in range(20_000):  # until the sweep has begun (bounded: stderr ends at exit)
                line = child.stderr.readline()
                if not line or ("deleted" in line and "blobs" in line):
                    break
            child.send_signal(signal_number)
            out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
        if child.returncode != 0 or "stopping on a signal" in err:
            break
        _orphans(root, 4000)  # all deleted before the signal: again, with new orphans
    assert child.returncode == 1, (out, err)
    assert "gc: stopping on a signal: no delete more; recording the run" in err
    assert "Traceback" not in err and "GeneratorExit" not in err
    assert not (root / gcguard.RUNNING).exists()
    status = json.loads((root / gcstatus.STATUS_PATH).read_bytes())
    assert status["errors"] == 1
    left = len(list((root / layout.BLOBS).glob("*/*/*/data")))
    assert 0 < left < 4000
