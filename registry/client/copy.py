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
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.python.failure import Failure

from registry.api.digests import Digest
from registry.client._client import RegistryClient, _sniff_media_type
from registry.client.errors import Unauthorized
from registry.client.layout import OCILayout
from registry.client.walk import CopyError, FetchedManifest, ImageWalk


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
    """What happened to one item (``what``): ``kind`` is ``copied``, ``skipped`` (already
    there) or ``mounted`` (blobs only)."""

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
    """One copy from ``source`` to ``target``; `run` returns a `CopyResult`.  The walk over the
    image is `registry.client.walk.ImageWalk`'s; this class is its two sides."""

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
        self.referrers_too = referrers
        self._blobs = DeferredSemaphore(max(1, concurrency))
        self._on_event = on_event or (lambda event: None)
        self.result = CopyResult()
        self._done_blobs: set[str] = set()
        # The blobs being copied -> the walks waiting for the same one (an image names each
        # once per manifest: bounded by it).
        self._copying: dict[str, list[Deferred[None]]] = {}
        self._top: Digest | None = None

    async def run(self) -> CopyResult:
        manifest = await self.manifest(self.source.reference)
        tag = self.target.reference
        if tag is None and self.source.reference and not Digest.is_digest(self.source.reference):
            tag = self.source.reference
        if tag is not None and Digest.is_digest(tag):
            tag = None
        self._top = manifest.digest
        await ImageWalk(self, referrers=self.referrers_too).copy(manifest, tag)
        self.result.digest = manifest.digest
        return self.result

    # -- the sides of the walk (registry.client.walk.ImageSides)

    async def manifest(self, reference: str | None) -> FetchedManifest:
        source = self.source
        if isinstance(source, RegistryImage):
            manifest = await source.client.get_manifest(source.name, reference or "latest")
            assert manifest.body is not None
            return FetchedManifest(manifest.body, manifest.media_type, manifest.digest)
        descriptor = await source.layout.resolve(reference)
        digest = Digest.parse(str(descriptor["digest"]))
        body = await source.layout.read_blob(digest)
        media_type = str(descriptor.get("mediaType") or _sniff_media_type(body) or "")
        return FetchedManifest(body, media_type, digest)

    async def has_manifest(self, digest: Digest) -> bool:
        # Every manifest is walked: blobs already there are skipped (and reported) one by one.
        return False

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        source = self.source
        if isinstance(source, RegistryImage):
            return await source.client.referrers(source.name, subject, tag_schema=True) or []
        return await source.layout.referrers(subject)

    async def put(self, manifest: FetchedManifest, tag: str | None, what: str) -> None:
        body, media_type, digest = manifest.body, manifest.media_type, manifest.digest
        target = self.target
        if isinstance(target, RegistryImage):
            if tag is None:
                existing = await target.client.head_manifest(target.name, str(digest))
                if existing is not None and existing.digest == digest:
                    self._event("skipped", str(digest), len(body), what)
                    return
            await target.client.put_manifest(target.name, tag or str(digest), body, media_type)
            if what == "referrer":
                await index_referrer(target.client, target.name, body, media_type, digest)
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
            if digest == self._top or what == "referrer":
                # Children of an index are reached through it; only the image copied and
                # its referrers are listed in index.json.
                await target.layout.add(descriptor, tag)
        self.result.manifests += 1
        if what == "referrer":
            self.result.referrers += 1
        self._event("copied", str(digest), len(body), what)

    async def blob(self, descriptor: dict[str, Any]) -> None:
        digest = Digest.parse(str(descriptor["digest"]))
        declared = descriptor.get("size")
        if type(declared) is not int or declared < 0:
            declared = None  # none declared (schema 1 names none)
        if str(digest) in self._done_blobs:
            return
        # Platforms of an index often share a layer: the second manifest naming it waits for
        # the transfer the first started (its manifest would otherwise be sent before the
        # blob is there, and refused with MANIFEST_BLOB_UNKNOWN).
        key = str(digest)
        waiters = self._copying.get(key)
        if waiters is not None:
            waiter: Deferred[None] = Deferred()
            waiters.append(waiter)
            await waiter
            return
        self._copying[key] = waiters = []

        def settle(result: object) -> object:
            del self._copying[key]
            for waiter in waiters:
                if waiter.called:  # cancelled: its copy is being stopped
                    continue
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            return result

        # Awaited here, not behind a shared call: cancelling the copy cancels the transfer.
        transfer = self._blobs.run(lambda: Deferred.fromCoroutine(self._transfer(digest, declared)))
        transfer.addBoth(settle)
        await transfer
        self._done_blobs.add(key)

    # -- helpers

    @staticmethod
    async def _mounted(client: RegistryClient, name: str, digest: Digest, source: str) -> bool:
        """A cross-repository mount; False when the registry did not mount, including when it
        refused the mount itself (registry:2 with tokens answers 401 to a token without pull on
        the source, where txregistry opens a plain upload): the blob is then streamed."""
        try:
            return await client.mount_blob(name, digest, source)
        except Unauthorized:
            return False

    async def _transfer(self, digest: Digest, declared: int | None) -> None:
        """Copy one blob.  ``declared``, the size its descriptor names, bounds what a registry
        source may send: more fails the copy as soon as it comes, before anything is kept."""
        size = declared or 0
        source, target = self.source, self.target
        if isinstance(source, LayoutImage) and declared is not None:
            # A registry source's answer is held to the declared size as it comes; a layout's
            # file is looked at before anything is sent (else the copy publishes a manifest
            # that disagrees with its blob, which no client can pull whole).
            held = await source.layout.blob_size(digest)
            if held is not None and held != declared:
                raise CopyError(
                    f"blob {digest} of {source.layout.root}: its manifest declares {declared}"
                    f" bytes, the file holds {held}"
                )
        if isinstance(target, RegistryImage):
            if await target.client.blob_exists(target.name, digest) is not None:
                self.result.blobs_skipped += 1
                self._event("skipped", str(digest), size, "blob")
                return
            if (
                isinstance(source, RegistryImage)
                and source.client.url == target.client.url
                and await self._mounted(target.client, target.name, digest, source.name)
            ):
                self.result.blobs_mounted += 1
                self._event("mounted", str(digest), size, "blob")
                return
            if isinstance(source, RegistryImage):
                sent = await target.client.copy_blob_from(
                    source.client, source.name, target.name, digest, size=declared
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
                sent = await target.layout.download(
                    source.client, source.name, digest, size=declared
                )
            else:
                await target.layout.copy_from(source.layout, digest)
                sent = size
        self.result.blobs_copied += 1
        self.result.bytes_copied += sent
        self._event("copied", str(digest), sent, "blob")

    def _event(self, kind: str, digest: str, size: int, what: str) -> None:
        self._on_event(CopyEvent(kind, digest, size, what))


async def index_referrer(
    client: RegistryClient, name: str, body: bytes, media_type: str, digest: Digest
) -> None:
    """After pushing the referrer ``body`` to ``name``: a registry without the referrers API
    (registry:2) learns of it through the fallback tag ``sha256-<subject hex>``, kept up to
    date here as the distribution-spec asks clients to (nothing to do on a registry with the
    API, or for a manifest without ``subject``)."""
    data = json.loads(body)
    subject = (data.get("subject") or {}).get("digest") if isinstance(data, dict) else None
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
    await client.update_referrers_tag(name, subject, descriptor)


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
    "index_referrer",
]
