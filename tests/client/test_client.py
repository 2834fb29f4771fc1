"""
The client against the project's own registry on loopback: every call, asserting the bytes
and digests that went over the wire (read back with the client and with a plain HTTP GET).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_twisted

from registry.api.digests import Digest
from registry.client import NotFound, Rejected
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.e2e.client import get, header
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry
from tests.fakes.upstream import FakeUpstream


async def push_image(client: object, name: str, tag: str, arch: str = "amd64") -> bytes:
    manifest, blobs = images.image(arch, [os.urandom(3000), os.urandom(5000)])
    for dgst, data in blobs.items():
        assert await client.upload_blob(name, data, dgst) == Digest.parse(dgst)  # type: ignore[attr-defined]
    await client.put_manifest(name, tag, manifest)  # type: ignore[attr-defined]
    return manifest


@pytest_twisted.ensureDeferred
async def test_blobs_up_and_down(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client(registry.url)
    assert await client.ping() == 200
    data = os.urandom(300_000)
    dgst = images.digest(data)
    # Monolithic from bytes, chunked from a file.
    assert str(await client.upload_blob("a/b", data)) == dgst
    source = tmp_path / "blob"
    source.write_bytes(data[::-1])
    chunked = await client.upload_blob("a/c", source, chunk_size=65_536)
    assert str(chunked) == images.digest(data[::-1])
    response, body = await get(f"{registry.url}/v2/a/c/blobs/{chunked}")
    assert response.code == 200 and body == data[::-1]
    # Exists, read, range, to a file.
    assert await client.blob_exists("a/b", dgst) == len(data)
    assert await client.blob_exists("a/c", dgst) is None
    assert await (await client.blob("a/b", dgst)).read() == data
    part = await client.blob("a/b", dgst, offset=1000, length=500)
    assert part.offset == 1000 and part.length == 500
    assert part.headers.getRawHeaders("content-range") == [f"bytes 1000-1499/{len(data)}"]
    assert await part.read() == data[1000:1500]
    tail = await client.blob("a/b", dgst, offset=299_000)
    assert await tail.read() == data[299_000:]
    saved = tmp_path / "saved"
    assert await client.download_blob("a/b", dgst, saved) == len(data)
    assert saved.read_bytes() == data
    with pytest.raises(NotFound) as info:
        await client.blob("a/b", images.digest(b"nothing"))
    assert info.value.code == "BLOB_UNKNOWN" and info.value.status == 404


@pytest_twisted.ensureDeferred
async def test_a_range_from_byte_zero_is_not_checked_against_the_digest(
    registry: InProcessRegistry, make_client: ClientFactory
) -> None:
    """A bounded range that starts at byte 0 is a range like any other: its bytes, not a
    digest mismatch with the whole blob."""
    client = make_client(registry.url)
    data = os.urandom(100)
    dgst = await client.upload_blob("a/b", data)
    head = await client.blob("a/b", dgst, offset=0, length=10)
    assert (head.offset, head.length) == (0, 10)
    assert await head.read() == data[:10]
    assert not head.whole and (await client.blob("a/b", dgst)).whole


@pytest_twisted.ensureDeferred
async def test_a_wrong_digest_is_refused(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client(registry.url)
    # Bytes: refused before anything is sent.
    with pytest.raises(Rejected) as info:
        await client.upload_blob("a/b", b"some bytes", images.digest(b"other bytes"))
    assert info.value.code == "DIGEST_INVALID" and info.value.status is None
    source = tmp_path / "f"
    source.write_bytes(b"file bytes")
    # From a file, monolithic or chunked: the client finds it before the commit (the
    # monolithic PUT is cut short of its last bytes), and says it the same way.
    for chunk_size in (None, 4):
        with pytest.raises(Rejected) as info:
            await client.upload_blob("a/b", source, images.digest(b"other"), chunk_size=chunk_size)
        assert info.value.code == "DIGEST_INVALID" and info.value.status is None
        assert str(info.value) == (
            f"{source} hashes to {images.digest(b'file bytes')}, not {images.digest(b'other')}"
        )


@pytest_twisted.ensureDeferred
async def test_manifests_bytes_preserved(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    registry = await start_registry({"storage": {"delete_enabled": "true"}})
    client = make_client(registry.url)
    manifest = await push_image(client, "app", "v1")
    got = await client.get_manifest("app", "v1")
    assert got.body == manifest
    assert got.media_type == images.OCI_MANIFEST
    assert str(got.digest) == images.digest(manifest)
    by_digest = await client.get_manifest("app", images.digest(manifest))
    assert by_digest.body == manifest
    head = await client.head_manifest("app", "v1")
    assert head is not None and head.body is None
    assert head.digest == got.digest and head.size == len(manifest)
    response, body = await get(
        f"{registry.url}/v2/app/manifests/v1", headers={"Accept": images.OCI_MANIFEST}
    )
    assert body == manifest
    # An index over two images, put by digest with ?tag=.
    other = await push_image(client, "app", "v2", "arm64")
    index = images.index({"amd64": manifest, "arm64": other})
    dgst = await client.put_manifest("app", images.digest(index), index, tags=["multi"])
    assert str(dgst) == images.digest(index)
    assert (await client.get_manifest("app", "multi")).body == index
    # Errors carry the OCI codes.
    with pytest.raises(NotFound) as info:
        await client.get_manifest("app", "nope")
    assert info.value.code == "MANIFEST_UNKNOWN"
    with pytest.raises(Rejected) as rejected:
        await client.put_manifest(
            "app",
            "bad",
            b'{"schemaVersion": 2, "mediaType": "'
            + images.OCI_MANIFEST.encode()
            + b'", "layers": 3}',
        )
    assert rejected.value.code == "MANIFEST_INVALID"
    await client.delete_manifest("app", images.digest(other))
    assert await client.head_manifest("app", images.digest(other)) is None
    response, _ = await get(f"{registry.url}/v2/app/manifests/{images.digest(other)}")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_lists_follow_link_pages(
    registry: InProcessRegistry, make_client: ClientFactory
) -> None:
    client = make_client(registry.url)
    manifest, blobs = images.image("amd64", [b"layer"])
    for name in ("r/one", "r/two", "r/three"):
        for dgst, data in blobs.items():
            await client.upload_blob(name, data, dgst)
    tags = [f"t{i}" for i in range(7)]
    for tag in tags:
        await client.put_manifest("r/one", tag, manifest)
    first = await client.list_tags("r/one", n=3)
    assert first.items == ["t0", "t1", "t2"] and first.next_last == "t2"
    assert [t async for t in client.all_tags("r/one", page_size=3)] == tags
    for name in ("r/two", "r/three"):
        await client.put_manifest(name, "x", manifest)
    assert [r async for r in client.all_repositories(page_size=2)] == [
        "r/one",
        "r/three",
        "r/two",
    ]
    assert (await client.catalog(n=2)).items == ["r/one", "r/three"]
    assert await client.tags("r/one", 3) == (["t0", "t1", "t2"], True)


@pytest_twisted.ensureDeferred
async def test_resumable_upload_from_another_client(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A session started by one client is finished by another from the saved location:
    the second learns the offset from the registry and sends only the rest."""
    data = os.urandom(200_000)
    source = tmp_path / "data"
    source.write_bytes(data)
    first = make_client(registry.url)
    upload = await first.start_upload("up/load")
    await first.upload_chunk(upload, data[:120_000])
    assert upload.offset == 120_000

    second = make_client(registry.url)
    resumed = await second.resume_upload("up/load", upload.location)
    assert resumed.offset == 120_000
    dgst = await second.upload_blob("up/load", source, upload=resumed, chunk_size=50_000)
    assert str(dgst) == images.digest(data)
    _, body = await get(f"{registry.url}/v2/up/load/blobs/{dgst}")
    assert body == data


@pytest_twisted.ensureDeferred
async def test_mount_and_referrers(registry: InProcessRegistry, make_client: ClientFactory) -> None:
    client = make_client(registry.url)
    manifest = await push_image(client, "src/app", "v1")
    layer = json.loads(manifest)["layers"][0]["digest"]
    assert await client.mount_blob("dst/app", layer, "src/app") is True
    assert await client.blob_exists("dst/app", layer) is not None
    missing = images.digest(b"not there")
    assert await client.mount_blob("dst/app", missing, "src/app") is False
    # Referrers, with the artifactType filter.
    for artifact_type, payload in (("application/x.sig", b"sig"), ("application/x.sbom", b"sbom")):
        body, blobs = images.referrer(manifest, images.OCI_MANIFEST, artifact_type, payload)
        for dgst, data in blobs.items():
            await client.upload_blob("src/app", data, dgst)
        await client.put_manifest("src/app", images.digest(body), body)
    subject = images.digest(manifest)
    found = await client.referrers("src/app", subject)
    assert found is not None
    assert sorted(d["artifactType"] for d in found) == ["application/x.sbom", "application/x.sig"]
    sboms = await client.referrers("src/app", subject, artifact_type="application/x.sbom")
    assert [d["artifactType"] for d in sboms or []] == ["application/x.sbom"]
    response, _ = await get(
        f"{registry.url}/v2/src/app/referrers/{subject}?artifactType=application/x.sbom"
    )
    assert header(response, "oci-filters-applied") == "artifactType"


@pytest_twisted.ensureDeferred
async def test_referrers_filtered_when_the_registry_does_not(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """The fake Docker Hub ignores ``artifactType``: the client filters itself."""
    fake.switches.auth = "none"
    image = fake.content.add_image("library/app", "v1", [100])
    subject = fake.content.repos["library/app"].manifests[image.digest][1]
    for artifact_type, payload in (("application/x.sig", b"s"), ("application/x.sbom", b"b")):
        body, _ = images.referrer(subject, images.OCI_MANIFEST, artifact_type, payload)
        fake.content.add_manifest("library/app", images.OCI_MANIFEST, body)
    client = make_client(fake.url)
    every = await client.referrers("library/app", image.digest)
    assert len(every or []) == 2
    sboms = await client.referrers("library/app", image.digest, artifact_type="application/x.sbom")
    assert [d["artifactType"] for d in sboms or []] == ["application/x.sbom"]


@pytest_twisted.ensureDeferred
async def test_a_missing_fallback_tag_costs_no_manifest_get(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """Without a referrers API (Docker Hub), ``referrers(tag_schema=True)`` looks for the
    ``sha256-<hex>`` tag with a HEAD: a manifest GET counts against Docker Hub's pull rate
    limit, so a sync or copy over many subjects without referrers must cost none; a tag that
    is there is read with one GET after its HEAD."""
    fake.switches.referrers_api = False
    image = fake.content.add_image("library/alpine", "3", [100])
    client = make_client(fake.url)
    before = len(fake.log)
    assert await client.referrers("library/alpine", image.digest, tag_schema=True) == []
    asked = [(r.method, r.kind) for r in fake.log[before:] if r.kind in ("manifest", "referrers")]
    assert asked == [("GET", "referrers"), ("HEAD", "manifest")]
    index = "application/vnd.oci.image.index.v1+json"
    listed = json.dumps({"schemaVersion": 2, "mediaType": index, "manifests": []}).encode()
    tag = "sha256-" + str(image.digest).split(":", 1)[1]
    fake.content.add_manifest("library/alpine", index, listed, tag=tag)
    before = len(fake.log)
    assert await client.referrers("library/alpine", image.digest, tag_schema=True) == []
    asked = [(r.method, r.kind) for r in fake.log[before:] if r.kind in ("manifest", "referrers")]
    assert asked == [("GET", "referrers"), ("HEAD", "manifest"), ("GET", "manifest")]


@pytest_twisted.ensureDeferred
async def test_a_fallback_tag_whose_head_names_no_digest_is_read_all_the_same(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """A registry whose manifest HEAD leaves out ``Docker-Content-Digest``: the HEAD says the
    fallback tag is there, and its GET (digest-checked) lists the referrers; a HEAD that must
    name a digest refused it, and with it every subject's referrers."""
    fake.switches.referrers_api = False
    image = fake.content.add_image("library/alpine", "3", [100])
    index = "application/vnd.oci.image.index.v1+json"
    signature = {"mediaType": images.OCI_MANIFEST, "digest": "sha256:" + "5" * 64, "size": 10}
    listed = json.dumps({"schemaVersion": 2, "mediaType": index, "manifests": [signature]})
    tag = "sha256-" + str(image.digest).split(":", 1)[1]
    fake.content.add_manifest("library/alpine", index, listed.encode(), tag=tag)
    fake.switches.no_digest_refs = frozenset({tag})
    client = make_client(fake.url)
    found = await client.referrers("library/alpine", image.digest, tag_schema=True)
    assert found == [signature]
