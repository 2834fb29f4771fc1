"""
Conditional requests (RFC 9110 section 13) and 405 answers, on the wire: blobs and manifests
carry their digest as a strong ETag, so ``If-None-Match`` gets ``304`` and ``If-Range`` decides
whether a ``Range`` is honoured; a method a resource does not take is a 405 naming the ones it
does (``Allow``).
"""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted

from tests.e2e.client import push_blob, raw_request, sha256, split_response
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def _exchange(
    registry: InProcessRegistry, method: str, path: str, *headers: str
) -> tuple[bytes, dict[str, str], bytes]:
    lines = [f"{method} {path} HTTP/1.1", "Host: registry", "Connection: close", *headers]
    answer = await raw_request(registry.url, ("\r\n".join(lines) + "\r\n\r\n").encode())
    return split_response(answer)


async def _push_image(registry: InProcessRegistry) -> tuple[str, str, bytes]:
    config = b"{}"
    layer = os.urandom(10_000)
    config_digest = await push_blob(registry.url, "team/app", config)
    layer_digest = await push_blob(registry.url, "team/app", layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    lines = [
        "PUT /v2/team/app/manifests/v1 HTTP/1.1",
        "Host: registry",
        "Connection: close",
        f"Content-Type: {OCI_MANIFEST}",
        f"Content-Length: {len(manifest)}",
    ]
    answer = await raw_request(registry.url, ("\r\n".join(lines) + "\r\n\r\n").encode() + manifest)
    assert answer.startswith(b"HTTP/1.1 201"), answer
    return layer_digest, sha256(manifest), layer


@pytest_twisted.ensureDeferred
async def test_if_none_match_answers_304_for_blobs_and_manifests(
    registry: InProcessRegistry,
) -> None:
    layer_digest, manifest_digest, layer = await _push_image(registry)
    for path, etag in (
        (f"/v2/team/app/blobs/{layer_digest}", layer_digest),
        ("/v2/team/app/manifests/v1", manifest_digest),
        (f"/v2/team/app/manifests/{manifest_digest}", manifest_digest),
    ):
        for method in ("GET", "HEAD"):
            for condition in (f'"{etag}"', f'W/"{etag}"', f'"sha256:{"0" * 64}", "{etag}"', "*"):
                status, headers, body = await _exchange(
                    registry, method, path, f"If-None-Match: {condition}"
                )
                assert status == b"HTTP/1.1 304 Not Modified", (path, method, condition, status)
                assert body == b""
                assert headers["etag"] == f'"{etag}"'
                assert headers["docker-content-digest"] == etag
                assert "content-length" not in headers
            status, headers, body = await _exchange(
                registry, method, path, f'If-None-Match: "sha256:{"0" * 64}"'
            )
            assert status == b"HTTP/1.1 200 OK", (path, method, status)
    status, _, body = await _exchange(registry, "GET", f"/v2/team/app/blobs/{layer_digest}")
    assert (status, body) == (b"HTTP/1.1 200 OK", layer)


@pytest_twisted.ensureDeferred
async def test_if_range_honours_a_range_only_for_this_blob(registry: InProcessRegistry) -> None:
    layer_digest, _, layer = await _push_image(registry)
    path = f"/v2/team/app/blobs/{layer_digest}"
    status, headers, body = await _exchange(
        registry, "GET", path, "Range: bytes=0-9", f'If-Range: "{layer_digest}"'
    )
    assert status == b"HTTP/1.1 206 Partial Content"
    assert (headers["content-range"], body) == (f"bytes 0-9/{len(layer)}", layer[:10])
    for other in (f'"sha256:{"0" * 64}"', f'W/"{layer_digest}"', "Sun, 06 Dec 2026 08:00:00 GMT"):
        status, headers, body = await _exchange(
            registry, "GET", path, "Range: bytes=0-9", f"If-Range: {other}"
        )
        assert status == b"HTTP/1.1 200 OK", other
        assert "content-range" not in headers
        assert body == layer


@pytest.mark.parametrize(
    ("storage", "manifest", "blob"),
    [
        pytest.param({"delete_enabled": "true"}, "GET, HEAD, PUT, DELETE", "GET, HEAD, DELETE"),
        pytest.param({}, "GET, HEAD, PUT", "GET, HEAD", id="deletes-disabled"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_method_a_resource_does_not_take_is_405_with_allow(
    start_registry: Starter, storage: dict[str, str], manifest: str, blob: str
) -> None:
    """``Allow`` names what the resource takes with this configuration, for methods no
    resource takes (``FOO``) too; DELETE, refused while deletes are disabled, is not in it."""
    registry = await start_registry({"storage": storage})
    layer_digest, _, _ = await _push_image(registry)
    for method, path, allow in (
        ("PATCH", "/v2/team/app/manifests/v1", manifest),
        ("POST", "/v2/team/app/tags/list", "GET, HEAD"),
        ("PUT", "/v2/_catalog", "GET, HEAD"),
        ("POST", f"/v2/team/app/referrers/{layer_digest}", "GET, HEAD"),
        ("PUT", f"/v2/team/app/blobs/{layer_digest}", blob),
        ("FOO", "/v2/team/app/manifests/v1", manifest),
        ("FOO", "/v2/", "GET, HEAD"),
        ("DELETE", "/v2/team/app/manifests/v1", manifest),
    ):
        if method == "DELETE" and "DELETE" in manifest:
            continue
        status, headers, body = await _exchange(registry, method, path)
        assert status == b"HTTP/1.1 405 Method Not Allowed", (method, path, status)
        assert headers["allow"] == allow, (method, path)
        assert [e["code"] for e in json.loads(body)["errors"]] == ["UNSUPPORTED"]


@pytest_twisted.ensureDeferred
async def test_head_on_the_listings_has_the_get_headers_without_the_body(
    registry: InProcessRegistry,
) -> None:
    """RFC 9110 section 9.1: HEAD wherever GET; a listing's HEAD carries the same status and
    headers (its ``Content-Length`` and ``Link`` included) and no body."""
    layer_digest, _, _ = await _push_image(registry)
    await push_blob(registry.url, "team/other", b"a second repository: a next page")
    for path in (
        "/v2/team/app/tags/list",
        "/v2/team/app/tags/list?n=1",
        "/v2/_catalog?n=1",
        f"/v2/team/app/referrers/{layer_digest}",
        "/v2/no/such/tags/list",
    ):
        get = await _exchange(registry, "GET", path)
        status, headers, body = await _exchange(registry, "HEAD", path)
        assert (status, body) == (get[0], b""), path
        for name in ("content-type", "content-length", "link", "docker-distribution-api-version"):
            assert headers.get(name) == get[1].get(name), (path, name)
        assert int(headers["content-length"]) == len(get[2]) > 0, path
        if path == "/v2/_catalog?n=1":
            assert headers["link"] == '</v2/_catalog?last=team%2Fapp&n=1>; rel="next"'


@pytest_twisted.ensureDeferred
async def test_writes_refused_in_read_only_mode_are_405_with_the_reads_in_allow(
    start_registry: Starter,
) -> None:
    registry = await start_registry({"maintenance": {"readonly": "true"}})
    for method, path, allow in (
        ("PUT", "/v2/team/app/manifests/v1", "GET, HEAD"),
        ("POST", "/v2/team/app/blobs/uploads/", ""),
        ("FOO", "/v2/team/app/manifests/v1", "GET, HEAD"),
    ):
        status, headers, body = await _exchange(registry, method, path)
        assert status == b"HTTP/1.1 405 Method Not Allowed", (method, path, status)
        assert headers["allow"] == allow, (method, path)
        assert [e["code"] for e in json.loads(body)["errors"]] == ["UNSUPPORTED"]


@pytest_twisted.ensureDeferred
async def test_the_fixed_pages_answer_other_methods_with_405_and_allow(
    registry: InProcessRegistry,
) -> None:
    """``POST /health`` was a 404 (as if the page were not there) and ``FOO /health`` a 405
    listing every method; both name what the page takes now."""
    for method, path, allow in (
        ("POST", "/health", "GET, HEAD"),
        ("FOO", "/health", "GET, HEAD"),
        ("DELETE", "/health/ready", "GET, HEAD"),
        ("PUT", "/health/live", "GET, HEAD"),
        ("POST", "/sync/status", "GET"),
        ("POST", "/metrics", "GET"),
    ):
        status, headers, body = await _exchange(registry, method, path)
        assert status == b"HTTP/1.1 405 Method Not Allowed", (method, path, status)
        assert headers["allow"] == allow, (method, path)
        assert [e["code"] for e in json.loads(body)["errors"]] == ["UNSUPPORTED"]
    status, _, _ = await _exchange(registry, "POST", "/nothing/here")
    assert status == b"HTTP/1.1 404 Not Found"
