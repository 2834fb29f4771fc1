"""
A data directory written by registry:2 is served by txregistry (tags, catalog, pulls), and
what txregistry writes is served back by registry:2 — the same bytes, the same digests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest_twisted
import treq

from registry.api import mediatypes as mt
from tests.e2e.client import get, header, pages, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.harness import sleep, write_config
from tests.e2e.ocilayout import Layout, read_index_digest
from tests.e2e.tools import Registry2Process, skopeo
from tests.manifests import samples
from tests.ops.test_cli import cli

NO_TLS = ["--src-tls-verify=false", "--dest-tls-verify=false"]


async def push_signed_image(url: str, name: str, signature_blob: bytes) -> tuple[bytes, bytes]:
    """An image tagged ``v1`` and an artifact whose subject it is, pushed the way both
    registries take them (each blob in two steps: POST, then PUT with the body); returns the
    image's and the artifact's manifests."""
    subject = samples.oci_image(layers=(samples.LAYER_1,))
    signature = samples.artifact(subject, blob=signature_blob)
    for blob in (samples.CONFIG, samples.LAYER_1, mt.OCI_EMPTY_CONTENT, signature_blob):
        location = await start_upload(url, name)
        response = await treq.put(
            f"{location}{'&' if '?' in location else '?'}digest={samples.sha256(blob)}",
            data=blob,
        )
        assert response.code == 201, await response.text()
    for reference, body in (("v1", subject), (samples.sha256(signature), signature)):
        response = await treq.put(
            f"{url}/v2/{name}/manifests/{reference}",
            data=body,
            headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
        )
        assert response.code == 201, await response.text()
    return subject, signature


@pytest_twisted.ensureDeferred
async def test_registry2_data_directory_both_ways(start_registry: Starter, tmp_path: Path) -> None:
    root = tmp_path / "shared-root"
    root.mkdir()
    layout = Layout(tmp_path / "src")
    _, first = layout.image("amd64", [{"one": b"1" * 5000}, {"two": b"2" * 7000}])
    layout.tag(first, "v1")
    images = {}
    for arch in ("amd64", "arm64"):
        _, images[arch] = layout.image(arch, [{arch: arch.encode() * 3000}])
    _, index = layout.multi_arch(images)
    layout.tag(index, "multi")
    _, second = layout.image("amd64", [{"three": b"3" * 9000}])
    layout.tag(second, "v2")

    # 1. registry:2 writes.
    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        await skopeo(
            "copy",
            *NO_TLS,
            "--preserve-digests",
            f"oci:{layout.root}:v1",
            f"docker://{registry2.host}/from/registry2:v1",
        )
        await skopeo(
            "copy",
            *NO_TLS,
            "--all",
            "--preserve-digests",
            f"oci:{layout.root}:multi",
            f"docker://{registry2.host}/from/registry2:multi",
        )
    finally:
        registry2.stop()

    # 2. txregistry serves registry:2's data as is, then writes its own.
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    response, body = await get(f"{registry.url}/v2/_catalog")
    assert json.loads(body) == {"repositories": ["from/registry2"]}
    response, body = await get(f"{registry.url}/v2/from/registry2/tags/list")
    assert json.loads(body)["tags"] == ["multi", "v1"]
    response, _ = await get(f"{registry.url}/v2/from/registry2/manifests/v1")
    assert header(response, "docker-content-digest") == first["digest"]
    host = registry.url.removeprefix("http://")
    out = tmp_path / "pulled-from-txregistry"
    await skopeo(
        "copy",
        *NO_TLS,
        "--all",
        "--preserve-digests",
        f"docker://{host}/from/registry2:multi",
        f"oci:{out}:multi",
    )
    assert read_index_digest(out, "multi") == index["digest"]
    await skopeo(
        "copy",
        *NO_TLS,
        "--preserve-digests",
        f"oci:{layout.root}:v2",
        f"docker://{host}/from/registry2:v2",
    )
    await skopeo(
        "copy",
        *NO_TLS,
        "--preserve-digests",
        f"oci:{layout.root}:v1",
        f"docker://{host}/from/txregistry:v1",
    )
    await registry.stop()

    # 3. registry:2 serves what txregistry wrote.
    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        tags = json.loads(
            await skopeo(
                "list-tags", "--tls-verify=false", f"docker://{registry2.host}/from/registry2"
            )
        )
        assert sorted(tags["Tags"]) == ["multi", "v1", "v2"]
        back = tmp_path / "pulled-from-registry2"
        await skopeo(
            "copy",
            *NO_TLS,
            "--preserve-digests",
            f"docker://{registry2.host}/from/registry2:v2",
            f"oci:{back}:v2",
        )
        assert read_index_digest(back, "v2") == second["digest"]
        await skopeo(
            "copy",
            *NO_TLS,
            "--preserve-digests",
            f"docker://{registry2.host}/from/txregistry:v1",
            f"oci:{back}:v1",
        )
        assert read_index_digest(back, "v1") == first["digest"]
        response, body = await get(f"http://{registry2.host}/v2/_catalog")
        assert json.loads(body)["repositories"] == ["from/registry2", "from/txregistry"]
    finally:
        registry2.stop()


@pytest_twisted.ensureDeferred
async def test_manifests_registry2_deleted_are_gone_for_gc_and_referrers(
    start_registry: Starter, tmp_path: Path
) -> None:
    """
    registry:2's manifest delete removes the revision's ``link`` and leaves its folder.  Such
    a folder is no manifest: ``txregistry gc`` frees its blobs, and ``reindex-referrers``
    drops it from the referrers index (it listed a referrer that answered 404).
    """
    root = tmp_path / "shared-root"
    root.mkdir()
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    url, name = registry.url, "app/signed"
    subject, signature = await push_signed_image(url, name, b"a signature registry:2 deletes")
    await registry.stop()

    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        response = await treq.delete(
            f"http://{registry2.host}/v2/{name}/manifests/{samples.sha256(signature)}"
        )
        assert response.code == 202, await response.text()
    finally:
        registry2.stop()

    config = write_config(tmp_path / "ops.cfg", {"storage": {"rootdirectory": str(root)}})
    result = await cli("reindex-referrers", "--config", str(config))
    assert result.code == 0, result
    result = await cli("gc", "--config", str(config), "--grace", "0s")
    assert result.code == 0, result
    signature_blob = (
        root
        / "docker/registry/v2/blobs/sha256"
        / (samples.sha256(b"a signature registry:2 deletes")[7:9])
    )
    assert not (signature_blob / samples.sha256(b"a signature registry:2 deletes")[7:]).exists()
    assert (
        root / "docker/registry/v2/blobs/sha256" / samples.sha256(samples.LAYER_1)[7:9]
    ).exists()

    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    response, body = await get(f"{registry.url}/v2/{name}/referrers/{samples.sha256(subject)}")
    assert response.code == 200
    assert json.loads(body)["manifests"] == []
    response, body = await get(f"{registry.url}/v2/{name}/manifests/v1")
    assert (response.code, body) == (200, subject)


@pytest_twisted.ensureDeferred
async def test_referrers_registry2_pushed_are_answered_from_the_first_start(
    start_registry: Starter, tmp_path: Path
) -> None:
    """registry:2 keeps no referrers index: served for the first time, its data directory is
    indexed at start-up, so the referrers API lists what registry:2 pushed without an
    operator running ``reindex-referrers`` first."""
    root = tmp_path / "shared-root"
    root.mkdir()
    name = "from/registry2"
    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        subject, signature = await push_signed_image(
            f"http://{registry2.host}", name, samples.SIGNATURE
        )
    finally:
        registry2.stop()

    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    listed: list[object] = []
    for _ in range(200):  # bounded: the index is built in the background at start-up
        response, body = await get(f"{registry.url}/v2/{name}/referrers/{samples.sha256(subject)}")
        assert response.code == 200
        listed = json.loads(body)["manifests"]
        if listed:
            break
        await sleep(0.05)
    assert [entry["digest"] for entry in listed] == [samples.sha256(signature)]  # type: ignore[index]


async def catalog_pages(base: str, n: int, cursor_base: str | None = None) -> list[str]:
    """The catalog of ``base`` read ``n`` per page (next pages asked of ``cursor_base``)."""
    found = await pages(base, f"/v2/_catalog?n={n}", "repositories", cursor_base)
    return [name for page in found for name in page]


@pytest_twisted.ensureDeferred
async def test_catalog_order_and_cursors_are_registry2s(
    start_registry: Starter, tmp_path: Path
) -> None:
    # registry:2 lists repositories in the order it walks folders (component by component:
    # "x/b/c" before "x-b"); a cursor one server hands out must page correctly on the
    # other when both serve one folder.
    root = tmp_path / "shared-root"
    root.mkdir()
    names = ["x", "x/b", "x/b/c", "x-b", "x.b", "x0", "y/a", "y/a/b", "y/a-b", "a"]
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    blob = b"catalog order"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    for name in names:
        response = await treq.post(
            f"{registry.url}/v2/{name}/blobs/uploads/?digest={digest}",
            data=blob,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.code == 201, await response.text()
    ours = await catalog_pages(registry.url, 3)
    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        theirs = await catalog_pages(f"http://{registry2.host}", 3)
        # Cursors of registry:2 followed on txregistry, and the other way round.
        theirs_then_ours = await catalog_pages(f"http://{registry2.host}", 3, registry.url)
        ours_then_theirs = await catalog_pages(registry.url, 3, f"http://{registry2.host}")
    finally:
        registry2.stop()
    expected = ["a", "x", "x/b", "x/b/c", "x-b", "x.b", "x0", "y/a", "y/a/b", "y/a-b"]
    assert theirs == expected
    assert ours == expected
    assert theirs_then_ours == expected
    assert ours_then_theirs == expected
