"""Images pushed with the client, and waiting for a sync's runs through its status route."""

from __future__ import annotations

import json
import os
from typing import Any

from registry.api.digests import Digest
from registry.client import RegistryClient
from tests.client import images
from tests.e2e.client import get
from tests.e2e.harness import sleep


async def push_image(
    client: RegistryClient,
    name: str,
    tag: str | None,
    arch: str = "amd64",
    layers: int = 2,
    layer_size: int = 2000,
) -> tuple[bytes, dict[str, bytes]]:
    """An OCI image with random layers; tagged ``tag`` (or pushed by digest when None)."""
    sizes = [layer_size + 1000 * i for i in range(layers)]
    manifest, blobs = images.image(arch, [os.urandom(size) for size in sizes])
    for dgst, data in blobs.items():
        await client.upload_blob(name, data, dgst)
    await client.put_manifest(name, tag or images.digest(manifest), manifest)
    return manifest, blobs


async def push_index(
    client: RegistryClient, name: str, tag: str, archs: tuple[str, ...] = ("amd64", "arm64")
) -> tuple[bytes, dict[str, bytes], dict[str, bytes]]:
    """A multi-platform index: (index bytes, child manifests by digest, blobs by digest)."""
    children: dict[str, bytes] = {}
    by_arch: dict[str, bytes] = {}
    blobs: dict[str, bytes] = {}
    for arch in archs:
        manifest, image_blobs = await push_image(client, name, None, arch)
        children[images.digest(manifest)] = manifest
        by_arch[arch] = manifest
        blobs.update(image_blobs)
    index = images.index(by_arch)
    await client.put_manifest(name, tag, index)
    return index, children, blobs


async def sync_status(url: str, name: str) -> dict[str, Any]:
    response, body = await get(f"{url}/sync/status/{name}")
    assert response.code == 200, body
    status: dict[str, Any] = json.loads(body)
    return status


async def wait_runs(url: str, name: str, runs: int = 1, limit: float = 60) -> dict[str, Any]:
    """The sync's status once it has finished ``runs`` runs (polled, bounded)."""
    for _ in range(int(limit / 0.05)):
        try:
            status = await sync_status(url, name)
        except AssertionError:
            status = {}
        if status.get("runs", 0) >= runs and status.get("state") != "running":
            return status
        await sleep(0.05)
    raise AssertionError(f"sync {name} did not finish {runs} runs in {limit}s: {status}")


async def assert_same_image(
    source: RegistryClient, source_name: str, target: RegistryClient, target_name: str, tag: str
) -> None:
    """The tag names the same bytes on both sides, and so does everything it names."""
    there = await source.get_manifest(source_name, tag)
    here = await target.get_manifest(target_name, tag)
    assert here.body == there.body and here.digest == there.digest
    assert here.media_type == there.media_type
    await _assert_content(source, source_name, target, target_name, json.loads(there.body or b""))


async def _assert_content(
    source: RegistryClient,
    source_name: str,
    target: RegistryClient,
    target_name: str,
    document: dict[str, Any],
) -> None:
    for child in document.get("manifests", []):
        there = await source.get_manifest(source_name, child["digest"])
        here = await target.get_manifest(target_name, child["digest"])
        assert here.body == there.body and str(here.digest) == child["digest"]
        await _assert_content(
            source, source_name, target, target_name, json.loads(here.body or b"")
        )
    for descriptor in [document.get("config"), *document.get("layers", [])]:
        if descriptor is None:
            continue
        digest = Digest.parse(descriptor["digest"])
        data = await (await target.blob(target_name, digest)).read(64 * 1024 * 1024)
        assert data == await (await source.blob(source_name, digest)).read(64 * 1024 * 1024)
        assert images.digest(data) == str(digest)


def metric(text: str, name: str, sync: str) -> float:
    """One sample of the Prometheus text for ``sync`` (0 when absent)."""
    prefix = f'{name}{{sync="{sync}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def wait_fresh_run(url: str, name: str, limit: float = 60) -> dict[str, Any]:
    """The status after a run that started after this call (content pushed before it is
    seen whole)."""
    status = await sync_status(url, name)
    runs = status["runs"] + (2 if status["state"] == "running" else 1)
    return await wait_runs(url, name, runs, limit)
