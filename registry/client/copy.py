"""
Copy an image (a manifest, an index with all its platforms, and optionally their referrers)
between registries and OCI layouts, digests preserved.

Manifests travel as the exact bytes read, so every digest is the same on both sides.  Blobs
already at the destination are skipped; between two repositories of one registry they are
mounted; otherwise they are streamed (registry to registry through memory, never the disk) in
constant memory, at most ``concurrency`` at a time.  Children go before their index, and a
referrer (signature, SBOM, attestation) after its subject, so a destination that checks
references never sees a dangling one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore

from registry.api.digests import Digest
from registry.client._client import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    RegistryClient,
    _sniff_media_type,
)
from registry.client.layout import OCILayout

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})


@attrs.frozen
class RegistryImage:
    """``docker://HOST/NAME[:TAG|@DIGEST]``: a repository of a registry."""

    client: RegistryClient
    name: str
    reference: str | None = None


@attrs.frozen
class LayoutImage:
    """``oci:DIR[:TAG]``: an OCI image layout directory."""

    layout: OCILayout
    reference: str | None = None


Endpoint = RegistryImage | LayoutImage


@attrs.frozen
class CopyEvent:
    """What happened to one item: ``kind`` is ``copied``, ``skipped`` (already there),
    ``mounted`` (blobs) or ``manifest``/``referrer`` (manifests written)."""

    kind: str
    digest: str
    size: int
    what: str  # "blob", "manifest", "index", "referrer"


@attrs.define
class CopyResult:
    digest: Digest | None = None
    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    referrers: int = 0


class Copier:
    """One copy from ``source`` to ``target``; `run` returns a `CopyResult`."""

    def __init__(
        self,
        source: Endpoint,
        target: Endpoint,
        *,
        referrers: bool = False,
        concurrency: int = 4,
        on_event: Callable[[CopyEvent], None] | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.referrers = referrers
        self._blobs = DeferredSemaphore(max(1, concurrency))
        self._on_event = on_event or (lambda event: None)
        self.result = CopyResult()
        self._done_blobs: set[str] = set()
        self._done_manifests: set[str] = set()

    async def run(self) -> CopyResult:
        body, media_type, digest = await self._source_manifest(self.source.reference)
        tag = self.target.reference
        if tag is None and self.source.reference and not Digest.is_digest(self.source.reference):
            tag = self.source.reference
        if tag is not None and Digest.is_digest(tag):
            tag = None
        await self._copy_tree(body, media_type, digest, tag, "manifest", top=True)
        self.result.digest = digest
        return self.result

    # -- the tree

    async def _copy_tree(
        self,
        body: bytes,
        media_type: str,
        digest: Digest,
        tag: str | None,
        what: str,
        top: bool = False,
    ) -> None:
        key = f"{digest}:{tag}"
        if key in self._done_manifests:
            return
        self._done_manifests.add(key)
        data = json.loads(body)
        if media_type in INDEX_TYPES:
            children = [d for d in data.get("manifests") or [] if isinstance(d, dict)]
            await _all([self._copy_child(child) for child in children])
            what = "index" if what == "manifest" else what
        else:
            await _all([self._copy_blob(d) for d in _blob_descriptors(data)])
        await self._put_manifest(body, media_type, digest, tag, what, top)
        if self.referrers:
            await self._copy_referrers(digest)

    async def _copy_child(self, descriptor: dict[str, Any]) -> None:
        digest = Digest.parse(str(descriptor["digest"]))
        body, media_type, _ = await self._source_manifest(str(digest))
        await self._copy_tree(body, media_type, digest, None, "manifest")

    async def _copy_referrers(self, subject: Digest) -> None:
        source = self.source
        if isinstance(source, RegistryImage):
            found = await source.client.referrers(source.name, subject, tag_schema=True) or []
        else:
            found = await source.layout.referrers(subject)
        for descriptor in found:
            digest = Digest.parse(str(descriptor["digest"]))
            body, media_type, _ = await self._source_manifest(str(digest))
            self.result.referrers += 1
            await self._copy_tree(body, media_type, digest, None, "referrer")

    async def _index_referrer(
        self, target: RegistryImage, body: bytes, media_type: str, digest: Digest
    ) -> None:
        """A registry without the referrers API learns of a referrer through the tag schema."""
        data = json.loads(body)
        subject = (data.get("subject") or {}).get("digest")
        if not isinstance(subject, str):
            return
        descriptor: dict[str, Any] = {
            "mediaType": media_type,
            "digest": str(digest),
            "size": len(body),
        }
        kind = data.get("artifactType") or (data.get("config") or {}).get("mediaType")
        if kind:
            descriptor["artifactType"] = kind
        if isinstance(data.get("annotations"), dict):
            descriptor["annotations"] = data["annotations"]
        await target.client.update_referrers_tag(target.name, subject, descriptor)

    @staticmethod
    def _defer(coro: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coro)

    # -- manifests

    async def _source_manifest(self, reference: str | None) -> tuple[bytes, str, Digest]:
        source = self.source
        if isinstance(source, RegistryImage):
            manifest = await source.client.get_manifest(source.name, reference or "latest")
            assert manifest.body is not None
            return manifest.body, manifest.media_type, manifest.digest
        descriptor = await source.layout.resolve(reference)
        digest = Digest.parse(str(descriptor["digest"]))
        body = await source.layout.read_blob(digest)
        media_type = str(descriptor.get("mediaType") or _sniff_media_type(body) or "")
        return body, media_type, digest

    async def _put_manifest(
        self,
        body: bytes,
        media_type: str,
        digest: Digest,
        tag: str | None,
        what: str,
        top: bool,
    ) -> None:
        target = self.target
        if isinstance(target, RegistryImage):
            if tag is None:
                existing = await target.client.head_manifest(target.name, str(digest))
                if existing is not None and existing.digest == digest:
                    self._event("skipped", str(digest), len(body), what)
                    return
            await target.client.put_manifest(target.name, tag or str(digest), body, media_type)
            if what == "referrer":
                await self._index_referrer(target, body, media_type, digest)
        else:
            await target.layout.write_bytes(body, digest)
            descriptor: dict[str, Any] = {
                "mediaType": media_type,
                "digest": str(digest),
                "size": len(body),
            }
            if what == "referrer":
                artifact = json.loads(body).get("artifactType")
                if artifact:
                    descriptor["artifactType"] = artifact
            if top or what == "referrer":
                # Children of an index are reached through it; only the image copied and
                # its referrers are listed in index.json.
                await target.layout.add(descriptor, tag)
        self.result.manifests += 1
        self._event("manifest", str(digest), len(body), what)

    # -- blobs

    async def _copy_blob(self, descriptor: dict[str, Any]) -> None:
        digest = Digest.parse(str(descriptor["digest"]))
        size = int(descriptor.get("size") or 0)
        if str(digest) in self._done_blobs:
            return
        self._done_blobs.add(str(digest))
        await self._blobs.run(lambda: self._defer(self._transfer(digest, size)))

    async def _transfer(self, digest: Digest, size: int) -> None:
        source, target = self.source, self.target
        if isinstance(target, RegistryImage):
            if await target.client.blob_exists(target.name, digest) is not None:
                self.result.blobs_skipped += 1
                self._event("skipped", str(digest), size, "blob")
                return
            if (
                isinstance(source, RegistryImage)
                and source.client.url == target.client.url
                and await target.client.mount_blob(target.name, digest, source.name)
            ):
                self.result.blobs_mounted += 1
                self._event("mounted", str(digest), size, "blob")
                return
            if isinstance(source, RegistryImage):
                sent = await target.client.copy_blob_from(
                    source.client, source.name, target.name, digest
                )
            else:
                path = source.layout.blob_path(digest)
                await target.client.upload_blob(target.name, path, digest)
                sent = size
        else:
            if await target.layout.blob_size(digest) is not None:
                self.result.blobs_skipped += 1
                self._event("skipped", str(digest), size, "blob")
                return
            if isinstance(source, RegistryImage):
                sent = await target.layout.download(source.client, source.name, digest)
            else:
                await target.layout.copy_from(source.layout, digest)
                sent = size
        self.result.blobs_copied += 1
        self.result.bytes_copied += sent
        self._event("copied", str(digest), sent, "blob")

    def _event(self, kind: str, digest: str, size: int, what: str) -> None:
        self._on_event(CopyEvent(kind, digest, size, what))


async def _all(coroutines: list[Any]) -> None:
    """Run concurrently; the first failure is raised as itself (not wrapped in FirstError),
    once every one has finished (nothing is left running behind the caller's back)."""
    results = await DeferredList(
        [Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True
    )
    for ok, value in results:
        if not ok:
            value.raiseException()


def _blob_descriptors(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The blobs an image manifest (OCI, Docker schema 2 or schema 1) needs."""
    found = []
    config = manifest.get("config")
    if isinstance(config, dict) and "digest" in config:
        found.append(config)
    for layer in manifest.get("layers") or []:
        if isinstance(layer, dict) and "digest" in layer:
            found.append(layer)
    for layer in manifest.get("fsLayers") or []:  # schema 1
        if isinstance(layer, dict) and "blobSum" in layer:
            found.append({"digest": layer["blobSum"], "size": 0})
    return found


async def copy_image(
    source: Endpoint,
    target: Endpoint,
    *,
    referrers: bool = False,
    concurrency: int = 4,
    on_event: Callable[[CopyEvent], None] | None = None,
) -> CopyResult:
    """Copy ``source`` to ``target`` (an index with all its platforms; ``referrers`` brings
    the referrers of every manifest copied along)."""
    copier = Copier(source, target, referrers=referrers, concurrency=concurrency, on_event=on_event)
    return await copier.run()


__all__ = [
    "Copier",
    "CopyEvent",
    "CopyResult",
    "Endpoint",
    "LayoutImage",
    "RegistryImage",
    "copy_image",
]
