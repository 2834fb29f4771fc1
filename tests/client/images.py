"""Small images built in memory for client tests: blobs, an OCI manifest, an index."""

from __future__ import annotations

import hashlib
import json
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def image(arch: str, layers: list[bytes]) -> tuple[bytes, dict[str, bytes]]:
    """An OCI image manifest (with odd but valid whitespace, so re-serialising would show)
    and its blobs by digest."""
    config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers"}})
    blobs = {digest(b): b for b in [config.encode(), *layers]}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config.encode()),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    return json.dumps(manifest, indent=3).encode() + b"\n", blobs


def index(manifests: dict[str, bytes]) -> bytes:
    entries = [
        descriptor(OCI_MANIFEST, body, platform={"architecture": arch, "os": "linux"})
        for arch, body in manifests.items()
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


def referrer(
    subject: bytes, subject_type: str, artifact_type: str, payload: bytes
) -> tuple[bytes, dict[str, bytes]]:
    """An artifact manifest (signature, SBOM ...) whose ``subject`` is ``subject``."""
    empty = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(EMPTY_CONFIG, empty),
        "layers": [descriptor("application/octet-stream", payload)],
        "subject": descriptor(subject_type, subject),
    }
    return json.dumps(manifest).encode(), {digest(empty): empty, digest(payload): payload}
