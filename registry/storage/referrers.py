"""
The referrers index: which manifests name a given manifest as their ``subject``.

Scanning every manifest of a repository on each referrers request is what makes the API slow
elsewhere, so the index is kept up to date as manifests are pushed and deleted: under
``txregistry/referrers/<name>/<alg>/<hex>/`` (registry:2 ignores that folder) one small JSON
file per referrer holds the descriptor the referrers API returns.  Files are named
``<alg>-<hex>`` so a folder listing is already in digest order, which is the order pages
follow.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

import attrs
from zope.interface import Attribute, Interface, implementer

from registry.api import mediatypes
from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.manifests.model import ParsedManifest
from registry.storage import layout
from registry.storage.blobs import damaged
from registry.storage.driver import IStorageDriver, NotAFileError, PathNotFoundError
from registry.storage.listing import digest_folders, list_or_empty
from registry.storage.pagination import parse_count
from registry.storage.repositories import revision_linked


def referrer_descriptor(manifest: ParsedManifest, digest: Digest, size: int) -> dict[str, Any]:
    """The descriptor of a referrer as the referrers API lists it (an OCI index entry)."""
    descriptor: dict[str, Any] = {
        "mediaType": manifest.media_type,
        "digest": str(digest),
        "size": size,
    }
    artifact_type = manifest.referrer_artifact_type
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if manifest.annotations:
        descriptor["annotations"] = dict(manifest.annotations)
    return descriptor


# A referrers page's body at most, the OCI index around its descriptors included: the size
# clients read a manifest with (oras reads at most 4 MiB; this registry's manifests are at most
# 4 MiB too).  Referrers beyond it go to the next page, behind a Link, whatever ``n`` asked for
# (the spec's "cannot be returned in a single manifest"), so that a page's memory is bounded
# however many or large the referrers a client pushed.
PAGE_BYTES = 4 * 1024 * 1024 - 4096


def encoded_size(descriptor: dict[str, Any]) -> int:
    """Bytes ``descriptor`` takes in a page's body (compact JSON, and its comma)."""
    return len(json.dumps(descriptor, separators=(",", ":"))) + 1


def within_bytes(
    descriptors: list[dict[str, Any]], max_bytes: int = PAGE_BYTES
) -> tuple[list[dict[str, Any]], bool]:
    """The first ``descriptors`` that fit in ``max_bytes`` (one at least), and whether some
    were left out."""
    used = 0
    for index, descriptor in enumerate(descriptors):
        used += encoded_size(descriptor)
        if used > max_bytes and index > 0:
            return descriptors[:index], True
    return descriptors, False


def referrers_response(descriptors: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of ``GET /v2/<name>/referrers/<digest>``: an OCI image index."""
    return {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_IMAGE_INDEX,
        "manifests": descriptors,
    }


def _entry_name(digest: Digest | str) -> str:
    return str(digest).replace(":", "-", 1)


def _entry_digest(entry: str) -> Digest | None:
    """The referrer an entry's file name stands for; None for a stray file."""
    try:
        return Digest.parse(entry.replace("-", ":", 1))
    except RegistryError:
        return None


class IReferrers(Interface):
    """The referrers API as handlers need it."""

    max_page = Attribute("The largest ``n`` honoured (None: no bound); more gets a Link.")

    def list_referrers(
        name: str, subject: Digest, artifact_type: str | None = None
    ) -> Awaitable[list[dict[str, Any]]]:
        """Every referrer of ``subject`` (descriptors, digest order), optionally filtered."""

    def page(
        name: str,
        subject: Digest,
        artifact_type: str | None = None,
        n: int | str | None = None,
        last: str | None = None,
    ) -> Awaitable[tuple[list[dict[str, Any]], bool]]:
        """At most ``n`` referrers with digests after ``last``, within `PAGE_BYTES` of a
        page's body, and whether more follow."""


# Referrer entries whose artifactType `ReferrersIndex` remembers.
TYPES_KNOWN = 20_000


@implementer(IReferrers)
@attrs.define
class ReferrersIndex:
    driver: IStorageDriver
    max_page: int | None = None
    # The artifactType of entries read lately ("" for none): a referrer's descriptor never
    # changes, and a filtered page would otherwise read and parse every entry after ``last``
    # again, however few match (5,000 referrers held the reactor ~50 ms a page).  Bounded:
    # entries are what clients push.
    _types: OrderedDict[str, str] = attrs.field(factory=OrderedDict, init=False, repr=False)

    async def add(self, name: str, subject: Digest, descriptor: dict[str, Any]) -> None:
        referrer = Digest.parse(descriptor["digest"])
        data = json.dumps(descriptor, sort_keys=True, separators=(",", ":")).encode()
        await self.driver.put_content(layout.referrer_entry(name, subject, referrer), data)

    async def remove(self, name: str, subject: Digest, referrer: Digest) -> bool:
        try:
            await self.driver.delete(layout.referrer_entry(name, subject, referrer))
        except PathNotFoundError:
            return False
        return True

    async def edges(self, name: str) -> dict[str, set[str]]:
        """
        Subject -> referrers, for every subject of repository ``name`` (garbage collection
        walks them); stray files are skipped.
        """
        edges: dict[str, set[str]] = {}
        for subject in await digest_folders(self.driver, layout.referrers_root(name)):
            for entry in await list_or_empty(self.driver, layout.referrers_dir(name, subject)):
                referrer = _entry_digest(entry)
                if referrer is not None:
                    edges.setdefault(str(subject), set()).add(str(referrer))
        return edges

    async def _entries(self, name: str, subject: Digest) -> list[str]:
        try:
            return sorted(await self.driver.list(layout.referrers_dir(name, subject)))
        except PathNotFoundError:
            return []

    async def _read(self, name: str, subject: Digest, entry: str) -> dict[str, Any] | None:
        path = f"{layout.referrers_dir(name, subject)}/{entry}"
        try:
            descriptor = json.loads(await self.driver.get_content(path))
        except (PathNotFoundError, ValueError):
            # Deleted meanwhile, or a torn file from a crash: not a referrer to report.
            return None
        except NotAFileError as exc:
            damaged(exc)
            return None
        return descriptor if isinstance(descriptor, dict) else None

    async def _still_stored(self, name: str, descriptor: dict[str, Any]) -> bool:
        """
        Whether the repository still has the referrer (its revision link): an entry can
        outlive its manifest when a push of the manifest and its delete run at once in two
        requests (the push adds the entry back after the delete removed it, and the delete
        then removes the revision).  Never listed then, rather than removed by the delete a
        second time, which could take the entry of a push that came after it.
        """
        text = descriptor.get("digest")
        if not isinstance(text, str):
            return False
        try:
            digest = Digest.parse(text)
        except RegistryError:
            return False
        return await revision_linked(self.driver, name, digest)

    async def page(
        self,
        name: str,
        subject: Digest,
        artifact_type: str | None = None,
        n: int | str | None = None,
        last: str | None = None,
        max_bytes: int | None = PAGE_BYTES,
    ) -> tuple[list[dict[str, Any]], bool]:
        count = parse_count(n, self.max_page)
        if count == 0:
            return [], False
        entries = await self._entries(name, subject)
        after = _entry_name(last) if last else ""
        found: list[dict[str, Any]] = []
        used = 0
        folder = layout.referrers_dir(name, subject)
        for entry in entries:
            if entry <= after:
                continue
            key = f"{folder}/{entry}"
            if artifact_type is not None and self._types.get(key, artifact_type) != artifact_type:
                continue
            descriptor = await self._read(name, subject, entry)
            if descriptor is None:
                continue
            self._remember(key, descriptor)
            if artifact_type is not None and descriptor.get("artifactType") != artifact_type:
                continue
            if not await self._still_stored(name, descriptor):
                continue
            if count is not None and len(found) == count:
                return found, True
            used += encoded_size(descriptor)
            if max_bytes is not None and used > max_bytes and found:
                return found, True
            found.append(descriptor)
        return found, False

    def _remember(self, key: str, descriptor: dict[str, Any]) -> None:
        kind = descriptor.get("artifactType")
        self._types[key] = kind if isinstance(kind, str) else ""
        self._types.move_to_end(key)
        while len(self._types) > TYPES_KNOWN:
            self._types.popitem(last=False)

    async def list_referrers(
        self, name: str, subject: Digest, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        descriptors, _ = await self.page(name, subject, artifact_type, max_bytes=None)
        return descriptors
