"""
OCI layouts through the library: registry → layout → registry with identical digests,
layouts skopeo can read (``skopeo inspect oci:DIR:TAG``), layouts skopeo wrote read back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from registry.client import BadResponse
from registry.client.copy import LayoutImage, RegistryImage, copy_image
from registry.client.layout import REF_NAME, OCILayout
from registry.client.walk import CopyError
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.e2e.ocilayout import Layout, read_index_digest
from tests.e2e.tools import skopeo


async def push_multi(client: object, name: str, tag: str) -> tuple[bytes, dict[str, bytes]]:
    """A two-platform index with real tar+gzip layers (skopeo checks them) under ``tag``."""
    from tests.e2e.ocilayout import make_layer

    manifests: dict[str, bytes] = {}
    for arch in ("amd64", "arm64"):
        layer, diff_id = make_layer({arch: os.urandom(20_000)})
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": images.OCI_MANIFEST,
                "config": images.descriptor(images.OCI_CONFIG, config),
                "layers": [images.descriptor(images.OCI_LAYER, layer)],
            }
        ).encode()
        for data in (config, layer):
            await client.upload_blob(name, data)  # type: ignore[attr-defined]
        await client.put_manifest(name, images.digest(manifest), manifest)  # type: ignore[attr-defined]
        manifests[arch] = manifest
    index = images.index(manifests)
    await client.put_manifest(name, tag, index)  # type: ignore[attr-defined]
    return index, manifests


@pytest_twisted.ensureDeferred
async def test_registry_to_layout_to_registry(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    first = make_client((await start_registry()).url)
    second = make_client((await start_registry()).url)
    index, manifests = await push_multi(first, "src/app", "v1")
    out = tmp_path / "layout"
    layout = await OCILayout.create(reactor, out)
    result = await copy_image(RegistryImage(first, "src/app", "v1"), LayoutImage(layout, "v1"))
    assert str(result.digest) == images.digest(index)
    assert read_index_digest(out, "v1") == images.digest(index)
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for body in [index, *manifests.values()]:
        assert (out / "blobs" / "sha256" / images.digest(body)[7:]).read_bytes() == body
    # skopeo reads what we wrote, platform by platform.
    raw = json.loads(await skopeo("inspect", "--raw", f"oci:{out}:v1"))
    assert raw == json.loads(index)
    inspected = json.loads(await skopeo("--override-arch", "arm64", "inspect", f"oci:{out}:v1"))
    assert inspected["Architecture"] == "arm64"
    arm64 = json.loads(manifests["arm64"])
    assert inspected["Layers"] == [arm64["layers"][0]["digest"]]
    # Back into another registry: the same digests.
    again = await OCILayout.open(reactor, out)
    await copy_image(LayoutImage(again, "v1"), RegistryImage(second, "dst/app", "v2"))
    got = await second.get_manifest("dst/app", "v2")
    assert got.body == index
    for body in manifests.values():
        assert (await second.get_manifest("dst/app", images.digest(body))).body == body


@pytest_twisted.ensureDeferred
async def test_layout_written_by_skopeo_is_read(
    registry: object, make_client: ClientFactory, tmp_path: Path
) -> None:
    source = Layout(tmp_path / "by-test")
    _, descriptor = source.image("amd64", [{"f": b"x" * 3000}])
    source.tag(descriptor, "one")
    skopeo_dir = tmp_path / "by-skopeo"
    await skopeo("copy", "--preserve-digests", f"oci:{source.root}:one", f"oci:{skopeo_dir}:one")
    layout = await OCILayout.open(reactor, skopeo_dir)
    entry = await layout.resolve("one")
    assert entry["digest"] == descriptor["digest"]
    assert entry["annotations"][REF_NAME] == "one"
    client = make_client(registry.url)  # type: ignore[attr-defined]
    await copy_image(LayoutImage(layout, "one"), RegistryImage(client, "from/skopeo", "one"))
    assert str((await client.get_manifest("from/skopeo", "one")).digest) == descriptor["digest"]


@pytest_twisted.ensureDeferred
async def test_a_damaged_blob_is_refused(tmp_path: Path) -> None:
    layout = await OCILayout.create(reactor, tmp_path / "l")
    dgst = await layout.write_bytes(b"good bytes")
    assert await layout.read_blob(dgst) == b"good bytes"
    layout.blob_path(dgst).write_bytes(b"bad bytes!")
    with pytest.raises(BadResponse):
        await layout.read_blob(dgst)
    other = await OCILayout.create(reactor, tmp_path / "m")
    with pytest.raises(BadResponse):
        await other.copy_from(layout, dgst)
    assert await other.blob_size(dgst) is None
    assert [p.name for p in (tmp_path / "m" / "blobs" / "sha256").iterdir()] == []


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("off_by", [-1, 1])
async def test_a_layout_blob_of_another_size_than_declared_is_not_copied(
    registry: object, make_client: ClientFactory, tmp_path: Path, off_by: int
) -> None:
    """A layout manifest declaring another size than its blob file holds is refused before
    its bytes are sent: a registry source is held to the declared size, and a layout copied
    as it was published a manifest no client could pull whole."""
    source = Layout(tmp_path / "layout")
    body, _ = source.image("amd64", [{"f": b"x" * 3000}])
    manifest = json.loads(body)
    manifest["layers"][0]["size"] += off_by
    layer = manifest["layers"][0]["digest"]
    descriptor = {
        "mediaType": manifest["mediaType"],
        **source.add_blob(json.dumps(manifest).encode()),
    }
    source.tag(descriptor, "v1")
    layout = await OCILayout.open(reactor, source.root)
    client = make_client(registry.url)  # type: ignore[attr-defined]
    with pytest.raises(CopyError) as caught:
        await copy_image(LayoutImage(layout, "v1"), RegistryImage(client, "sized/app", "v1"))
    declared = manifest["layers"][0]["size"]
    assert str(caught.value) == (
        f"blob {layer} of {source.root}: its manifest declares {declared} bytes, the file"
        f" holds {declared - off_by}"
    )
    assert await client.blob_exists("sized/app", layer) is None
