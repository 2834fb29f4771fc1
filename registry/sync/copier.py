"""
Copying one image (a manifest, or an index with every platform) from one side to the other,
digests preserved.  The walk is the client library's (`registry.client.walk.ImageWalk`:
children, then blobs, then the manifest itself, so the receiving registry validates each
manifest against content it already has); this module is its two sides for a sync.

What is already on the receiving side is not sent again: a child manifest that is there is
skipped whole, a blob that is there is skipped (locally, a blob stored for another repository
is linked instead of fetched).  That makes a copy idempotent by digest: an interrupted run
leaves complete blobs and manifests behind, and the next run carries on from them.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import DeferredLock, DeferredSemaphore

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.api.mediatypes import INDEX_TYPES
from registry.client._client import index_descriptors
from registry.client.copy import index_referrer
from registry.client.walk import MAX_REFERENCES, CopyError, FetchedManifest, ImageWalk
from registry.sync.abandoned import UploadMarks
from registry.sync.sides import LocalSide, RemoteSide, Side
from registry.sync.status import RunCounts
from registry.sync.throttle import Throttle
from registry.sync.transfer import pull_blob, push_blob

# How deep referrers of referrers are followed (a signature of an SBOM of an image).
MAX_REFERRER_DEPTH = 3
# How deep indexes in an index are followed for their platforms' referrers.
MAX_INDEX_DEPTH = 2


class Copier:
    """Copies images for one run of one sync.  ``transfers`` bounds the blobs in flight
    (the sync's ``concurrency``); a blob wanted by two repositories at once is transferred
    once."""

    def __init__(
        self,
        source: Side,
        target: Side,
        throttle: Throttle,
        counts: RunCounts,
        transfers: DeferredSemaphore,
        referrers: bool,
        marks: UploadMarks | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.throttle = throttle
        self.counts = counts
        self.transfers = transfers
        self.referrers = referrers
        self.marks = marks
        self._locks: dict[Digest, DeferredLock] = {}

    def _walk(self, source_name: str, target_name: str) -> ImageWalk:
        # One platform at a time: each copies its blobs in parallel already.
        sides = _Sides(self, source_name, target_name)
        return ImageWalk(sides, referrer_depth=MAX_REFERRER_DEPTH, children_at_once=False)

    async def copy_tag(self, source_name: str, target_name: str, tag: str) -> FetchedManifest:
        """Copy the image the tag names and point the tag at it on the other side."""
        manifest = await self.source.manifest(source_name, tag)
        await self._walk(source_name, target_name).copy(manifest, tag)
        return manifest

    async def copy_referrers(self, source_name: str, target_name: str, subject: Digest) -> None:
        """Bring the subject's referrers (signatures, SBOMs, attestations) along, and
        theirs, up to `MAX_REFERRER_DEPTH`; for an index, those of each of its platforms too
        (``cosign sign --recursive`` signs every platform, an SBOM is per platform)."""
        walk = self._walk(source_name, target_name)
        for digest in [subject, *await self._platforms(source_name, target_name, subject)]:
            await walk.copy_referrers(digest)

    async def _platforms(self, source_name: str, target_name: str, subject: Digest) -> list[Digest]:
        """
        The manifests an index names (and those of an index in it, up to `MAX_INDEX_DEPTH`);
        none for an image.  Read from this registry's copy, the same bytes as the other
        side's (a tag that is up to date costs the remote no manifest GET): the target's when
        pulling, the source's when pushing.
        """
        local, name = (
            (self.source, source_name)
            if isinstance(self.source, LocalSide)
            else (self.target, target_name)
        )
        found: list[Digest] = []
        level = [subject]
        for _ in range(MAX_INDEX_DEPTH):
            following: list[Digest] = []
            for digest in level:
                try:
                    manifest = await local.manifest(name, digest)
                    document = json.loads(manifest.body)
                except (RegistryError, ValueError):
                    continue  # not there or not JSON: the copy reported it already
                if not isinstance(document, dict) or not (
                    manifest.media_type in INDEX_TYPES or "manifests" in document
                ):
                    continue
                for descriptor in index_descriptors(document):
                    child = Digest.parse(descriptor["digest"])
                    if child not in found and len(found) < MAX_REFERENCES:
                        found.append(child)
                        following.append(child)
            level = following
        return found

    async def copy_manifest(self, source_name: str, target_name: str, digest: Digest) -> bool:
        """Copy a manifest by digest unless the target has it; True when it was copied."""
        return await self._walk(source_name, target_name).copy_digest(digest)

    async def blob(
        self, source_name: str, target_name: str, digest: Digest, size: int | None = None
    ) -> None:
        """Copy one blob unless the target has it.  ``size``: what the manifest declares; a
        remote sending more (or less) fails the copy, with nothing stored."""
        # One transfer per digest at a time: whoever waited finds the blob there afterwards
        # (locally, linked into its repository), instead of fetching it a second time.
        lock = self._locks.get(digest)
        if lock is None:
            lock = self._locks[digest] = DeferredLock()
        await lock.acquire()
        try:
            await self._blob_once(source_name, target_name, digest, size)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(digest, None)

    async def _blob_once(
        self, source_name: str, target_name: str, digest: Digest, size: int | None
    ) -> None:
        if await self.target.has_blob(target_name, digest):
            self.counts.add("blobs_skipped")
            return
        await self.transfers.acquire()
        try:
            if isinstance(self.source, RemoteSide) and isinstance(self.target, LocalSide):
                size = await pull_blob(
                    self.source,
                    source_name,
                    self.target,
                    target_name,
                    digest,
                    self.throttle,
                    self.marks,
                    size,
                )
            elif isinstance(self.source, LocalSide) and isinstance(self.target, RemoteSide):
                size = await push_blob(
                    self.source, source_name, self.target, target_name, digest, self.throttle
                )
            else:  # pragma: no cover - a sync always has one side of each
                raise CopyError("a sync copies between this registry and a remote one")
        finally:
            self.transfers.release()
        self.counts.add("blobs")
        self.counts.add("bytes", size)


@attrs.frozen
class _Sides:
    """One source repository and one target repository of a sync, as `ImageWalk` sees them."""

    copier: Copier
    source_name: str
    target_name: str

    async def manifest(self, reference: str) -> FetchedManifest:
        return await self.copier.source.manifest(self.source_name, reference)

    async def has_manifest(self, digest: Digest) -> bool:
        return await self.copier.target.has_manifest(self.target_name, digest)

    async def blob(self, descriptor: dict[str, Any]) -> None:
        digest = Digest.parse(str(descriptor["digest"]))
        declared = descriptor.get("size")
        if type(declared) is not int or declared < 0:
            declared = None  # none declared (schema 1 names none)
        await self.copier.blob(self.source_name, self.target_name, digest, declared)

    async def put(self, manifest: FetchedManifest, tag: str | None, what: str) -> None:
        target = self.copier.target
        reference = tag or str(manifest.digest)
        await target.put_manifest(self.target_name, reference, manifest.body, manifest.media_type)
        if what == "referrer" and isinstance(target, RemoteSide):
            # A remote without the referrers API (registry:2) finds it through the fallback tag.
            await index_referrer(
                target.client,
                self.target_name,
                manifest.body,
                manifest.media_type,
                manifest.digest,
            )
        self.copier.counts.add("manifests")

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        return await self.copier.source.referrers(self.source_name, subject)


__all__ = ["MAX_REFERRER_DEPTH", "Copier", "CopyError"]
