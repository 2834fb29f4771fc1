"""
What the fake upstream serves: repositories, tags, manifests and blobs.

Layer bytes are generated, never stored: chunk ``i`` of a layer is a 1 MiB block drawn once from
the layer's seed with its first 8 bytes replaced by ``i``, so any byte range can be produced at
memcpy speed, a 1 GiB layer never sits in memory, and two processes given the same seed serve
the same bytes.  A layer's digest is computed once, by streaming it, when it is added.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence

import attrs

CHUNK = 1 << 20

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BytesBlob:
    """A blob held in memory (manifests, configs, small layers)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.digest = sha256_digest(data)

    def read(self, start: int, end: int) -> Iterator[bytes]:
        for pos in range(start, end, CHUNK):
            yield self.data[pos : min(end, pos + CHUNK)]


class GeneratedBlob:
    """A deterministic pseudo-random blob of any size, produced chunk by chunk."""

    def __init__(self, seed: str, size: int) -> None:
        self.seed = seed
        self.size = size
        self._block = random.Random(seed).randbytes(CHUNK)
        hasher = hashlib.sha256()
        for chunk in self.read(0, size):
            hasher.update(chunk)
        self.digest = "sha256:" + hasher.hexdigest()

    def _chunk(self, index: int) -> bytes:
        length = min(CHUNK, self.size - index * CHUNK)
        return (index.to_bytes(8, "big") + self._block[8:length])[:length]

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes ``[start, end)`` in pieces of at most one chunk."""
        pos = start
        while pos < end:
            index, offset = divmod(pos, CHUNK)
            piece = self._chunk(index)[offset : offset + (end - pos)]
            yield piece
            pos += len(piece)

    def bytes(self) -> bytes:
        """All of it (only for small blobs in tests)."""
        return b"".join(self.read(0, self.size))


Blob = BytesBlob | GeneratedBlob


@attrs.define
class Repository:
    tags: dict[str, str] = attrs.field(factory=dict)
    manifests: dict[str, tuple[str, bytes]] = attrs.field(factory=dict)
    blobs: set[str] = attrs.field(factory=set)


@attrs.frozen
class Layer:
    digest: str
    size: int


@attrs.frozen
class Image:
    """What `Content.add_image` built: enough for tests to ask for every piece."""

    name: str
    tag: str
    digest: str
    media_type: str
    manifest: bytes
    config: str | None = None
    layers: tuple[Layer, ...] = ()
    children: tuple[Image, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "config": self.config,
            "layers": [{"digest": layer.digest, "size": layer.size} for layer in self.layers],
            "children": [child.as_json() for child in self.children],
        }


@attrs.define
class Content:
    """Repositories by full upstream name (``library/alpine``) and blobs by digest."""

    repos: dict[str, Repository] = attrs.field(factory=dict)
    blobs: dict[str, Blob] = attrs.field(factory=dict)

    def add_blob(self, name: str, blob: Blob) -> str:
        self.blobs[blob.digest] = blob
        self.repos.setdefault(name, Repository()).blobs.add(blob.digest)
        return blob.digest

    def add_manifest(self, name: str, media_type: str, body: bytes, tag: str | None = None) -> str:
        repo = self.repos.setdefault(name, Repository())
        digest = sha256_digest(body)
        repo.manifests[digest] = (media_type, body)
        if tag is not None:
            repo.tags[tag] = digest
        return digest

    def add_image(
        self,
        name: str,
        tag: str,
        layer_sizes: Sequence[int] = (1024,),
        *,
        seed: str | None = None,
        platforms: Sequence[str] | None = None,
        oci: bool = False,
    ) -> Image:
        """One image (``platforms`` None) or a multi-arch list/index of one image per platform.

        Layers come from ``seed`` (default: name, tag and position), so re-adding an image with
        the same arguments yields the same digests.
        """
        seed = seed if seed is not None else f"{name}:{tag}"
        if platforms is None:
            return self._add_single(name, tag, layer_sizes, seed, "linux/amd64", oci, tag)
        children = tuple(
            self._add_single(name, tag, layer_sizes, f"{seed}/{p}", p, oci, None) for p in platforms
        )
        media_type = OCI_INDEX if oci else DOCKER_LIST
        entries = []
        for child, platform in zip(children, platforms, strict=True):
            os_name, arch = platform.split("/", 1)
            entries.append(
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": len(child.manifest),
                    "platform": {"architecture": arch, "os": os_name},
                }
            )
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}, indent=3
        ).encode()
        digest = self.add_manifest(name, media_type, body, tag)
        return Image(name, tag, digest, media_type, body, children=children)

    def _add_single(
        self,
        name: str,
        tag: str,
        layer_sizes: Sequence[int],
        seed: str,
        platform: str,
        oci: bool,
        tag_to_set: str | None,
    ) -> Image:
        layers = []
        for index, size in enumerate(layer_sizes):
            blob = GeneratedBlob(f"{seed}#{index}", size)
            self.add_blob(name, blob)
            layers.append(Layer(blob.digest, size))
        os_name, arch = platform.split("/", 1)
        config = BytesBlob(
            json.dumps(
                {
                    "architecture": arch,
                    "os": os_name,
                    "config": {"Labels": {"seed": seed}},
                    "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
                }
            ).encode()
        )
        self.add_blob(name, config)
        manifest_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": {
                    "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                    "digest": config.digest,
                    "size": config.size,
                },
                "layers": [
                    {
                        "mediaType": OCI_LAYER if oci else DOCKER_LAYER,
                        "digest": layer.digest,
                        "size": layer.size,
                    }
                    for layer in layers
                ],
            },
            indent=3,
        ).encode()
        digest = self.add_manifest(name, manifest_type, body, tag_to_set)
        return Image(name, tag, digest, manifest_type, body, config.digest, tuple(layers))

    def retag(self, name: str, tag: str, digest: str) -> None:
        """Point ``tag`` at another manifest (what a new upstream release looks like)."""
        repo = self.repos[name]
        if digest not in repo.manifests:
            raise KeyError(digest)
        repo.tags[tag] = digest

    def remove_tag(self, name: str, tag: str) -> None:
        self.repos[name].tags.pop(tag, None)

    def remove_manifest(self, name: str, digest: str) -> None:
        repo = self.repos[name]
        repo.manifests.pop(digest, None)
        for tag, target in list(repo.tags.items()):
            if target == digest:
                del repo.tags[tag]

    def remove_blob(self, digest: str) -> None:
        self.blobs.pop(digest, None)
        for repo in self.repos.values():
            repo.blobs.discard(digest)

    def remove_repo(self, name: str) -> None:
        self.repos.pop(name, None)
