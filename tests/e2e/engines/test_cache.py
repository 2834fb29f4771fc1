"""
Engines pulling ``docker.io/library/<name>`` through the pull-through cache from the fake Docker
Hub, the way each is configured in production: dockerd with ``registry-mirrors``, containerd with
a ``hosts.toml`` (which adds ``?ns=docker.io``), podman with a registries.conf mirror.

Each test pulls three times, forgetting the image in between so the engine must fetch every
blob again: cold (the upstream serves every blob once), warm (the upstream sees no blob request),
and with the upstream down (everything, the tag included, comes from the cache).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest_twisted

from tests.e2e.engines.daemons import Containerd, Dockerd, Podman
from tests.e2e.engines.images import UpstreamImage, add_runnable_image
from tests.e2e.engines.wire import check_image_blobs, find_digest, host, stored_manifest
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied

LAYERS = [{"bin/hello": b"#!/bin/sh\necho hello\n"}, {"usr/share/blob": bytes(range(256)) * 600}]

# A pull: returns (manifest digest, image ID) as the engine reports them.
Pull = Callable[[], Awaitable[tuple[str, str]]]


def blob_requests(fake: FakeUpstream) -> int:
    """Blob GETs the fake Docker Hub saw (registry redirects and CDN downloads)."""
    return fake.count("GET", "blob") + fake.count("GET", "cdn")


async def cold_warm_down(
    fake: FakeUpstream,
    url: str,
    image: UpstreamImage,
    pull: Pull,
    forget: Callable[[], Awaitable[None]],
) -> None:
    await forget()
    assert await pull() == (image.digest, image.config_digest)
    for digest in (image.config_digest, *image.layers):
        assert fake.count("GET", "cdn", ref=digest) == 1, digest
    stored = await stored_manifest(url, image.name, image.tag)
    assert stored.digest == image.digest
    await check_image_blobs(url, image.name, stored.json)

    await forget()
    seen = blob_requests(fake)
    assert await pull() == (image.digest, image.config_digest)
    assert blob_requests(fake) == seen

    await fake.go_down()
    await forget()
    assert await pull() == (image.digest, image.config_digest)
    assert blob_requests(fake) == seen


@pytest_twisted.ensureDeferred
async def test_docker_pulls_through_registry_mirror(
    dockerd: Dockerd, proxied: Proxied, fake: FakeUpstream
) -> None:
    image = add_runnable_image(fake.content, "library/dockerpulled", "latest", LAYERS)
    registry = await proxied()
    await dockerd.set_mirror(registry.url)

    async def pull() -> tuple[str, str]:
        output = await dockerd.docker("pull", "docker.io/library/dockerpulled:latest")
        image_id = await dockerd.docker(
            "image", "inspect", "--format", "{{.Id}}", "dockerpulled:latest"
        )
        return find_digest(r"Digest: {digest}", output), image_id.strip()

    try:
        await cold_warm_down(fake, registry.url, image, pull, dockerd.remove_all_images)
    finally:
        await dockerd.set_mirror(None)


@pytest_twisted.ensureDeferred
async def test_containerd_pulls_through_hosts_toml(
    containerd: Containerd, proxied: Proxied, fake: FakeUpstream
) -> None:
    image = add_runnable_image(fake.content, "library/ctrpulled", "latest", LAYERS)
    registry = await proxied()
    reference = "docker.io/library/ctrpulled:latest"

    async def pull() -> tuple[str, str]:
        return await containerd.pull_through_mirror(registry.url, reference)

    await cold_warm_down(fake, registry.url, image, pull, containerd.remove_all_images)


@pytest_twisted.ensureDeferred
async def test_podman_pulls_through_registries_conf_mirror(
    podman: Podman, proxied: Proxied, fake: FakeUpstream
) -> None:
    image = add_runnable_image(fake.content, "library/podmanpulled", "latest", LAYERS)
    registry = await proxied()
    podman.set_mirror(host(registry.url))
    reference = "docker.io/library/podmanpulled:latest"

    async def pull() -> tuple[str, str]:
        await podman.podman("pull", reference)
        output = await podman.podman(
            "image", "inspect", "--format", "{{.Digest}} {{.Id}}", reference
        )
        digest, image_id = output.split()
        return digest, "sha256:" + image_id

    try:
        await cold_warm_down(fake, registry.url, image, pull, podman.remove_all_images)
    finally:
        podman.set_mirror(None)
