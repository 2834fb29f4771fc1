"""
Build OCI image layouts on disk (what ``skopeo copy oci:DIR`` reads): real tar+gzip layers,
image configs whose ``diff_ids`` match, image manifests and a multi-platform index.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzipped tar of ``files``; returns it and the digest of the uncompressed tar."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), _digest(tar_bytes)


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.entries: list[dict[str, Any]] = []

    def add_blob(self, data: bytes) -> dict[str, Any]:
        digest = _digest(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def image(self, arch: str, layer_files: list[dict[str, bytes]]) -> tuple[bytes, dict[str, Any]]:
        layers, diff_ids = [], []
        for files in layer_files:
            blob, diff_id = make_layer(files)
            layers.append({"mediaType": OCI_LAYER, **self.add_blob(blob)})
            diff_ids.append(diff_id)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["/bin/true"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": "test"} for _ in diff_ids],
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **self.add_blob(config)},
                "layers": layers,
            }
        ).encode()
        descriptor = {"mediaType": OCI_MANIFEST, **self.add_blob(manifest)}
        return manifest, descriptor

    def tag(self, descriptor: dict[str, Any], tag: str) -> None:
        entry = dict(descriptor)
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.entries.append(entry)
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries})
        )

    def multi_arch(self, images: dict[str, dict[str, Any]]) -> tuple[bytes, dict[str, Any]]:
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {**descriptor, "platform": {"architecture": arch, "os": "linux"}}
                    for arch, descriptor in images.items()
                ],
            }
        ).encode()
        return index, {"mediaType": OCI_INDEX, **self.add_blob(index)}


def read_index_digest(root: Path, tag: str) -> str:
    index = json.loads((root / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(entry["digest"])
    raise KeyError(tag)
