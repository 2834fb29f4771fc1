"""
Copying one image (a manifest, or an index with every platform) from one side to the other,
digests preserved: the manifest bytes are put exactly as read, so every digest stays the
same.  Bottom up, the way a client pushes: blobs, then child manifests, then the manifest
itself, so the receiving registry validates each manifest against content it already has.

What is already on the receiving side is not sent again: a child manifest that is there is
skipped whole, a blob that is there is skipped (locally, a blob stored for another repository
is linked instead of fetched).  That makes a copy idempotent by digest: an interrupted run
leaves complete blobs and manifests behind, and the next run carries on from them.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, DeferredSemaphore
from twisted.python.failure import Failure

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.client import index_descriptors
from registry.sync.sides import FetchedManifest, LocalSide, RemoteSide, Side
from registry.sync.status import RunCounts
from registry.sync.throttle import Throttle
from registry.sync.transfer import pull_blob, push_blob

# How deep referrers of referrers are followed (a signature of an SBOM of an image).
MAX_REFERRER_DEPTH = 3
# Children of an index, or blobs of a manifest, that cannot be right in one image.
MAX_REFERENCES = 10_000


class CopyError(Exception):
    """A manifest that cannot be copied as it is (not JSON, too many references)."""


def _descriptors(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = document.get(key)
    return [d for d in value if isinstance(d, dict)] if isinstance(value, list) else []


def blob_digests(document: dict[str, Any]) -> list[Digest]:
    """The blobs an image manifest names: config and layers (schema 2 / OCI), or the
    ``fsLayers`` of a schema 1 manifest.  Foreign layers (with ``urls``) are fetched by
    clients from those URLs, never from a registry, so they are not copied."""
    found: list[Digest] = []
    config = document.get("config")
    entries = ([config] if isinstance(config, dict) else []) + _descriptors(document, "layers")
    for entry in entries:
        if entry.get("urls") or not isinstance(entry.get("digest"), str):
            continue
        found.append(Digest.parse(entry["digest"]))
    for layer in _descriptors(document, "fsLayers"):
        if isinstance(layer.get("blobSum"), str):
            found.append(Digest.parse(layer["blobSum"]))
    return list(dict.fromkeys(found))


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
    ) -> None:
        self.source = source
        self.target = target
        self.throttle = throttle
        self.counts = counts
        self.transfers = transfers
        self.referrers = referrers
        self._locks: dict[Digest, DeferredLock] = {}

    async def copy_tag(self, source_name: str, target_name: str, tag: str) -> FetchedManifest:
        """Copy the image the tag names and point the tag at it on the other side."""
        manifest = await self.source.manifest(source_name, tag)
        await self._content(source_name, target_name, manifest)
        await self.target.put_manifest(target_name, tag, manifest.body, manifest.media_type)
        self.counts.add("manifests")
        return manifest

    async def copy_referrers(
        self, source_name: str, target_name: str, subject: Digest, depth: int = 0
    ) -> None:
        """Bring the subject's referrers (signatures, SBOMs, attestations) along, and
        theirs, up to `MAX_REFERRER_DEPTH`."""
        if depth >= MAX_REFERRER_DEPTH:
            return
        for descriptor in await self.source.referrers(source_name, subject):
            try:
                digest = Digest.parse(str(descriptor.get("digest")))
            except RegistryError:
                continue  # not a digest: nothing that could be fetched
            await self.copy_manifest(source_name, target_name, digest)
            await self.copy_referrers(source_name, target_name, digest, depth + 1)

    async def copy_manifest(self, source_name: str, target_name: str, digest: Digest) -> bool:
        """Copy a manifest by digest unless the target has it; True when it was copied."""
        if await self.target.has_manifest(target_name, digest):
            return False
        manifest = await self.source.manifest(source_name, digest)
        if manifest.digest != digest:
            raise CopyError(f"asked for {digest}, the source answered {manifest.digest}")
        await self._content(source_name, target_name, manifest)
        await self.target.put_manifest(target_name, str(digest), manifest.body, manifest.media_type)
        self.counts.add("manifests")
        return True

    async def _content(self, source_name: str, target_name: str, manifest: FetchedManifest) -> None:
        """Everything the manifest names, before the manifest itself."""
        try:
            document = json.loads(manifest.body)
        except ValueError:
            raise CopyError(f"manifest {manifest.digest} is not JSON") from None
        if not isinstance(document, dict):
            raise CopyError(f"manifest {manifest.digest} is not a JSON object")
        children = index_descriptors(document) if "manifests" in document else []
        blobs = blob_digests(document)
        if len(children) + len(blobs) > MAX_REFERENCES:
            raise CopyError(f"manifest {manifest.digest} names too many references")
        for child in children:
            # One platform at a time: each copies its blobs in parallel already.
            await self.copy_manifest(source_name, target_name, Digest.parse(child["digest"]))
        await _all([self._blob(source_name, target_name, d) for d in blobs])

    async def _blob(self, source_name: str, target_name: str, digest: Digest) -> None:
        # One transfer per digest at a time: whoever waited finds the blob there afterwards
        # (locally, linked into its repository), instead of fetching it a second time.
        lock = self._locks.get(digest)
        if lock is None:
            lock = self._locks[digest] = DeferredLock()
        await lock.acquire()
        try:
            await self._blob_once(source_name, target_name, digest)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(digest, None)

    async def _blob_once(self, source_name: str, target_name: str, digest: Digest) -> None:
        if await self.target.has_blob(target_name, digest):
            self.counts.add("blobs_skipped")
            return
        await self.transfers.acquire()
        try:
            if isinstance(self.source, RemoteSide) and isinstance(self.target, LocalSide):
                size = await pull_blob(
                    self.source, source_name, self.target, target_name, digest, self.throttle
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


async def _all(calls: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines at once; wait for all, then raise the first failure."""
    if not calls:
        return
    deferreds = [Deferred.fromCoroutine(call) for call in calls]
    results = await DeferredList(deferreds, consumeErrors=True)
    for ok, value in results:
        if not ok:
            assert isinstance(value, Failure)
            value.raiseException()
