"""
Push replication: this registry's repositories sent to Debian's registry:2 and to another
txregistry, every platform of an index, digests preserved, incremental on the next run.
"""

from __future__ import annotations

import pytest_twisted

from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import (
    assert_same_image,
    push_image,
    push_index,
    wait_fresh_run,
    wait_runs,
)


@pytest_twisted.ensureDeferred
async def test_push_to_registry2_and_to_another_txregistry(
    registry2: Registry2Process, start_registry: Starter, make_client: ClientFactory
) -> None:
    other = await start_registry()
    source = await start_registry(
        {
            "sync:to-registry2": {
                "remote": f"http://{registry2.host}",
                "first_run_within": "0s",
                "direction": "push",
                "repositories": "apps/**",
                "interval": "1s",
            },
            "sync:to-txregistry": {
                "remote": other.url,
                "first_run_within": "0s",
                "direction": "push",
                "repositories": "apps/**",
                "destination": "backup",
                "interval": "1s",
                "concurrency": "2",
                # Below the big layer's size: its upload is paused and resumed on the way.
                "bandwidth": "1MB",
            },
        }
    )
    local = make_client(source.url)
    _, children, _ = await push_index(local, "apps/web/frontend", "2024.1")
    await push_image(local, "apps/db", "15", layers=3)
    await push_image(local, "apps/big", "1", layers=1, layer_size=2_500_000)
    await push_image(local, "private/secret", "v1")  # not under apps/

    registry2_client = make_client(f"http://{registry2.host}")
    other_client = make_client(other.url)
    for sync, remote, prefix in (
        ("to-registry2", registry2_client, ""),
        ("to-txregistry", other_client, "backup/"),
    ):
        status = await wait_fresh_run(source.url, sync)
        assert status["last"]["result"] == "ok", status
        await assert_same_image(
            local, "apps/web/frontend", remote, f"{prefix}apps/web/frontend", "2024.1"
        )
        await assert_same_image(local, "apps/db", remote, f"{prefix}apps/db", "15")
        await assert_same_image(local, "apps/big", remote, f"{prefix}apps/big", "1")
        for digest, body in children.items():
            got = await remote.get_manifest(f"{prefix}apps/web/frontend", digest)
            assert got.body == body
        assert await remote.head_manifest(f"{prefix}private/secret", "v1") is None
        # Nothing new: the next run sends nothing.
        again = await wait_runs(source.url, sync, status["runs"] + 1)
        assert again["last"]["result"] == "ok"
        assert again["last"]["manifests"] == 0 and again["last"]["blobs"] == 0
        assert again["last"]["tags_up_to_date"] == 3
    catalog = [name async for name in other_client.all_repositories()]
    assert catalog == ["backup/apps/big", "backup/apps/db", "backup/apps/web/frontend"]
