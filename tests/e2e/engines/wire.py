"""What the registry holds, read back over HTTP, to compare with what an engine reports."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import attrs

from registry.api.mediatypes import MANIFEST_ACCEPT_HEADER
from tests.e2e.client import get, header, sha256

DIGEST = r"sha256:[0-9a-f]{64}"


def host(url: str) -> str:
    """``127.0.0.1:PORT`` of ``http://127.0.0.1:PORT``: how engines name the registry."""
    return url.removeprefix("http://")


def find_digest(pattern: str, output: str) -> str:
    """The digest captured by ``pattern`` (with ``{digest}`` in it) in an engine's output."""
    match = re.search(pattern.format(digest=f"({DIGEST})"), output)
    assert match is not None, f"no {pattern!r} in:\n{output}"
    return match[1]


@attrs.frozen
class Stored:
    """A manifest as the registry serves it."""

    digest: str
    media_type: str
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


async def stored_manifest(
    url: str, name: str, reference: str, headers: dict[str, str] | None = None
) -> Stored:
    """GET a manifest; its bytes must hash to the ``Docker-Content-Digest`` answered."""
    response, body = await get(
        f"{url}/v2/{name}/manifests/{reference}",
        headers={"Accept": MANIFEST_ACCEPT_HEADER, **(headers or {})},
    )
    assert response.code == 200, body[:500]
    digest = header(response, "docker-content-digest")
    assert digest == sha256(body)
    media_type = header(response, "content-type")
    assert media_type is not None
    return Stored(digest, media_type, body)


async def check_image_blobs(
    url: str, name: str, manifest: dict[str, Any], headers: dict[str, str] | None = None
) -> list[str]:
    """GET the config and every layer; each hashes to its descriptor.  The layers' diff IDs
    (digests of the uncompressed tars), which must equal the config's ``rootfs.diff_ids``."""
    blobs = {}
    for descriptor in [manifest["config"], *manifest["layers"]]:
        response, data = await get(f"{url}/v2/{name}/blobs/{descriptor['digest']}", headers=headers)
        assert response.code == 200, data[:500]
        assert sha256(data) == descriptor["digest"]
        assert len(data) == descriptor["size"]
        blobs[descriptor["digest"]] = data
    diff_ids = []
    for descriptor in manifest["layers"]:
        data = blobs[descriptor["digest"]]
        diff_ids.append(sha256(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data))
    config = json.loads(blobs[manifest["config"]["digest"]])
    assert config["rootfs"]["diff_ids"] == diff_ids
    return diff_ids


def platforms(index: dict[str, Any]) -> dict[str, str]:
    """``{architecture: manifest digest}`` of a manifest list or OCI index."""
    return {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
