"""
Edges of copying an image, each of which failed: platforms sharing a layer (one platform's
manifest was sent before the shared layer had arrived), a full disk under an OCI layout (the
copy could hang for good), registry:2 with tokens (cancelling an upload needs ``delete``; a
mount refused outright must fall back to streaming), a source that is not what it says (a
traceback, or a child left out silently), and the modes of a layout's files (0600).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from registry.client import Credentials, RegistryClient
from registry.client._streams import FileSink
from registry.client.copy import LayoutImage, RegistryImage, copy_image
from registry.client.layout import OCILayout
from registry.client.walk import CopyError
from tests.client import images
from tests.client.conftest import ClientFactory, reactor
from tests.client.tokenserver import TokenService, token_service
from tests.e2e.conftest import Starter
from tests.e2e.harness import REPO_ROOT
from tests.e2e.test_full_disk import mounted_tmpfs
from tests.e2e.tools import Registry2Process

SHARED = 16 * 1024 * 1024


async def push_image(
    client: RegistryClient, name: str, tag: str, layers: dict[str, list[bytes]]
) -> tuple[bytes, dict[str, bytes]]:
    """An index of one image per architecture in ``layers``; (index, manifests)."""
    manifests: dict[str, bytes] = {}
    for arch, blobs in layers.items():
        body, by_digest = images.image(arch, blobs)
        for dgst, data in by_digest.items():
            await client.upload_blob(name, data, dgst)
        await client.put_manifest(name, images.digest(body), body)
        manifests[arch] = body
    index = images.index(manifests)
    await client.put_manifest(name, tag, index)
    return index, manifests


@pytest_twisted.ensureDeferred
async def test_platforms_sharing_a_layer_wait_for_its_transfer(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    source = make_client((await start_registry()).url)
    shared = os.urandom(SHARED)
    layers = {arch: [shared, os.urandom(1000)] for arch in ("amd64", "arm64")}
    index, manifests = await push_image(source, "src/app", "v1", layers)
    root = tmp_path / "registry2"
    root.mkdir()
    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        target = make_client(f"http://{registry2.host}")
        result = await copy_image(
            RegistryImage(source, "src/app", "v1"), RegistryImage(target, "mirror/app", "v1")
        )
        assert str(result.digest) == images.digest(index)
        assert (await target.get_manifest("mirror/app", "v1")).body == index
        for body in manifests.values():
            got = await target.get_manifest("mirror/app", images.digest(body))
            assert got.body == body
        assert await target.blob_exists("mirror/app", images.digest(shared)) == SHARED
        assert result.blobs_copied == 1 + 2 + 2  # the shared layer once, configs, the rest
    finally:
        registry2.stop()


@implementer(IPushProducer)
class _Body:
    """What a response body is to the sink: paused, resumed, stopped (recorded)."""

    def __init__(self) -> None:
        self.paused = self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@pytest_twisted.ensureDeferred
async def test_a_write_that_fails_stops_the_body_it_paused(tmp_path: Path) -> None:
    """The disk fills while the sink has paused the body for its queue: the body is stopped
    (it used to stay paused for good, and the copy waited forever), and the error is the
    disk's."""
    with mounted_tmpfs(tmp_path, 1024 * 1024) as disk:
        handle = open(disk / "blob", "wb")  # noqa: SIM115 - closed below
        try:
            sink = FileSink(reactor, handle)
            body = _Body()
            sink.registerProducer(body, True)
            for _ in range(16):  # 4 MiB into 1 MiB, faster than the thread writes
                sink.write(b"\0" * (256 * 1024))
            assert body.paused
            with pytest.raises(OSError) as raised:
                await sink.close()
            assert raised.value.errno == errno.ENOSPC
            assert body.stopped
        finally:
            handle.close()


def _copy(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DOCKER_CONFIG": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "registry.cli", "copy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest_twisted.ensureDeferred
async def test_a_full_disk_under_a_layout_ends_the_copy_with_one_line(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    registry = await start_registry()
    client = make_client(registry.url)
    await push_image(client, "src/big", "v1", {"amd64": [os.urandom(SHARED)]})
    host = registry.url.removeprefix("http://")
    with mounted_tmpfs(tmp_path, 4 * 1024 * 1024) as disk:
        result = await Deferred.fromCoroutine(
            _in_thread(
                "-q", "--src-tls-verify=false", f"docker://{host}/src/big:v1", f"oci:{disk}/l:v1"
            )
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("txregistry copy: failed: ")
    assert "No space left on device" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


async def _in_thread(*args: str) -> subprocess.CompletedProcess[str]:
    from twisted.internet.threads import deferToThread

    return await deferToThread(_copy, *args)


def _registry2_with_tokens(tmp_path: Path, tokens: TokenService) -> Registry2Process:
    root = tmp_path / "registry2"
    root.mkdir()
    auth = Registry2Process.TOKEN_AUTH.format(
        realm=tokens.url, service="test-registry", issuer="test-issuer", bundle=tokens.bundle
    )
    registry2 = Registry2Process(tmp_path, root, auth=auth)
    registry2.start()
    return registry2


@pytest_twisted.ensureDeferred
async def test_an_upload_is_cancelled_on_registry2_with_tokens(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """registry:2 wants a token with ``delete`` for any DELETE, an upload's too: the cancel
    was refused (401), and the upload's bytes stayed until registry:2 purged them."""
    async with token_service(tmp_path, {"alice": "secret"}) as tokens:
        registry2 = _registry2_with_tokens(tmp_path, tokens)
        try:
            client = make_client(
                f"http://{registry2.host}", credentials=Credentials("alice", "secret")
            )
            upload = await client.start_upload("alice/app")
            uploads = tmp_path / "registry2/docker/registry/v2/repositories/alice/app/_uploads"
            assert [p.name for p in uploads.rglob("data")] == ["data"]
            await client.cancel_upload(upload)
            # (registry:2 leaves the session's empty hashstates folder behind.)
            assert list(uploads.rglob("data")) == []
        finally:
            registry2.stop()


@pytest_twisted.ensureDeferred
async def test_a_mount_refused_outright_falls_back_to_streaming(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Within one registry:2 with tokens, from a repository the destination's user may not
    pull: registry:2 answers the mount with 401 (txregistry opens a plain upload instead), and
    the copy failed there rather than stream the blobs as it does after a 202."""
    users = {"alice": "secret", "bob": "builder"}
    async with token_service(tmp_path, users) as tokens:
        tokens.refused["alice"] = ("bobonly/",)
        registry2 = _registry2_with_tokens(tmp_path, tokens)
        try:
            url = f"http://{registry2.host}"
            bob = make_client(url, credentials=Credentials("bob", "builder"))
            alice = make_client(url, credentials=Credentials("alice", "secret"))
            index, _ = await push_image(bob, "bobonly/app", "v1", {"amd64": [os.urandom(5000)]})
            result = await copy_image(
                RegistryImage(bob, "bobonly/app", "v1"), RegistryImage(alice, "alice/app", "v1")
            )
            assert (result.blobs_mounted, result.blobs_copied) == (0, 2)
            assert (await alice.get_manifest("alice/app", "v1")).body == index
        finally:
            registry2.stop()


def _layout(folder: Path, blobs: dict[str, bytes], top: bytes, media_type: str) -> None:
    folder.mkdir()
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for data in [*blobs.values(), top]:
        path = folder / "blobs/sha256" / images.digest(data).removeprefix("sha256:")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    entry: dict[str, Any] = {
        "mediaType": media_type,
        "digest": images.digest(top),
        "size": len(top),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    index = {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": [entry]}
    (folder / "index.json").write_text(json.dumps(index))


@pytest_twisted.ensureDeferred
async def test_a_manifest_that_is_not_json_fails_the_command_in_one_line(
    registry: Any, tmp_path: Path
) -> None:
    broken = b"this is no manifest"
    _layout(tmp_path / "layout", {}, broken, images.OCI_MANIFEST)
    host = registry.url.removeprefix("http://")
    result = await _in_thread(
        "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", f"docker://{host}/bad:v1"
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"txregistry copy: failed: manifest {images.digest(broken)} is not JSON\n"
    )


@pytest_twisted.ensureDeferred
async def test_an_index_naming_a_child_that_is_no_descriptor_is_not_copied(
    tmp_path: Path,
) -> None:
    body, blobs = images.image("amd64", [b"layer"])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": images.OCI_INDEX,
            "manifests": [
                images.descriptor(images.OCI_MANIFEST, body),
                {"mediaType": images.OCI_MANIFEST, "digest": "sha256:zz", "size": 10},
            ],
        }
    ).encode()
    _layout(tmp_path / "source", {**blobs, images.digest(body): body}, index, images.OCI_INDEX)
    source = await OCILayout.open(reactor, tmp_path / "source")
    target = await OCILayout.create(reactor, tmp_path / "target")
    with pytest.raises(
        CopyError, match=r"is not valid: manifests\[1\]\.digest \"sha256:zz\" is not a digest"
    ):
        await copy_image(LayoutImage(source, "v1"), LayoutImage(target, "v1"))


@pytest_twisted.ensureDeferred
async def test_a_layout_s_files_get_the_umask_s_modes(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """As any file the process makes (skopeo's too), not mkstemp's 0600: a layout copied by
    one user can be read by another."""
    client = make_client((await start_registry()).url)
    await push_image(client, "src/app", "v1", {"amd64": [b"layer"]})
    layout = await OCILayout.create(reactor, tmp_path / "layout")
    await copy_image(RegistryImage(client, "src/app", "v1"), LayoutImage(layout, "v1"))
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    files = [p for p in (tmp_path / "layout").rglob("*") if p.is_file()]
    assert len(files) >= 5  # oci-layout, index.json, the manifest, config, layer
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.name: expected for p in files
    }
