"""
Stopping the registry in the middle of a sync run: the run ends as ``stopped`` (saved in its
state), the upload it had open is cancelled, and nothing logs a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.e2e.harness import sleep
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
