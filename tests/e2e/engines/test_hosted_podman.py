"""podman (vfs) against a hosted registry: login, push, pull by tag and digest, manifest lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted

from tests.e2e.client import get
from tests.e2e.engines.conftest import PASSWORD, USER, basic_auth
from tests.e2e.engines.daemons import Podman
from tests.e2e.engines.images import HOST_ARCH, OTHER_ARCH, ArchiveImage, docker_archive
from tests.e2e.engines.wire import check_image_blobs, host, platforms, stored_manifest
from tests.e2e.harness import InProcessRegistry

LAYERS = [{"hello": b"#!/bin/sh\necho hello\n"}, {"data/blob": bytes(range(256)) * 300}]
NO_TLS = "--tls-verify=false"


async def load(podman: Podman, archive: ArchiveImage) -> None:
    await podman.podman("load", "--input", str(archive.path))
    image_id = await podman.podman("image", "inspect", "--format", "{{.Id}}", archive.reference)
    assert "sha256:" + image_id.strip() == archive.config_digest


async def push(podman: Podman, source: str, destination: str, tmp_path: Path) -> str:
    """Push; the manifest digest podman wrote to its ``--digestfile``."""
    digest_file = tmp_path / "pushed-digest"
    await podman.podman("push", NO_TLS, f"--digestfile={digest_file}", source, destination)
    return digest_file.read_text().strip()


async def inspect(podman: Podman, reference: str) -> tuple[str, str]:
    """Image ID (a config digest) and the manifest digest podman pulled ``reference`` as."""
    output = await podman.podman("image", "inspect", "--format", "{{.Id}} {{.Digest}}", reference)
    image_id, digest = output.split()
    return "sha256:" + image_id, digest


@pytest_twisted.ensureDeferred
async def test_podman_login_push_then_pull_by_tag_and_by_digest(
    podman: Podman, auth_registry: InProcessRegistry, tmp_path: Path
) -> None:
    registry_host = host(auth_registry.url)
    response, _ = await get(f"{auth_registry.url}/v2/")
    assert response.code == 401  # credentials are really required
    await podman.remove_all_images()
    archive = docker_archive(tmp_path / "image.tar", "local/podman-app:v1", HOST_ARCH, LAYERS)
    await load(podman, archive)

    output = await podman.podman(
        "login", NO_TLS, "--username", USER, "--password", PASSWORD, registry_host
    )
    assert "Login Succeeded" in output
    try:
        name = f"{registry_host}/hosted/podman-app"
        digest = await push(podman, archive.reference, f"{name}:v1", tmp_path)
        stored = await stored_manifest(auth_registry.url, "hosted/podman-app", "v1", basic_auth())
        assert stored.digest == digest
        assert stored.json["config"]["digest"] == archive.config_digest
        diff_ids = await check_image_blobs(
            auth_registry.url, "hosted/podman-app", stored.json, basic_auth()
        )
        assert diff_ids == list(archive.diff_ids)

        await podman.remove_all_images()
        await podman.podman("pull", NO_TLS, f"{name}:v1")
        assert await inspect(podman, f"{name}:v1") == (archive.config_digest, digest)

        await podman.remove_all_images()
        await podman.podman("pull", NO_TLS, f"{name}@{digest}")
        assert await inspect(podman, f"{name}@{digest}") == (archive.config_digest, digest)
    finally:
        await podman.podman("logout", registry_host)


@pytest_twisted.ensureDeferred
async def test_podman_manifest_create_add_push_two_platforms(
    podman: Podman, registry: InProcessRegistry, tmp_path: Path
) -> None:
    await podman.remove_all_images()
    name = f"{host(registry.url)}/hosted/podman-multi"
    pushed = {}
    for arch in (HOST_ARCH, OTHER_ARCH):
        files = [{"arch": arch.encode() * 1000}]
        archive = docker_archive(tmp_path / f"{arch}.tar", f"local/pmulti:{arch}", arch, files)
        await load(podman, archive)
        pushed[arch] = await push(podman, archive.reference, f"{name}:{arch}", tmp_path)

    await podman.podman("manifest", "create", "local/pmulti-list")
    for arch in pushed:
        await podman.podman(
            "manifest", "add", NO_TLS, "local/pmulti-list", f"docker://{name}:{arch}"
        )
    digest_file = tmp_path / "list-digest"
    await podman.podman(
        "manifest",
        "push",
        "--all",
        NO_TLS,
        f"--digestfile={digest_file}",
        "local/pmulti-list",
        f"docker://{name}:list",
    )

    stored = await stored_manifest(registry.url, "hosted/podman-multi", "list")
    assert stored.digest == digest_file.read_text().strip()
    assert platforms(stored.json) == pushed
    for arch, child in pushed.items():
        manifest = await stored_manifest(registry.url, "hosted/podman-multi", child)
        _, config = await get(
            f"{registry.url}/v2/hosted/podman-multi/blobs/{manifest.json['config']['digest']}"
        )
        assert json.loads(config)["architecture"] == arch


@pytest_twisted.ensureDeferred
async def test_podman_pulls_a_public_repository_without_login(
    podman: Podman, auth_registry: InProcessRegistry, tmp_path: Path
) -> None:
    """After the Basic challenge podman sends ``Authorization: Basic Og==`` (no user, no
    password): that is an anonymous caller, who may pull ``anonymous_pull`` repositories."""
    registry_host = host(auth_registry.url)
    archive = docker_archive(tmp_path / "image.tar", "local/podman-public:v1", HOST_ARCH, LAYERS)
    await podman.remove_all_images()
    await load(podman, archive)
    name = f"{registry_host}/public/podman-app"
    with pytest.raises(AssertionError, match=r"401|unauthorized|authentication required"):
        await push(podman, archive.reference, f"{name}:v1", tmp_path)

    await podman.podman("login", NO_TLS, "--username", USER, "--password", PASSWORD, registry_host)
    try:
        digest = await push(podman, archive.reference, f"{name}:v1", tmp_path)
    finally:
        await podman.podman("logout", registry_host)

    await podman.remove_all_images()
    await podman.podman("pull", NO_TLS, f"{name}:v1")
    assert await inspect(podman, f"{name}:v1") == (archive.config_digest, digest)
