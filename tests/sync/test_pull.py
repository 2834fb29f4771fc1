"""
Pull replication from Debian's registry:2 into txregistry, over loopback: every platform of
an index, the same bytes and digests, and a second run that copies nothing.
"""

from __future__ import annotations

import pytest_twisted

from tests.client.conftest import ClientFactory
from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import assert_same_image, metric, push_image, push_index, wait_runs


@pytest_twisted.ensureDeferred
async def test_pull_from_registry2_is_complete_then_incremental(
    registry2: Registry2Process, start_registry: Starter, make_client: ClientFactory
) -> None:
    remote = make_client(f"http://{registry2.host}")
    _index, children, index_blobs = await push_index(remote, "team/app", "multi")
    _single, single_blobs = await push_image(remote, "team/app", "v1")
    _, tool_blobs = await push_image(remote, "team/tool", "1.0")
    await push_image(remote, "other/skipped", "v1")  # matches no glob

    registry = await start_registry(
        {
            "sync:mirror": {
                "remote": f"http://{registry2.host}",
                "first_run_within": "0s",
                "repositories": "team/*",
                "interval": "1s",
            }
        }
    )
    local = make_client(registry.url)
    first = await wait_runs(registry.url, "mirror")
    assert first["last"]["result"] == "ok", first
    for name, tag in (("team/app", "multi"), ("team/app", "v1"), ("team/tool", "1.0")):
        await assert_same_image(remote, name, local, name, tag)
    # Every platform of the index came along, by digest.
    for digest, body in children.items():
        assert (await local.get_manifest("team/app", digest)).body == body
    response, _ = await get(f"{registry.url}/v2/other/skipped/tags/list")
    assert response.code == 404
    # 3 tags + 2 children; each distinct blob once (the amd64 config is in three images).
    assert first["last"]["manifests"] == 5
    assert first["last"]["tags_checked"] == 3 and first["last"]["tags_up_to_date"] == 0
    copied = first["last"]["blobs"]
    assert copied == len(set(index_blobs) | set(single_blobs) | set(tool_blobs))
    assert first["last"]["bytes"] > 0

    # The next run finds every tag up to date and copies nothing.
    second = await wait_runs(registry.url, "mirror", runs=first["runs"] + 1)
    assert second["last"]["result"] == "ok"
    assert second["last"]["tags_up_to_date"] == 3
    assert second["last"]["manifests"] == 0 and second["last"]["blobs"] == 0
    _, text = await get(f"{registry.url}/metrics")
    assert metric(text.decode(), "txregistry_sync_blobs_copied_total", "mirror") == copied
    assert metric(text.decode(), "txregistry_sync_last_success_timestamp_seconds", "mirror") > 0

    # A new tag upstream: only its own blobs travel.
    _new, new_blobs = await push_image(remote, "team/tool", "1.1")
    third = await wait_runs(registry.url, "mirror", runs=second["runs"] + 1)
    assert third["last"]["manifests"] == 1
    # Its two layers; its config is the amd64 one, here already.
    assert third["last"]["blobs"] == len(new_blobs) - 1 == 2
    assert third["last"]["blobs_skipped"] == 1
    assert third["last"]["tags_up_to_date"] == 3
    await assert_same_image(remote, "team/tool", local, "team/tool", "1.1")
