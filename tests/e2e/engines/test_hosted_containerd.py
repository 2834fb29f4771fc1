"""containerd's ``ctr`` against a hosted registry: push, pull by tag and by digest."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.e2e.engines.daemons import Containerd
from tests.e2e.engines.images import HOST_ARCH, docker_archive
from tests.e2e.engines.wire import check_image_blobs, host, stored_manifest
from tests.e2e.harness import InProcessRegistry

LAYERS = [{"hello": b"#!/bin/sh\necho hello\n"}, {"data/blob": bytes(range(256)) * 500}]


@pytest_twisted.ensureDeferred
async def test_ctr_push_then_pull_by_tag_and_by_digest(
    containerd: Containerd, registry: InProcessRegistry, tmp_path: Path
) -> None:
    await containerd.remove_all_images()
    archive = docker_archive(tmp_path / "image.tar", "local/ctr-app:v1", HOST_ARCH, LAYERS)
    await containerd.ctr("images", "import", "--snapshotter=native", str(archive.path))
    local = "docker.io/local/ctr-app:v1"
    digest = await containerd.image_digest(local)

    name = f"{host(registry.url)}/hosted/ctr-app"
    await containerd.ctr("images", "tag", local, f"{name}:v1")
    await containerd.ctr("images", "push", "--plain-http", f"{name}:v1")
    stored = await stored_manifest(registry.url, "hosted/ctr-app", "v1")
    assert stored.digest == digest
    assert stored.json["config"]["digest"] == archive.config_digest
    assert await check_image_blobs(registry.url, "hosted/ctr-app", stored.json) == list(
        archive.diff_ids
    )

    # Pulls unpack into the native snapshotter, which checks every layer against diff_ids.
    await containerd.remove_all_images()
    await containerd.ctr("images", "pull", "--plain-http", "--snapshotter=native", f"{name}:v1")
    assert await containerd.image_digest(f"{name}:v1") == digest
    await containerd.ctr("images", "check", f"name=={name}:v1")

    await containerd.remove_all_images()
    by_digest = f"{name}@{digest}"
    await containerd.ctr("images", "pull", "--plain-http", "--snapshotter=native", by_digest)
    assert await containerd.image_digest(by_digest) == digest
