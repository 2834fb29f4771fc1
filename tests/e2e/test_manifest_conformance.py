"""
Manifest behaviour the OCI distribution-spec conformance suite checks beyond the basics:
reads of malformed references, ``?tag=`` on a push by digest (sha512 included, down to the
storage layout registry:2 reads), sparse indexes (``[validation] index_platforms``) and sparse
images (``[validation] blobs_required``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest_twisted
import treq

from registry.api import mediatypes as mt
from tests.e2e.client import error_codes, get, header, push_blob, raw_headers, sha256
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry
from tests.e2e.tools import Registry2Process
from tests.fakes.webhook import WebhookReceiver
from tests.manifests import samples
from tests.ops.test_cli import cli

ROOT = "docker/registry/v2"
ACCEPT = f"{mt.OCI_IMAGE_INDEX}, {mt.OCI_IMAGE_MANIFEST}"


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


async def push_blobs(url: str, name: str) -> None:
    for blob in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2):
        await push_blob(url, name, blob)


async def put_manifest(url: str, path: str, body: bytes, content_type: str) -> Any:
    return await treq.put(f"{url}{path}", data=body, headers={"Content-Type": content_type})


def index_of(children: list[tuple[str, int, str]], **extra: Any) -> bytes:
    """An OCI index of ``(digest, size, os/arch)`` children: digests of any algorithm."""
    manifests = []
    for digest, size, platform in children:
        os_name, architecture = platform.split("/")
        manifests.append(
            {
                "mediaType": mt.OCI_IMAGE_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": {"architecture": architecture, "os": os_name},
            }
        )
    document = {"schemaVersion": 2, "mediaType": mt.OCI_IMAGE_INDEX, "manifests": manifests}
    return json.dumps({**document, **extra}, separators=(",", ":")).encode()


async def assert_manifest(url: str, reference: str, body: bytes, digest: str) -> None:
    """GET and HEAD of ``reference`` (Accept as the conformance suite sends it) answer
    ``body`` with ``digest``."""
    response, got = await get(f"{url}/manifests/{reference}", headers={"Accept": ACCEPT})
    assert response.code == 200, got
    assert got == body
    assert header(response, "docker-content-digest") == digest
    assert header(response, "content-type") == json.loads(body)["mediaType"]
    status, headers = await raw_headers(
        "HEAD", f"{url}/manifests/{reference}", "-H", f"Accept: {ACCEPT}"
    )
    assert status == 200
    assert headers["docker-content-digest"] == digest
    assert headers["content-length"] == str(len(body))


# -- reads of malformed references --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reads_of_an_invalid_reference_are_manifest_unknown(
    registry: InProcessRegistry,
) -> None:
    """
    v1.1.1's "GET nonexistent manifest should return 404" and "HEAD request to nonexistent
    manifest should return 404" use ``.INVALID_MANIFEST_NAME``; registry:2 answers 404.
    Writes to such a reference keep the 400 that says what is wrong.
    """
    await push_blobs(registry.url, "app")
    image = samples.oci_image()
    response = await put_manifest(
        registry.url, "/v2/app/manifests/v1", image, mt.OCI_IMAGE_MANIFEST
    )
    assert response.code == 201
    for name in ("app", "nobody"):
        for reference, reason in (
            (".INVALID_MANIFEST_NAME", "invalid tag"),
            ("sha256:baddigeststring", "invalid sha256 digest"),
        ):
            url = f"{registry.url}/v2/{name}/manifests/{reference}"
            response, body = await get(url)
            assert response.code == 404
            assert header(response, "content-type") == "application/json"
            assert json.loads(body) == {
                "errors": [
                    {
                        "code": "MANIFEST_UNKNOWN",
                        "message": "manifest unknown to registry",
                        "detail": {"name": name, "reference": reference, "reason": reason},
                    }
                ]
            }
            status, headers = await raw_headers("HEAD", url)
            assert status == 404
            assert headers["content-type"] == "application/json"
            assert headers["docker-distribution-api-version"] == "registry/2.0"
    url = f"{registry.url}/v2/app/manifests/.INVALID_MANIFEST_NAME"
    response = await put_manifest(registry.url, url[len(registry.url) :], image, "x/y")
    assert response.code == 400
    assert await error_codes(response) == ["TAG_INVALID"]
    response = await treq.delete(url)
    assert response.code == 400
    assert await error_codes(response) == ["TAG_INVALID"]
    response = await put_manifest(
        registry.url, "/v2/app/manifests/sha256:baddigeststring", image, mt.OCI_IMAGE_MANIFEST
    )
    assert response.code == 400
    assert await error_codes(response) == ["DIGEST_INVALID"]


# -- ?tag= on a push by digest --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tag_parameters_on_a_push_by_digest(registry: InProcessRegistry) -> None:
    """
    The main branch's "Tag Param" data (OCI_VERSION=dev): ``PUT .../manifests/<digest>?tag=a
    &tag=b`` points every tag at the manifest and lists them in ``OCI-Tag``.
    """
    repo = f"{registry.url}/v2/tagged/app"
    await push_blobs(registry.url, "tagged/app")
    image = samples.oci_image()
    digest = sha256(image)
    response = await put_manifest(
        registry.url,
        f"/v2/tagged/app/manifests/{digest}?tag=1.2.3&tag=1.2&tag=latest&tag=1.2",
        image,
        mt.OCI_IMAGE_MANIFEST,
    )
    assert response.code == 201, await response.text()
    assert response.headers.getRawHeaders("oci-tag") == ["1.2.3, 1.2, latest"]
    assert header(response, "docker-content-digest") == digest
    assert header(response, "location") == f"/v2/tagged/app/manifests/{digest}"
    for tag in ("1.2.3", "1.2", "latest"):
        await assert_manifest(repo, tag, image, digest)
    response, body = await get(f"{repo}/tags/list")
    assert json.loads(body) == {"name": "tagged/app", "tags": ["1.2", "1.2.3", "latest"]}

    # A push by tag with tag parameters sets both; OCI-Tag lists both (each accepted tag),
    # the URL's own first, once.
    response = await put_manifest(
        registry.url, "/v2/tagged/app/manifests/stable?tag=prod", image, mt.OCI_IMAGE_MANIFEST
    )
    assert response.code == 201
    assert response.headers.getRawHeaders("oci-tag") == ["stable, prod"]
    response = await put_manifest(
        registry.url,
        "/v2/tagged/app/manifests/stable?tag=stable&tag=prod",
        image,
        mt.OCI_IMAGE_MANIFEST,
    )
    assert response.headers.getRawHeaders("oci-tag") == ["stable, prod"]
    for tag in ("stable", "prod"):
        await assert_manifest(repo, tag, image, digest)

    # Without parameters there is no OCI-Tag.
    response = await put_manifest(
        registry.url, f"/v2/tagged/app/manifests/{digest}", image, mt.OCI_IMAGE_MANIFEST
    )
    assert response.code == 201
    assert response.headers.getRawHeaders("oci-tag") is None

    # One bad tag refuses the request before anything is stored.
    other = samples.oci_image(layers=(samples.LAYER_1,))
    for query in ("tag=fine&tag=-bad", "tag=fine&tag=" + "x" * 129, "tag=fine&tag=%FF"):
        response = await put_manifest(
            registry.url,
            f"/v2/tagged/app/manifests/{sha256(other)}?{query}",
            other,
            mt.OCI_IMAGE_MANIFEST,
        )
        assert response.code == 400, query
        assert await error_codes(response) == ["TAG_INVALID"]
    for reference in ("fine", sha256(other)):
        response = await treq.get(f"{repo}/manifests/{reference}")
        assert response.code == 404
        assert await error_codes(response) == ["MANIFEST_UNKNOWN"]


@pytest_twisted.ensureDeferred
async def test_sha512_manifests_pushed_with_tags(start_registry: Starter, tmp_path: Path) -> None:
    """
    The "Tag Param sha512" data: an index and its children pushed by sha512 digest, the index
    with two tag parameters.  A GET or HEAD by tag answers with the sha512 digest pushed;
    tags, catalog and referrers work; the links are registry:2's (the digest string), so gc
    keeps it all and registry:2 itself serves it by tag with the same digest.
    """
    root = tmp_path / "root"
    root.mkdir()
    config = {"storage": {"rootdirectory": str(root)}}
    registry = await start_registry(config)
    repo = f"{registry.url}/v2/algo/app"
    await push_blobs(registry.url, "algo/app")
    image = samples.oci_image()
    image_digest = sha512(image)
    response = await put_manifest(
        registry.url, f"/v2/algo/app/manifests/{image_digest}", image, mt.OCI_IMAGE_MANIFEST
    )
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == image_digest
    index = index_of([(image_digest, len(image), "linux/amd64")])
    index_digest = sha512(index)
    response = await put_manifest(
        registry.url,
        f"/v2/algo/app/manifests/{index_digest}?tag=tag-param-sha512-0&tag=multi",
        index,
        mt.OCI_IMAGE_INDEX,
    )
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == index_digest
    assert header(response, "oci-tag") == "tag-param-sha512-0, multi"
    assert header(response, "location") == f"/v2/algo/app/manifests/{index_digest}"
    for reference in ("tag-param-sha512-0", "multi", index_digest):
        await assert_manifest(repo, reference, index, index_digest)
    await assert_manifest(repo, image_digest, image, image_digest)

    # A referrer of the sha512 index, itself pushed by sha512 digest.
    signature = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_IMAGE_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": mt.OCI_EMPTY, "digest": mt.OCI_EMPTY_DIGEST, "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.example.sig.v1",
                    "digest": sha256(samples.LAYER_2),
                    "size": len(samples.LAYER_2),
                }
            ],
            "subject": {
                "mediaType": mt.OCI_IMAGE_INDEX,
                "digest": index_digest,
                "size": len(index),
            },
        },
        separators=(",", ":"),
    ).encode()
    signature_digest = sha512(signature)
    response = await put_manifest(
        registry.url, f"/v2/algo/app/manifests/{signature_digest}", signature, mt.OCI_IMAGE_MANIFEST
    )
    assert response.code == 201, await response.text()
    assert header(response, "oci-subject") == index_digest
    response, body = await get(f"{repo}/referrers/{index_digest}")
    assert response.code == 200
    assert json.loads(body)["manifests"] == [
        {
            "mediaType": mt.OCI_IMAGE_MANIFEST,
            "digest": signature_digest,
            "size": len(signature),
            "artifactType": "application/vnd.example.sig",
        }
    ]
    response, body = await get(f"{repo}/tags/list")
    assert json.loads(body) == {"name": "algo/app", "tags": ["multi", "tag-param-sha512-0"]}
    response, body = await get(f"{registry.url}/v2/_catalog")
    assert json.loads(body) == {"repositories": ["algo/app"]}

    # registry:2's layout: the links hold the digest string.
    manifests = root / ROOT / "repositories/algo/app/_manifests"
    hex_ = index_digest.split(":")[1]
    assert (manifests / "tags/multi/current/link").read_bytes() == index_digest.encode()
    assert (manifests / f"tags/multi/index/sha512/{hex_}/link").read_bytes() == (
        index_digest.encode()
    )
    assert (manifests / f"revisions/sha512/{hex_}/link").read_bytes() == index_digest.encode()
    assert (root / ROOT / f"blobs/sha512/{hex_[:2]}/{hex_}/data").read_bytes() == index
    await registry.stop()

    # gc (untagged manifests too) keeps the tagged index, its child and the referrer.
    cfg = tmp_path / "gc.cfg"
    cfg.write_text(f"[storage]\nrootdirectory = {root}\n")
    result = await cli("gc", "--config", str(cfg), "--delete-untagged", "--grace", "0s")
    assert result.code == 0, result.err
    registry = await start_registry(config)
    repo = f"{registry.url}/v2/algo/app"
    await assert_manifest(repo, "multi", index, index_digest)
    await assert_manifest(repo, image_digest, image, image_digest)
    await assert_manifest(repo, signature_digest, signature, signature_digest)
    response, body = await get(f"{repo}/blobs/{sha256(samples.LAYER_1)}")
    assert (response.code, body) == (200, samples.LAYER_1)
    await registry.stop()

    # registry:2 serves the same data by tag, with the sha512 digest.
    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        await assert_manifest(
            f"http://{registry2.host}/v2/algo/app", "tag-param-sha512-0", index, index_digest
        )
    finally:
        registry2.stop()


# -- sparse indexes ---------------------------------------------------------------------------


async def push_sparse_index(registry: InProcessRegistry, present: str, absent: str) -> Any:
    """An index with a child of platform ``present`` pushed and one of ``absent`` not."""
    await push_blobs(registry.url, "sparse")
    image = samples.oci_image()
    response = await put_manifest(
        registry.url, f"/v2/sparse/manifests/{sha256(image)}", image, mt.OCI_IMAGE_MANIFEST
    )
    assert response.code == 201
    missing = sha256(b"never pushed " + absent.encode())
    index = index_of([(sha256(image), len(image), present), (missing, 1024, absent)])
    response = await put_manifest(
        registry.url, "/v2/sparse/manifests/sparse-index", index, mt.OCI_IMAGE_INDEX
    )
    return response, index, missing


@pytest_twisted.ensureDeferred
async def test_sparse_index_refused_by_default(registry: InProcessRegistry) -> None:
    response, _, missing = await push_sparse_index(registry, "linux/amd64", "linux/arm64")
    assert response.code == 400
    body = json.loads(await response.content())
    assert [e["code"] for e in body["errors"]] == ["MANIFEST_BLOB_UNKNOWN"]
    assert body["errors"][0]["detail"] == {"digest": missing, "mediaType": mt.OCI_IMAGE_MANIFEST}


@pytest_twisted.ensureDeferred
async def test_sparse_index_with_no_platform_required(start_registry: Starter) -> None:
    """
    The main branch's "Sparse Manifests" index (OCI_DATA_SPARSE=true): with
    ``index_platforms = none`` it is accepted and served; its missing child stays unknown.
    """
    registry = await start_registry({"validation": {"index_platforms": "none"}})
    response, index, missing = await push_sparse_index(registry, "linux/amd64", "linux/arm64")
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == sha256(index)
    await assert_manifest(f"{registry.url}/v2/sparse", "sparse-index", index, sha256(index))
    response = await treq.get(f"{registry.url}/v2/sparse/manifests/{missing}")
    assert response.code == 404
    assert await error_codes(response) == ["MANIFEST_UNKNOWN"]


@pytest_twisted.ensureDeferred
async def test_sparse_index_with_listed_platforms(start_registry: Starter) -> None:
    """With a platform list only the children of those platforms must be there."""
    registry = await start_registry({"validation": {"index_platforms": "linux/amd64 linux/s390x"}})
    response, index, _ = await push_sparse_index(registry, "linux/amd64", "linux/arm64")
    assert response.code == 201, await response.text()
    await assert_manifest(f"{registry.url}/v2/sparse", "sparse-index", index, sha256(index))

    response, _, missing = await push_sparse_index(registry, "linux/arm64", "linux/s390x")
    assert response.code == 400
    body = json.loads(await response.content())
    assert [e["code"] for e in body["errors"]] == ["MANIFEST_BLOB_UNKNOWN"]
    assert body["errors"][0]["detail"] == {"digest": missing, "mediaType": mt.OCI_IMAGE_MANIFEST}


# -- sparse images ----------------------------------------------------------------------------


async def push_sparse_image(url: str) -> Any:
    """An image whose config and first layer are pushed and whose second layer is not."""
    await push_blob(url, "sparse", samples.CONFIG)
    await push_blob(url, "sparse", samples.LAYER_1)
    image = samples.oci_image()
    response = await put_manifest(
        url, "/v2/sparse/manifests/sparse-image", image, mt.OCI_IMAGE_MANIFEST
    )
    return response, image


@pytest_twisted.ensureDeferred
async def test_sparse_image_refused_by_default(registry: InProcessRegistry) -> None:
    response, _ = await push_sparse_image(registry.url)
    assert response.code == 400
    body = json.loads(await response.content())
    assert [e["code"] for e in body["errors"]] == ["MANIFEST_BLOB_UNKNOWN"]
    assert body["errors"][0]["detail"]["digest"] == sha256(samples.LAYER_2)


@pytest_twisted.ensureDeferred
async def test_sparse_image_without_required_blobs(start_registry: Starter) -> None:
    """
    The main branch's "Sparse Manifests" image (OCI_DATA_SPARSE=true), a layer never pushed:
    with ``blobs_required = false`` it is accepted and served by tag and digest (GET and HEAD),
    listed, and its missing layer stays unknown.
    """
    registry = await start_registry({"validation": {"blobs_required": "false"}})
    response, image = await push_sparse_image(registry.url)
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == sha256(image)
    for reference in ("sparse-image", sha256(image)):
        await assert_manifest(f"{registry.url}/v2/sparse", reference, image, sha256(image))
    response, body = await get(f"{registry.url}/v2/sparse/tags/list")
    assert json.loads(body)["tags"] == ["sparse-image"]
    response = await treq.get(f"{registry.url}/v2/sparse/blobs/{sha256(samples.LAYER_2)}")
    assert response.code == 404
    assert await error_codes(response) == ["BLOB_UNKNOWN"]
    response, body = await get(f"{registry.url}/v2/sparse/blobs/{sha256(samples.LAYER_1)}")
    assert (response.code, body) == (200, samples.LAYER_1)


@pytest_twisted.ensureDeferred
async def test_tag_parameters_send_one_push_event_per_tag(start_registry: Starter) -> None:
    hook = WebhookReceiver()
    await hook.start()
    try:
        registry = await start_registry(
            {
                "notifications:hook": {
                    "url": hook.url,
                    "timeout": "2s",
                    "ignoredmediatypes": "application/octet-stream",  # blob events
                }
            }
        )
        await push_blobs(registry.url, "events")
        image = samples.oci_image()
        digest = sha256(image)
        for query in ("?tag=a&tag=b", ""):
            response = await put_manifest(
                registry.url, f"/v2/events/manifests/{digest}{query}", image, mt.OCI_IMAGE_MANIFEST
            )
            assert response.code == 201
        events = await hook.wait_events(3)
        assert [(e["action"], e["target"]["digest"], e["target"].get("tag")) for e in events] == [
            ("push", digest, "a"),
            ("push", digest, "b"),
            ("push", digest, None),
        ]
    finally:
        await hook.stop()
