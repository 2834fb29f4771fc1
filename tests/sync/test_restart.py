"""
A sync interrupted by ``kill -9`` carries on after the restart from what was complete: the
blobs committed before the kill are not fetched again, and the status (runs, totals, last
success) survives a restart through ``txregistry/sync/<name>/state.json``, also one that
disables the sync.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted

from registry.client import RegistryClient
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.e2e.harness import RegistryProcess, sleep, start_in_process
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import push_image, sync_status, wait_runs

LAYER = 300_000


def _stored(data: Path, digest: str) -> bool:
    hex_ = digest.split(":", 1)[1]
    return (data / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data").is_file()


async def _push(client: RegistryClient, name: str, tag: str, arch: str) -> list[str]:
    manifest, blobs = images.image(arch, [os.urandom(LAYER)])
    for dgst, body in blobs.items():
        await client.upload_blob(name, body, dgst)
    await client.put_manifest(name, tag, manifest)
    return list(blobs)


@pytest_twisted.ensureDeferred
async def test_killed_sync_resumes_from_what_was_complete(
    registry2: Registry2Process, make_client: ClientFactory, tmp_path: Path
) -> None:
    remote = make_client(f"http://{registry2.host}")
    digests: set[str] = set()
    for i in range(6):
        digests.update(await _push(remote, f"big/app{i}", "v1", f"arch{i}"))
    sync = {
        "remote": f"http://{registry2.host}",
        "first_run_within": "0s",
        "repositories": "big/*",
        # Slow enough that a loaded machine's status requests see the run under way.
        "bandwidth": "100KB",
        "concurrency": "2",
    }
    workdir = tmp_path / "txregistry"
    workdir.mkdir()
    data = workdir / "data"
    first = RegistryProcess(workdir, {"sync:slow": sync})
    first.start()
    try:
        for _ in range(1500):  # bounded: at least 30 s
            status = await sync_status(first.url, "slow")
            current = status.get("current") or {}
            if current.get("blobs", 0) >= 3:
                break
            await sleep(0.02)
        else:
            raise AssertionError(f"the sync did not start copying: {status}")
        assert status["last"] is None
    finally:
        first.kill()
    present = {d for d in digests if _stored(data, d)}
    assert 3 <= len(present) < len(digests)

    second = RegistryProcess(workdir, {"sync:slow": {**sync, "bandwidth": "0"}})
    second.start()
    try:
        status = await wait_runs(second.url, "slow")
        assert status["last"]["result"] == "ok", status
        # Only what the killed run had not committed travelled again.
        assert status["last"]["blobs"] == len(digests - present)
        # Images complete before the kill are up-to-date tags; the others' blobs that were
        # there were skipped.
        last = status["last"]
        assert last["tags_up_to_date"] + last["manifests"] == 6
        assert last["tags_up_to_date"] < 6
        assert last["blobs_skipped"] <= len(present)
        assert all(_stored(data, d) for d in digests)
        here = make_client(second.url)
        for i in range(6):
            got = await here.get_manifest(f"big/app{i}", "v1")
            assert got.body == (await remote.get_manifest(f"big/app{i}", "v1")).body
        saved_runs, saved_totals = status["runs"], status["totals"]
        last_success = status["last_success"]
    finally:
        second.stop()

    # The status comes back from storage after a restart.
    third = RegistryProcess(
        workdir, {"sync:slow": {**sync, "interval": "1h", "first_run_within": "1h"}}
    )
    third.start()
    try:
        status = await sync_status(third.url, "slow")
        for _ in range(100):
            if status["runs"] >= saved_runs:
                break
            await sleep(0.02)
            status = await sync_status(third.url, "slow")
        assert status["runs"] >= saved_runs
        assert status["last_success"] >= last_success
        assert status["totals"]["blobs"] == saved_totals["blobs"]
    finally:
        third.stop()


@pytest_twisted.ensureDeferred
async def test_killed_mid_blob_restart_cancels_its_upload_and_records_the_run(
    registry2: Registry2Process, make_client: ClientFactory, tmp_path: Path
) -> None:
    """``kill -9`` while a layer is half-way into an upload: at the next start (which runs
    nothing for an hour) the partial upload is gone, and the killed run is in the status as
    ``interrupted``, counted as a failed run."""
    remote = make_client(f"http://{registry2.host}")
    await push_image(remote, "slow/app", "v1", layers=1, layer_size=2_000_000)
    sync = {
        "remote": f"http://{registry2.host}",
        "first_run_within": "0s",
        "repositories": "slow/app",
        "bandwidth": "200KB",
    }
    workdir = tmp_path / "txregistry"
    workdir.mkdir()
    uploads = workdir / "data/docker/registry/v2/repositories/slow/app/_uploads"

    def partial() -> bool:
        return any(p.stat().st_size > 0 for p in uploads.glob("*/data"))

    first = RegistryProcess(workdir, {"sync:slow": sync})
    first.start()
    try:
        for _ in range(1000):
            if partial():
                break
            await sleep(0.02)
        else:
            raise AssertionError("the layer never started arriving")
    finally:
        first.kill()
    # An upload is left behind (on a busy machine the run may have started the layer again
    # between the look and the kill: its new upload is left then, maybe without data yet).
    assert uploads.is_dir() and any(uploads.iterdir())

    second = RegistryProcess(workdir, {"sync:slow": {**sync, "first_run_within": "1h"}})
    second.start()
    try:
        for _ in range(500):
            status = await sync_status(second.url, "slow")
            if status["runs"] == 1:
                break
            await sleep(0.02)
        assert (status["runs"], status["failed_runs"]) == (1, 1), status
        assert status["last"]["result"] == "interrupted"
        assert status["last"]["error_messages"] == [
            "interrupted: the registry stopped without ending this run"
        ]
        assert status["current"] is None
        # (The upload purge also removes the _uploads folder once nothing is left in it.)
        assert not uploads.exists() or sorted(p.name for p in uploads.iterdir()) == []
        own = workdir / "data/docker/registry/v2/txregistry/sync/slow/uploads"
        assert not own.exists() or sorted(own.iterdir()) == []
    finally:
        second.stop()


@pytest_twisted.ensureDeferred
async def test_a_disabled_sync_shows_its_saved_state(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A sync set to ``enabled = false`` after it ran shows its runs and totals from its
    saved state (not zeros), as ``disabled``, and runs nothing."""
    remote = await start_registry()
    await push_image(make_client(remote.url), "some/app", "v1")
    sync = {"remote": remote.url, "first_run_within": "0s", "interval": "1h"}
    folder = tmp_path / "local"
    folder.mkdir()
    first = await start_in_process(folder, {"sync:up": sync})
    try:
        ran = await wait_runs(first.url, "up")
        assert ran["last"]["result"] == "ok", ran
        assert ran["totals"]["manifests"] == 1
    finally:
        await first.stop()
    second = await start_in_process(folder, {"sync:up": {**sync, "enabled": "false"}})
    try:
        for _ in range(100):  # the saved state is read once storage is known to work
            status = await sync_status(second.url, "up")
            if status["runs"]:
                break
            await sleep(0.02)
        assert status["state"] == "disabled"
        assert (status["runs"], status["last_success"]) == (ran["runs"], ran["last_success"])
        assert status["totals"] == ran["totals"]
        assert status["last"] == ran["last"]
        assert status["next_run"] is None and status["current"] is None
    finally:
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_a_storage_failure_while_restoring_does_not_stop_the_sync(
    start_registry: Starter, tmp_path: Path
) -> None:
    """The look for a dead run's uploads failing at start (storage trouble: here a folder
    that cannot be listed) is one line, and the sync runs on its schedule all the same: it
    was never scheduled, for good, without a word."""
    remote = await start_registry()
    folder = tmp_path / "local"
    marks = folder / "data/docker/registry/v2/txregistry/sync/out/uploads"
    marks.parent.mkdir(parents=True)
    os.symlink("uploads", marks)  # a loop: listing it fails (ELOOP)
    sync = {
        "remote": remote.url,
        "direction": "push",
        "first_run_within": "0s",
        "repositories": "none/*",
    }
    local = await start_in_process(folder, {"sync:out": sync})
    try:
        status = await wait_runs(local.url, "out", limit=20)
        assert status["last"]["result"] == "ok", status
    finally:
        await local.stop()
