"""
Test content for the UI, pushed over the registry API with blocking urllib (the browser tests
drive a registry in a child process, so there is no reactor to await in).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from typing import Any

import attrs

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"
# cosign's own (long enough to need wrapping on a phone).
SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@attrs.define
class Client:
    url: str
    authorization: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        all_headers = dict(headers or {})
        if self.authorization:
            all_headers["Authorization"] = self.authorization
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers=all_headers
        )
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read()

    def push_blob(self, name: str, data: bytes) -> str:
        digest = sha256(data)
        status, _, body = self.request(
            "POST",
            f"/v2/{name}/blobs/uploads/?digest={digest}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 201, body
        return digest

    def push_manifest(self, name: str, reference: str, document: dict[str, Any]) -> str:
        body = json.dumps(document).encode()
        status, _, answer = self.request(
            "PUT",
            f"/v2/{name}/manifests/{reference}",
            body,
            {"Content-Type": document["mediaType"]},
        )
        assert status == 201, answer
        return sha256(body)


def layer(seed: str) -> bytes:
    """A small gzipped tar holding one file."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = f"content of {seed}\n".encode()
        info = tarfile.TarInfo(f"{seed}.txt")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


@attrs.frozen
class Image:
    digest: str
    config: str
    layers: tuple[str, ...]
    size: int


def push_image(client: Client, name: str, tag: str | None, arch: str = "amd64") -> Image:
    layers = [layer(f"{name}-{tag}-{arch}-base"), layer(f"{name}-{tag}-{arch}-app")]
    config = {
        "created": "2026-01-02T03:04:05Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/server"],
            "Cmd": ["--port", "8080"],
            "Env": ["PATH=/usr/bin", "MODE=test"],
            "Labels": {"org.opencontainers.image.title": "demo"},
            "ExposedPorts": {"8080/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(gzip.decompress(b)) for b in layers]},
        "history": [
            {"created_by": "ADD base.tar /"},
            {"created_by": "ENV MODE=test", "empty_layer": True},
            {"created_by": "RUN make install"},
        ],
    }
    config_bytes = json.dumps(config).encode()
    config_digest = client.push_blob(name, config_bytes)
    layer_digests = [client.push_blob(name, b) for b in layers]
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": d, "size": len(b)}
            for d, b in zip(layer_digests, layers, strict=True)
        ],
    }
    digest = client.push_manifest(name, tag or sha256(json.dumps(document).encode()), document)
    size = len(config_bytes) + sum(len(b) for b in layers)
    return Image(digest, config_digest, tuple(layer_digests), size)


def push_index(client: Client, name: str, tag: str) -> tuple[str, list[Image]]:
    images = [push_image(client, name, None, arch) for arch in ("amd64", "arm64")]
    manifests = []
    for image, arch in zip(images, ("amd64", "arm64"), strict=True):
        status, _, body = client.request(
            "GET", f"/v2/{name}/manifests/{image.digest}", None, {"Accept": OCI_MANIFEST}
        )
        assert status == 200
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.digest,
                "size": len(body),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return client.push_manifest(name, tag, document), images


def push_referrer(
    client: Client,
    name: str,
    subject: str,
    artifact_type: str,
    seed: str,
    annotations: dict[str, str] | None = None,
) -> str:
    empty = client.push_blob(name, b"{}")
    data = client.push_blob(name, seed.encode())
    status, _, body = client.request(
        "GET", f"/v2/{name}/manifests/{subject}", None, {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
    )
    assert status == 200
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": data, "size": len(seed)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(body)},
    }
    if annotations:
        document["annotations"] = annotations
    body = json.dumps(document).encode()
    return client.push_manifest(name, sha256(body), document)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
