"""
Realistic manifests, shaped like what docker, buildkit, oras and cosign push.

Each builder returns the exact bytes a client would send, so stores can be checked to keep
them byte for byte (Docker pretty-prints with three spaces, buildkit writes compact JSON).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from registry.api import mediatypes


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"layer-one-tar")]},
    }
).encode()
LAYER_1 = b"\x1f\x8b\x08\x00layer-one" * 10
LAYER_2 = b"\x1f\x8b\x08\x00layer-two" * 20
SIGNATURE = b'{"critical":{"identity":{"docker-reference":"example/app"}}}'
SBOM = b'{"spdxVersion":"SPDX-2.3"}'


def oci_image(
    config: bytes = CONFIG,
    layers: tuple[bytes, ...] = (LAYER_1, LAYER_2),
    **extra: Any,
) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_IMAGE_MANIFEST,
        "config": descriptor(mediatypes.OCI_IMAGE_CONFIG, config),
        "layers": [descriptor(mediatypes.OCI_LAYER_TAR_GZIP, layer) for layer in layers],
        **extra,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def docker_image(config: bytes = CONFIG, layers: tuple[bytes, ...] = (LAYER_1, LAYER_2)) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST_V2,
        "config": descriptor(mediatypes.DOCKER_CONTAINER_CONFIG, config),
        "layers": [descriptor(mediatypes.DOCKER_LAYER, layer) for layer in layers],
    }
    return json.dumps(document, indent=3).encode()


def _platform(arch: str) -> dict[str, str]:
    platform = {"architecture": arch, "os": "linux"}
    if arch == "arm64":
        platform["variant"] = "v8"
    return platform


def oci_index(
    children: list[bytes], archs: tuple[str, ...] = ("amd64", "arm64"), **extra: Any
) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_IMAGE_INDEX,
        "manifests": [
            descriptor(mediatypes.OCI_IMAGE_MANIFEST, child, platform=_platform(arch))
            for child, arch in zip(children, archs, strict=False)
        ],
        **extra,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def docker_list(children: list[bytes], archs: tuple[str, ...] = ("amd64", "arm64")) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST_LIST,
        "manifests": [
            descriptor(mediatypes.DOCKER_MANIFEST_V2, child, platform=_platform(arch))
            for child, arch in zip(children, archs, strict=False)
        ],
    }
    return json.dumps(document, indent=3).encode()


def artifact(
    subject: bytes,
    artifact_type: str | None = "application/vnd.dev.cosign.artifact.sig.v1+json",
    blob: bytes = SIGNATURE,
    subject_media_type: str = mediatypes.OCI_IMAGE_MANIFEST,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """An OCI 1.1 artifact: empty config, one blob, a subject."""
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_IMAGE_MANIFEST,
        "config": descriptor(mediatypes.OCI_EMPTY, mediatypes.OCI_EMPTY_CONTENT),
        "layers": [descriptor("application/vnd.dev.cosign.simplesigning.v1+json", blob)],
        "subject": descriptor(subject_media_type, subject),
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if annotations is not None:
        document["annotations"] = annotations
    return json.dumps(document, separators=(",", ":")).encode()


def config_typed_artifact(subject: bytes) -> bytes:
    """The image-spec 1.0 way (oras 0.x): the artifact type is the config's media type."""
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_IMAGE_MANIFEST,
        "config": descriptor("application/vnd.example.sbom.config.v1+json", b"{}"),
        "layers": [descriptor("application/spdx+json", SBOM)],
        "subject": descriptor(mediatypes.OCI_IMAGE_MANIFEST, subject),
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }
    return json.dumps(document, indent=2).encode()


def schema1(signed: bool = True) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 1,
        "name": "library/app",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256(LAYER_1)}],
        "history": [{"v1Compatibility": "{}"}],
    }
    if signed:
        document["signatures"] = [{"header": {"alg": "ES256"}, "signature": "x", "protected": "y"}]
    return json.dumps(document, indent=3).encode()
