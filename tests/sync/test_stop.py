"""
Stopping the registry in the middle of a sync run: the run ends as ``stopped`` (saved in its
state, counted apart from the ok and failed runs), the upload it had open (here, or on the
remote for a push) is cancelled, and nothing logs a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from tests.client.conftest import ClientFactory
from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.e2e.harness import sleep, start_in_process
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import push_image, sync_status


@pytest_twisted.ensureDeferred
async def test_stop_during_a_run(
    registry2: Registry2Process,
    start_registry: Starter,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    remote = make_client(f"http://{registry2.host}")
    await push_image(remote, "slow/app", "v1", layers=1, layer_size=2_000_000)
    local = await start_registry(
        {
            "sync:slow": {
                "remote": f"http://{registry2.host}",
                "first_run_within": "0s",
                "repositories": "slow/app",
                "bandwidth": "200KB",
            }
        }
    )
    for _ in range(600):
        status = await sync_status(local.url, "slow")
        if (status.get("current") or {}).get("blobs", 0) >= 1:  # the config; the layer is next
            break
        await sleep(0.02)
    else:
        raise AssertionError(f"the run did not start: {status}")
    await local.stop()
    v2 = tmp_path / "registry0" / "data" / "docker" / "registry" / "v2"
    saved = json.loads((v2 / "txregistry" / "sync" / "slow" / "state.json").read_bytes())
    assert saved["last"]["result"] == "stopped"
    assert saved["last"]["manifests"] == 0
    uploads = v2 / "repositories" / "slow" / "app" / "_uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_stop_during_a_push(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A push stopped half-way through a layer cancels its upload on the remote (which would
    keep the session and the bytes it got for a week), and the run is counted as stopped,
    not ok, in the status and the metrics, also after a restart."""
    remote = await start_registry()  # registry0
    sync = {
        "remote": remote.url,
        "direction": "push",
        "first_run_within": "0s",
        "interval": "1s",
        "repositories": "slow/app",
        # The local reader sends 2 MiB at a time: the first goes at once, then 2 s a piece.
        "bandwidth": "1MB",
    }
    folder = tmp_path / "local"
    folder.mkdir()
    local = await start_in_process(folder, {"sync:out": sync})
    try:
        await push_image(make_client(local.url), "slow/app", "v1", layers=1, layer_size=8_000_000)
        uploads = tmp_path / "registry0/data/docker/registry/v2/repositories/slow/app/_uploads"
        for _ in range(1000):
            if any(p.stat().st_size > 0 for p in uploads.glob("*/data")):
                break  # the layer is streaming into the remote's upload
            await sleep(0.02)
        else:
            raise AssertionError("the layer never started arriving")
    finally:
        await local.stop()
    # The session's data is gone.  (A hash state the remote's cut-off PUT records after the
    # DELETE may be left in its folder: the remote's own race, not this sync's.)
    assert list(uploads.glob("*/data")) == []
    # Longer than a throttle pause (2 MiB at 1 MB/s): a reader or timer the stop left behind
    # would write into the cancelled request meanwhile (logged, failing this test).
    await sleep(2.5)

    again = await start_in_process(folder, {"sync:out": {**sync, "first_run_within": "1h"}})
    try:
        status = await sync_status(again.url, "out")
        assert status["last"]["result"] == "stopped", status
        assert status["failed_runs"] == 0
        assert status["stopped_runs"] == 1
        response, body = await get(f"{again.url}/metrics")
        assert response.code == 200
        text = body.decode()
        ok = f'txregistry_sync_runs_total{{result="ok",sync="out"}} {status["runs"] - 1:.1f}'
        assert ok in text, text
        assert 'txregistry_sync_runs_total{result="stopped",sync="out"} 1.0' in text, text
    finally:
        await again.stop()
