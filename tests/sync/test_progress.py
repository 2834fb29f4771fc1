"""
A run's status shows a large blob's progress while it is in flight: ``bytes_transferred``
grows with every byte passed on, where ``bytes`` counts a blob only once it is stored (a
multi-GB layer at a bandwidth limit showed nothing for minutes).
"""

from __future__ import annotations

import pytest_twisted

from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.e2e.harness import sleep
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import push_image, sync_status, wait_runs

RATE = 1_000_000
LAYER = 3 * RATE


@pytest_twisted.ensureDeferred
async def test_a_blob_in_flight_shows_in_the_runs_bytes_transferred(
    registry2: Registry2Process, start_registry: Starter, make_client: ClientFactory
) -> None:
    remote = make_client(f"http://{registry2.host}")
    await push_image(remote, "team/app", "v1", layers=1, layer_size=LAYER)
    registry = await start_registry(
        {
            "sync:mirror": {
                "remote": f"http://{registry2.host}",
                "first_run_within": "0s",
                "repositories": "team/app",
                "interval": "1h",
                "bandwidth": str(RATE),
            }
        }
    )
    seen = None
    for _ in range(400):  # 20 s at most; the layer takes about 2 s past its first second
        current = (await sync_status(registry.url, "mirror"))["current"]
        if current is not None and 0 < current["bytes_transferred"] < LAYER:
            seen = current
            break
        await sleep(0.05)
    assert seen is not None, "no progress seen while the layer was in flight"
    assert seen["bytes"] < seen["bytes_transferred"]  # the layer is not stored yet
    status = await wait_runs(registry.url, "mirror")
    last = status["last"]
    assert last["result"] == "ok", last
    assert last["bytes_transferred"] == last["bytes"] >= LAYER
    assert status["totals"]["bytes_transferred"] == last["bytes_transferred"]
