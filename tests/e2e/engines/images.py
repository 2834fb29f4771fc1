"""
Images the engines can load and run: real tar layers and image configs whose ``diff_ids`` match.

There is no network here, so no engine can pull a base image: each test writes a docker-archive
tarball (what ``docker save`` writes; ``docker load``, ``podman load`` and ``ctr images import``
all read it), and the fake Docker Hub is given gzipped layers with a matching config, because an
engine unpacks what it pulls and refuses random bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import platform
import tarfile
from pathlib import Path

import attrs

from tests.e2e.ocilayout import make_layer
from tests.fakes.content import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, BytesBlob, Content

Files = dict[str, bytes]

# The engines pull and unpack the host's platform by default.
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
OTHER_ARCH = "arm64" if HOST_ARCH != "arm64" else "amd64"


def image_config(arch: str, diff_ids: list[str], label: str) -> bytes:
    """A minimal runnable image configuration (the bytes whose digest is the image ID)."""
    return json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/hello"], "Labels": {"test": label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))],
        },
        sort_keys=True,
    ).encode()


@attrs.frozen
class ArchiveImage:
    """A docker-archive on disk: ``reference`` is the name it loads as."""

    path: Path
    reference: str
    arch: str
    config: bytes
    diff_ids: tuple[str, ...]

    @property
    def config_digest(self) -> str:
        """The image ID every engine reports for it (the config's digest)."""
        return BytesBlob(self.config).digest


def docker_archive(path: Path, reference: str, arch: str, layers: list[Files]) -> ArchiveImage:
    """Write a ``docker save`` tarball of one image with uncompressed ``layers``."""
    members: dict[str, bytes] = {}
    diff_ids = []
    layer_paths = []
    for files in layers:
        compressed, diff_id = make_layer(files)
        layer_path = f"{diff_id[7:]}/layer.tar"
        members[layer_path] = gzip.decompress(compressed)
        layer_paths.append(layer_path)
        diff_ids.append(diff_id)
    config = image_config(arch, diff_ids, reference)
    config_name = f"{BytesBlob(config).digest[7:]}.json"
    members[config_name] = config
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": [reference], "Layers": layer_paths}]
    ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return ArchiveImage(path, reference, arch, config, tuple(diff_ids))


@attrs.frozen
class UpstreamImage:
    """An image the fake Docker Hub serves: its manifest, config and layer digests."""

    name: str
    tag: str
    digest: str
    config_digest: str
    layers: tuple[str, ...]


def add_runnable_image(content: Content, name: str, tag: str, layers: list[Files]) -> UpstreamImage:
    """Put a Docker schema2 image with gzipped tar layers into the fake upstream's content."""
    descriptors = []
    diff_ids = []
    for files in layers:
        compressed, diff_id = make_layer(files)
        blob = BytesBlob(compressed)
        content.add_blob(name, blob)
        descriptors.append({"mediaType": DOCKER_LAYER, "digest": blob.digest, "size": blob.size})
        diff_ids.append(diff_id)
    config = BytesBlob(image_config(HOST_ARCH, diff_ids, f"{name}:{tag}"))
    content.add_blob(name, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config.digest, "size": config.size},
            "layers": descriptors,
        },
        indent=3,
    ).encode()
    digest = content.add_manifest(name, DOCKER_MANIFEST, manifest, tag)
    return UpstreamImage(
        name, tag, digest, config.digest, tuple(str(d["digest"]) for d in descriptors)
    )
