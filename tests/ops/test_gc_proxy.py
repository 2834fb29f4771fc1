"""
``txregistry gc`` on a storage that a pull-through cache shares with hosted repositories: what
the cache holds stays (its eviction governs it), hosted repositories are collected as before,
and a cache fill committed while a gc runs follows the writers' protocol (`gcguard`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest_twisted

from registry.api.digests import Digest
from registry.storage import gcguard, layout
from tests.e2e.harness import write_config
from tests.fakes.upstream import FakeUpstream
from tests.ops import scenario
from tests.ops.test_cli import cli
from tests.proxy.registries import Proxied, fake, proxied, proxy_section, start_registry  # noqa: F401
from tests.proxy.util import blob_data_path, fetch, pull, storage_root

V2 = "docker/registry/v2"


@pytest_twisted.ensureDeferred
async def test_gc_keeps_what_the_cache_holds_and_collects_hosted(
    tmp_path: Path,
    proxied: Proxied,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    by_digest = fake.content.add_image("library/bydigest", "v1", [3000, 5000])
    evicted = fake.content.add_image("library/evicted", "v1", [4000])
    registry = await proxied(default="false")
    root = storage_root(registry)
    # As Kubernetes pulls: by digest only, no tag is ever cached.
    await pull(registry, "docker.io/library/bydigest", by_digest.digest)
    await pull(registry, "docker.io/library/evicted", "v1")
    # The cache's eviction dropped this manifest (revision and tag) and kept its layers.
    hex_ = Digest.parse(evicted.digest).hex
    repo = root / V2 / "repositories/docker.io/library/evicted/_manifests"
    shutil.rmtree(repo / "revisions/sha256" / hex_)
    shutil.rmtree(repo / "tags")
    # A hosted repository on the same storage: an untagged manifest and its own layer.
    push_blob, put_manifest = scenario.http_pushers(registry.url)
    config_blob, layer = b'{"hosted":"untagged"}', b"hosted layer " * 100
    await push_blob("team/app", config_blob)
    await push_blob("team/app", layer)
    body = scenario.image(config_blob, [layer])
    await put_manifest("team/app", scenario.sha256(body), body, scenario.mt.OCI_IMAGE_MANIFEST)

    # Without the cache's configuration gc cannot tell its content from unused data: refused.
    assert (root / V2 / "txregistry/proxy/hub").is_dir()
    result = await cli("gc", "--storage", str(root), "--delete-untagged", "--grace", "0s")
    assert result.code == 1, result
    assert result.err.splitlines() == [
        "txregistry gc: this storage holds the pull-through cache 'hub' "
        f"({V2}/txregistry/proxy/hub) and the configuration has no [proxy:hub]: give gc the "
        "registry's configuration (--config) so that it leaves the cache's content alone, or "
        "remove that folder if the cache is gone"
    ], result.err
    assert blob_data_path(root, evicted.layers[0].digest).exists()

    config = write_config(
        tmp_path / "gc.cfg",
        {
            "storage": {"rootdirectory": str(root)},
            "proxy:hub": proxy_section(fake.url, default="false"),
        },
    )
    result = await cli("gc", "--config", str(config), "--delete-untagged", "--grace", "0s")
    assert result.code == 0, result
    # The hosted image went (its manifest, config and layer), and the data of the manifest
    # the cache no longer holds; nothing the cache holds.
    assert "gc: deleted 4 blobs, 1 untagged manifests" in result.out, result.out
    assert not blob_data_path(root, evicted.digest).exists()
    assert not blob_data_path(root, scenario.sha256(layer)).exists()

    await fake.go_down()
    # "A cached image stays pullable with the upstream gone."
    manifest = await pull(registry, "docker.io/library/bydigest", by_digest.digest)
    assert manifest["digest"] == by_digest.digest
    for descriptor in evicted.layers:
        response, data = await fetch(
            f"{registry.url}/v2/docker.io/library/evicted/blobs/{descriptor.digest}"
        )
        assert response.code == 200
        assert scenario.sha256(data) == descriptor.digest
    response, _ = await fetch(f"{registry.url}/v2/team/app/manifests/{scenario.sha256(body)}")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_a_fill_during_a_gc_run_touches_what_it_stores(
    proxied: Proxied,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """While a collector runs (its announcement in storage), a cache fill marks every blob it
    stored ``touched``, as a push does: the collector keeps them instead of deleting them
    under a fill it did not see."""
    image = fake.content.add_image("library/filled", "v1", [2000, 3000])
    registry = await proxied(default="false")
    root = storage_root(registry)
    running = root / V2 / gcguard.RUNNING.removeprefix(f"{layout.ROOT}/")
    running.parent.mkdir(parents=True, exist_ok=True)
    running.write_text(f"{int(time.time())}\n")
    manifest = await pull(registry, "docker.io/library/filled", "v1")
    assert manifest["digest"] == image.digest
    stored = [image.digest, image.config or "", *(layer.digest for layer in image.layers)]
    for digest in stored:
        touched = blob_data_path(root, digest).parent / gcguard.TOUCHED
        assert touched.exists(), digest
