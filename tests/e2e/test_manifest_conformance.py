"""
Manifest behaviour the OCI distribution-spec conformance suite checks beyond the basics:
reads of malformed references, ``?tag=`` on a push by digest (sha512 included, down to the
storage layout registry:2 reads) and sparse indexes (``[validation] index_platforms``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest_twisted
import treq

from registry.api import mediatypes as mt
from tests.e2e.client import error_codes, get, header, push_blob, raw_headers
from tests.e2e.harness import InProcessRegistry
from tests.manifests import samples

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
