"""Real clients against a running txregistry: skopeo round trips and oras artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests.e2e.client import get, header
from tests.e2e.harness import InProcessRegistry
from tests.e2e.ocilayout import OCI_MANIFEST, Layout, read_index_digest
from tests.e2e.tools import skopeo

NO_TLS = ["--src-tls-verify=false", "--dest-tls-verify=false"]


def docker_ref(registry: InProcessRegistry, path: str) -> str:
    return "docker://" + registry.url.removeprefix("http://") + "/" + path


@pytest_twisted.ensureDeferred
async def test_skopeo_round_trip_multi_layer(registry: InProcessRegistry, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "src")
    _, descriptor = layout.image(
        "amd64",
        [{"etc/hello": b"hello\n"}, {"usr/bin/tool": b"\x7fELF" + b"x" * 200_000}, {"a": b"b"}],
    )
    layout.tag(descriptor, "v1")
    await skopeo(
        "copy",
        *NO_TLS,
        "--preserve-digests",
        f"oci:{layout.root}:v1",
        docker_ref(registry, "team/app:v1"),
    )

    response, body = await get(f"{registry.url}/v2/team/app/manifests/v1")
    assert header(response, "docker-content-digest") == descriptor["digest"]
    assert header(response, "content-type") == OCI_MANIFEST

    out = tmp_path / "out"
    await skopeo(
        "copy", *NO_TLS, "--preserve-digests", docker_ref(registry, "team/app:v1"), f"oci:{out}:v1"
    )
    assert read_index_digest(out, "v1") == descriptor["digest"]
    for layer in json.loads(body)["layers"]:
        stored = out / "blobs" / "sha256" / layer["digest"][7:]
        assert stored.stat().st_size == layer["size"]

    inspected = json.loads(
        await skopeo("inspect", "--tls-verify=false", docker_ref(registry, "team/app:v1"))
    )
    assert inspected["Digest"] == descriptor["digest"]
    assert len(inspected["Layers"]) == 3
    tags = json.loads(
        await skopeo("list-tags", "--tls-verify=false", docker_ref(registry, "team/app"))
    )
    assert tags["Tags"] == ["v1"]


@pytest_twisted.ensureDeferred
async def test_skopeo_round_trip_multi_arch(registry: InProcessRegistry, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "src")
    images = {}
    for arch in ("amd64", "arm64", "s390x"):
        _, images[arch] = layout.image(arch, [{f"{arch}/bin": arch.encode() * 1000}])
    _, index = layout.multi_arch(images)
    layout.tag(index, "multi")
    await skopeo(
        "copy",
        *NO_TLS,
        "--all",
        "--preserve-digests",
        f"oci:{layout.root}:multi",
        docker_ref(registry, "multi/arch:latest"),
    )
    response, body = await get(f"{registry.url}/v2/multi/arch/manifests/latest")
    assert header(response, "docker-content-digest") == index["digest"]
    assert {m["digest"] for m in json.loads(body)["manifests"]} == {
        d["digest"] for d in images.values()
    }
    out = tmp_path / "out"
    await skopeo(
        "copy",
        *NO_TLS,
        "--all",
        "--preserve-digests",
        docker_ref(registry, "multi/arch:latest"),
        f"oci:{out}:multi",
    )
    assert read_index_digest(out, "multi") == index["digest"]
    for descriptor in images.values():
        assert (out / "blobs" / "sha256" / descriptor["digest"][7:]).exists()


@pytest_twisted.ensureDeferred
async def test_oras_artifact_with_subject(registry: InProcessRegistry, tmp_path: Path) -> None:
    import oras.client
    import oras.oci

    layout = Layout(tmp_path / "src")
    _, descriptor = layout.image("amd64", [{"x": b"y"}])
    layout.tag(descriptor, "v1")
    await skopeo(
        "copy",
        *NO_TLS,
        "--preserve-digests",
        f"oci:{layout.root}:v1",
        docker_ref(registry, "signed/app:v1"),
    )

    sbom = tmp_path / "sbom.spdx.json"
    sbom.write_text('{"spdxVersion": "SPDX-2.3"}')
    host = registry.url.removeprefix("http://")

    def push() -> None:
        client = oras.client.OrasClient(hostname=host, insecure=True)
        subject = oras.oci.Subject(OCI_MANIFEST, descriptor["digest"], descriptor["size"])
        response = client.push(
            target=f"{host}/signed/app:sbom",
            files=[f"{sbom}:application/spdx+json"],
            manifest_annotations={"org.example.kind": "sbom"},
            subject=subject,
            disable_path_validation=True,
        )
        assert response.status_code == 201, response.text

    await deferToThread(push)
    response, body = await get(f"{registry.url}/v2/signed/app/referrers/{descriptor['digest']}")
    assert response.code == 200
    referrers = json.loads(body)["manifests"]
    assert len(referrers) == 1
    assert referrers[0]["annotations"]["org.example.kind"] == "sbom"
    tagged = await treq.get(f"{registry.url}/v2/signed/app/manifests/sbom")
    assert header(tagged, "docker-content-digest") == referrers[0]["digest"]
