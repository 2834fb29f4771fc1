"""dockerd and the docker CLI against a hosted registry: push, pull, login, manifest lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from registry.api.mediatypes import DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2
from tests.e2e.client import get
from tests.e2e.engines.conftest import PASSWORD, USER, basic_auth
from tests.e2e.engines.daemons import Dockerd
from tests.e2e.engines.images import HOST_ARCH, OTHER_ARCH, ArchiveImage, docker_archive
from tests.e2e.engines.wire import check_image_blobs, find_digest, host, platforms, stored_manifest
from tests.e2e.harness import InProcessRegistry

LAYERS = [{"hello": b"#!/bin/sh\necho hello\n"}, {"data/blob": bytes(range(256)) * 400}]


async def load(dockerd: Dockerd, archive: ArchiveImage) -> None:
    await dockerd.docker("load", "--input", str(archive.path))
    image_id = await dockerd.docker("image", "inspect", "--format", "{{.Id}}", archive.reference)
    assert image_id.strip() == archive.config_digest


async def push(dockerd: Dockerd, archive: ArchiveImage, reference: str) -> str:
    """Tag and push; the manifest digest docker printed."""
    await dockerd.docker("tag", archive.reference, reference)
    output = await dockerd.docker("push", reference)
    return find_digest(r"digest: {digest} size: \d+", output)


async def inspect(dockerd: Dockerd, reference: str) -> tuple[str, list[str]]:
    """Image ID and repository digests docker reports for ``reference``."""
    output = await dockerd.docker(
        "image", "inspect", "--format", "{{json .Id}} {{json .RepoDigests}}", reference
    )
    image_id, digests = output.split(" ", 1)
    return json.loads(image_id), json.loads(digests)


@pytest_twisted.ensureDeferred
async def test_docker_push_then_pull_by_tag_and_by_digest(
    dockerd: Dockerd, registry: InProcessRegistry, tmp_path: Path
) -> None:
    await dockerd.remove_all_images()
    archive = docker_archive(tmp_path / "image.tar", "local/docker-app:v1", HOST_ARCH, LAYERS)
    await load(dockerd, archive)
    name = f"{host(registry.url)}/hosted/docker-app"

    digest = await push(dockerd, archive, f"{name}:v1")
    stored = await stored_manifest(registry.url, "hosted/docker-app", "v1")
    assert stored.digest == digest
    assert stored.media_type == DOCKER_MANIFEST_V2
    assert stored.json["config"]["digest"] == archive.config_digest
    assert await check_image_blobs(registry.url, "hosted/docker-app", stored.json) == list(
        archive.diff_ids
    )

    await dockerd.remove_all_images()
    output = await dockerd.docker("pull", f"{name}:v1")
    assert find_digest(r"Digest: {digest}", output) == digest
    assert await inspect(dockerd, f"{name}:v1") == (archive.config_digest, [f"{name}@{digest}"])

    await dockerd.remove_all_images()
    output = await dockerd.docker("pull", f"{name}@{digest}")
    assert find_digest(r"Digest: {digest}", output) == digest
    assert await inspect(dockerd, f"{name}@{digest}") == (
        archive.config_digest,
        [f"{name}@{digest}"],
    )


@pytest_twisted.ensureDeferred
async def test_docker_login_then_push_and_pull(
    dockerd: Dockerd, auth_registry: InProcessRegistry, tmp_path: Path
) -> None:
    registry_host = host(auth_registry.url)
    response, _ = await get(f"{auth_registry.url}/v2/")
    assert response.code == 401  # credentials are really required
    archive = docker_archive(tmp_path / "image.tar", "local/docker-private:v1", HOST_ARCH, LAYERS)
    await dockerd.remove_all_images()
    await load(dockerd, archive)

    output = await dockerd.docker(
        "login", "--username", USER, "--password", PASSWORD, registry_host
    )
    assert "Login Succeeded" in output
    try:
        name = f"{registry_host}/private/app"
        digest = await push(dockerd, archive, f"{name}:v1")
        stored = await stored_manifest(auth_registry.url, "private/app", "v1", basic_auth())
        assert stored.digest == digest
        await check_image_blobs(auth_registry.url, "private/app", stored.json, basic_auth())

        await dockerd.remove_all_images()
        await dockerd.docker("pull", f"{name}:v1")
        assert (await inspect(dockerd, f"{name}:v1"))[0] == archive.config_digest
    finally:
        await dockerd.docker("logout", registry_host)


@pytest_twisted.ensureDeferred
async def test_docker_manifest_create_and_push_two_platforms(
    dockerd: Dockerd, registry: InProcessRegistry, tmp_path: Path
) -> None:
    """``docker manifest create/push --insecure``: the CLI talks to the registry itself (TLS
    first, then plain HTTP), and the list stored names both platforms' manifests."""
    await dockerd.remove_all_images()
    name = f"{host(registry.url)}/hosted/multi"
    pushed = {}
    for arch in (HOST_ARCH, OTHER_ARCH):
        files = [{"arch": arch.encode() * 1000}]
        archive = docker_archive(tmp_path / f"{arch}.tar", f"local/multi:{arch}", arch, files)
        await load(dockerd, archive)
        pushed[arch] = await push(dockerd, archive, f"{name}:{arch}")

    await dockerd.docker(
        "manifest", "create", "--insecure", f"{name}:list", *(f"{name}:{a}" for a in pushed)
    )
    output = await dockerd.docker("manifest", "push", "--insecure", "--purge", f"{name}:list")
    digest = find_digest(r"^{digest}$", output.strip())

    stored = await stored_manifest(registry.url, "hosted/multi", "list")
    assert stored.digest == digest
    assert stored.media_type == DOCKER_MANIFEST_LIST
    assert platforms(stored.json) == pushed
    for arch, child in pushed.items():
        manifest = await stored_manifest(registry.url, "hosted/multi", child)
        _, config = await get(
            f"{registry.url}/v2/hosted/multi/blobs/{manifest.json['config']['digest']}"
        )
        assert json.loads(config)["architecture"] == arch
