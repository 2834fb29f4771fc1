"""
Pull replication from a remote that sends a layer other than the one asked for: a layer
streaming on past the size its manifest declares fails the run, the remote's body cut as soon
as it passes that size (not read to its end into a local upload); a layer with one byte wrong
fails the run with a line naming the blob and the remote's bytes.  Nothing is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.test_hostile_source import (
    CAP,
    LAYER,
    LAYER_DIGEST,
    HostileSource,
    hostile,  # noqa: F401 - fixture
    uploads_left,
)
from tests.client.test_malformed_manifests import (
    Source,
    malformed_source,  # noqa: F401 - fixture
    manifest,
)
from tests.e2e.conftest import Starter
from tests.sync.helpers import wait_runs


@pytest.fixture
def sync_errors() -> Iterator[list[str]]:
    """The sync error lines of the in-process registries, as they are logged."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("sync_event") == "error":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_layer_longer_than_declared_fails_the_run_early(
    hostile: tuple[str, HostileSource],  # noqa: F811
    start_registry: Starter,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    url, source = hostile
    source.layer = "endless"
    registry = await start_registry(
        {
            "sync:mirror": {
                "remote": url,
                "first_run_within": "0s",
                "repositories": "x",
                "interval": "1h",
            }
        }
    )
    status = await wait_runs(registry.url, "mirror")
    assert status["last"]["result"] != "ok", status
    assert source.layer_bodies, "the layer was never asked for"
    assert [await body for body in source.layer_bodies] == ["cut"] * len(source.layer_bodies)
    assert source.sent < CAP // 4, source.sent
    local = make_client(registry.url)
    assert await local.blob_exists("x", LAYER_DIGEST) is None
    assert uploads_left(tmp_path / "registry0", "x") == []


@pytest_twisted.ensureDeferred
async def test_a_layer_with_wrong_bytes_is_logged_as_the_remotes_fault(
    hostile: tuple[str, HostileSource],  # noqa: F811
    start_registry: Starter,
    make_client: ClientFactory,
    tmp_path: Path,
    sync_errors: list[str],
) -> None:
    url, source = hostile
    source.layer = "wrong-bytes"
    registry = await start_registry(
        {
            "sync:flaky": {
                "remote": url,
                "first_run_within": "0s",
                "repositories": "x",
                "interval": "1h",
            }
        }
    )
    status = await wait_runs(registry.url, "flaky")
    assert status["last"]["result"] != "ok", status
    sent = images.digest(bytes([LAYER[0] ^ 0xFF]) + LAYER[1:])
    assert sync_errors == [
        f"sync flaky: x:latest: blob x@{LAYER_DIGEST}: the remote sent bytes that hash to {sent}"
    ]
    local = make_client(registry.url)
    assert await local.blob_exists("x", LAYER_DIGEST) is None
    assert uploads_left(tmp_path / "registry0", "x") == []


@pytest_twisted.ensureDeferred
async def test_a_manifest_with_a_malformed_descriptor_is_refused_in_one_line(
    malformed_source: tuple[str, Source],  # noqa: F811
    start_registry: Starter,
    make_client: ClientFactory,
    sync_errors: list[str],
) -> None:
    """A remote manifest whose config is not a descriptor: the run fails with one line
    naming the manifest and what is wrong; nothing of it is stored."""
    host, remote = malformed_source
    remote.body = manifest(config="x", layers=[{"digest": 5}])
    registry = await start_registry(
        {
            "sync:mirror": {
                "remote": f"http://{host}",
                "first_run_within": "0s",
                "repositories": "x",
                "interval": "1h",
            }
        }
    )
    status = await wait_runs(registry.url, "mirror")
    assert status["last"]["result"] != "ok", status
    assert sync_errors == [
        f"sync mirror: x:v1: manifest {images.digest(remote.body)} is not valid: "
        'config is not a descriptor but "x"'
    ]
    assert remote.blob_gets == []
    local = make_client(registry.url)
    assert await local.head_manifest("x", "v1") is None
