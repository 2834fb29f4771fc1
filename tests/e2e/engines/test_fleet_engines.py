"""
Engines pulling ``docker.io/library/<name>`` through a fleet of two cache instances (twistd
processes on one SeaweedFS bucket and one Redis) from the fake Docker Hub.

Instance B is already fetching the image's large layer (its upstream body held after the first
MiB) when the engine, pointed at instance A, starts its pull: A streams that layer from B and
fetches the rest itself.  The image is complete (manifest and config digests as the engine
reports them; every blob served hashes to its digest), the upstream served each blob once, and
a second pull, the engine pointed at B this time, goes upstream for nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.e2e.engines.daemons import Containerd, Dockerd, Podman
from tests.e2e.engines.images import UpstreamImage, add_runnable_image
from tests.e2e.engines.wire import check_image_blobs, find_digest, host, stored_manifest
from tests.e2e.harness import RegistryProcess
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import blob_url, fleet_sections, start_pull
from tests.storage.s3server import S3Server

HELD_AFTER = 1 << 20

# A pull: returns (manifest digest, image ID) as the engine reports them; its argument is the
# instance the engine is pointed at.
Pull = Callable[[str], Awaitable[tuple[str, str]]]


def layers() -> list[dict[str, bytes]]:
    # Random bytes do not compress: the large layer stays past HELD_AFTER once gzipped.
    return [{"bin/hello": b"#!/bin/sh\necho hello\n"}, {"usr/share/big": os.urandom(3 << 20)}]


@pytest.fixture
def pair(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,
) -> Iterator[list[RegistryProcess]]:
    root = f"/fleet/{uuid.uuid4().hex}"
    instances = []
    for index in range(2):
        workdir = tmp_path / f"instance{index}"
        workdir.mkdir()
        sections = fleet_sections(s3_server, root, redis_server, index)
        sections["proxy:hub"]["remoteurl"] = fake.url
        # No takeover here: a lease that outlives a slow engine start on a loaded machine keeps
        # "one upstream GET per blob" about the fleet, not about the holder's renewal timing.
        sections["fleet"]["lease"] = "30s"
        instances.append(RegistryProcess(workdir, sections))
    try:
        for instance in instances:
            instance.launch()  # side by side
        for instance in instances:
            instance.wait_serving()
        yield instances
    finally:
        for instance in instances:
            instance.send_stop()
        for instance in instances:
            instance.wait_stopped()


def blob_requests(fake: FakeUpstream) -> int:
    return fake.count("GET", "blob") + fake.count("GET", "cdn")


async def pull_while_the_other_fills(
    fake: FakeUpstream,
    pair: list[RegistryProcess],
    image: UpstreamImage,
    pull: Pull,
    forget: Callable[[], Awaitable[None]],
) -> None:
    a, b = pair
    big = image.layers[-1]
    hold = fake.hold_body(big, HELD_AFTER)
    filling = await start_pull(blob_url(b, big).replace("library/alpine", image.name))
    assert filling.code == 200
    await wait_until(lambda: hold.arrived == 1, within=60)
    await forget()
    pulling = Deferred.fromCoroutine(pull(a.url))
    # The engine has the manifest and is fetching blobs through A while B holds the fill.
    await wait_until(lambda: fake.count("GET", "cdn", ref=image.config_digest) == 1, within=120)
    assert not hold.released
    hold.release()
    assert await pulling == (image.digest, image.config_digest)
    assert filling.done is not None
    await filling.done
    assert filling.digest == big
    for digest in (image.config_digest, *image.layers):
        assert fake.count("GET", "cdn", ref=digest) == 1, digest
    for instance in pair:
        stored = await stored_manifest(instance.url, image.name, image.tag)
        assert stored.digest == image.digest
        await check_image_blobs(instance.url, image.name, stored.json)

    await forget()
    seen = blob_requests(fake)
    assert await pull(b.url) == (image.digest, image.config_digest)
    assert blob_requests(fake) == seen


@pytest_twisted.ensureDeferred
async def test_docker_pulls_through_a_fleet(
    dockerd: Dockerd, pair: list[RegistryProcess], fake: FakeUpstream
) -> None:
    image = add_runnable_image(fake.content, "library/dockerfleet", "latest", layers())

    async def pull(url: str) -> tuple[str, str]:
        await dockerd.set_mirror(url)
        output = await dockerd.docker("pull", "docker.io/library/dockerfleet:latest")
        image_id = await dockerd.docker(
            "image", "inspect", "--format", "{{.Id}}", "dockerfleet:latest"
        )
        return find_digest(r"Digest: {digest}", output), image_id.strip()

    try:
        await pull_while_the_other_fills(fake, pair, image, pull, dockerd.remove_all_images)
    finally:
        await dockerd.set_mirror(None)


@pytest_twisted.ensureDeferred
async def test_containerd_pulls_through_a_fleet(
    containerd: Containerd, pair: list[RegistryProcess], fake: FakeUpstream
) -> None:
    image = add_runnable_image(fake.content, "library/ctrfleet", "latest", layers())
    reference = "docker.io/library/ctrfleet:latest"

    async def pull(url: str) -> tuple[str, str]:
        return await containerd.pull_through_mirror(url, reference)

    await pull_while_the_other_fills(fake, pair, image, pull, containerd.remove_all_images)


@pytest_twisted.ensureDeferred
async def test_podman_pulls_through_a_fleet(
    podman: Podman, pair: list[RegistryProcess], fake: FakeUpstream
) -> None:
    image = add_runnable_image(fake.content, "library/podmanfleet", "latest", layers())
    reference = "docker.io/library/podmanfleet:latest"

    async def pull(url: str) -> tuple[str, str]:
        podman.set_mirror(host(url))
        await podman.podman("pull", reference)
        output = await podman.podman(
            "image", "inspect", "--format", "{{.Digest}} {{.Id}}", reference
        )
        digest, image_id = output.split()
        return digest, "sha256:" + image_id

    try:
        await pull_while_the_other_fills(fake, pair, image, pull, podman.remove_all_images)
    finally:
        podman.set_mirror(None)
