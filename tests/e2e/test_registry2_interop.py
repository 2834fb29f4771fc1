"""
A data directory written by registry:2 is served by txregistry (tags, catalog, pulls), and
what txregistry writes is served back by registry:2 — the same bytes, the same digests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from tests.e2e.client import get, header
from tests.e2e.conftest import Starter
from tests.e2e.ocilayout import Layout, read_index_digest
from tests.e2e.tools import Registry2Process, skopeo

NO_TLS = ["--src-tls-verify=false", "--dest-tls-verify=false"]


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
