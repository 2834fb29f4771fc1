"""
The one walk of an image that every copier makes: `registry.client.copy` (registries and OCI
layouts) and `registry.sync.copier` (this registry and a remote one).  Bottom up, the way a
client pushes: child manifests before their index, blobs before their manifest, the manifest,
then (when asked) its referrers, so a destination that checks references never sees a
dangling one.  Manifests travel as the exact bytes read, so every digest stays the same.

Where the content comes from and where it goes is the caller's (`ImageSides`); this module
only decides what a manifest names and in which order it is copied.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.api.mediatypes import INDEX_TYPES
from registry.client._client import index_descriptors

# Children of an index, or blobs of a manifest, that cannot be right in one image.
MAX_REFERENCES = 10_000


class CopyError(Exception):
    """A manifest that cannot be copied as it is (not JSON, a descriptor in it that is not
    valid, too many references, another digest than the one asked for)."""


@attrs.frozen
class FetchedManifest:
    """A manifest as read from the source: its exact bytes, media type and digest."""

    body: bytes
    media_type: str
    digest: Digest


class ImageSides(Protocol):
    """The source and the destination of one walk (one source and one target repository)."""

    async def manifest(self, reference: str) -> FetchedManifest:
        """The source's manifest for a tag or digest."""

    async def has_manifest(self, digest: Digest) -> bool:
        """Whether the destination has this manifest, so that its tree is not walked."""

    async def blob(self, descriptor: dict[str, Any]) -> None:
        """Copy one blob (``digest``; ``size`` when the manifest declares it) unless the
        destination has it."""

    async def put(self, manifest: FetchedManifest, tag: str | None, what: str) -> None:
        """Write the manifest (under ``tag``, else by digest); ``what`` is ``manifest``,
        ``index`` or ``referrer``."""

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        """The source's referrer descriptors of ``subject``."""


def blob_descriptors(document: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The blobs an image manifest names, once each: config and layers (OCI, Docker schema 2),
    or the ``fsLayers`` of a schema 1 manifest (without ``size``: schema 1 names none, and a
    made-up one would be enforced as the blob's size).  Foreign layers (with ``urls``) are
    fetched by clients from those URLs, never from a registry, so they are not copied.
    Entries that are not descriptors are left out (`manifest_problem` names them).
    """
    found: dict[str, dict[str, Any]] = {}
    config = document.get("config")
    layers = document.get("layers")
    entries = [config] + (layers if isinstance(layers, list) else [])
    for entry in entries:
        if not isinstance(entry, dict) or descriptor_problem(entry) is not None:
            continue
        if entry.get("urls"):
            continue
        found.setdefault(entry["digest"], entry)
    schema1 = document.get("fsLayers")
    for layer in schema1 if isinstance(schema1, list) else []:
        if isinstance(layer, dict) and _digest_problem(layer.get("blobSum")) is None:
            found.setdefault(layer["blobSum"], {"digest": layer["blobSum"]})
    return list(found.values())


def _shown(value: object) -> str:
    """A value from a manifest as a message shows it: JSON, ASCII only (no terminal control
    characters from a hostile source), cut short."""
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _digest_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"{_shown(value)} is not a string"
    try:
        Digest.parse(value)
    except RegistryError as exc:
        return f"{_shown(value)} is not a digest ({exc.message})"
    return None


def descriptor_problem(entry: object, where: str = "the descriptor") -> str | None:
    """What makes ``entry`` (named ``where`` in the answer) not an OCI descriptor (a
    ``mediaType`` string, a ``digest`` that parses, a ``size`` that is a non-negative
    integer); None when it is one."""
    if not isinstance(entry, dict):
        return f"{where} is not a descriptor but {_shown(entry)}"
    for key in ("mediaType", "digest", "size"):
        if key not in entry:
            return f"{where} has no {key}"
    if not isinstance(entry["mediaType"], str):
        return f"{where}.mediaType {_shown(entry['mediaType'])} is not a string"
    problem = _digest_problem(entry["digest"])
    if problem is not None:
        return f"{where}.digest {problem}"
    size = entry["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"{where}.size {_shown(size)} is not a non-negative integer"
    return None


def _list_or_none(value: object) -> object:
    """``value``, with None (absent, or ``null``) read as an empty list."""
    return [] if value is None else value


def _descriptors_problem(document: dict[str, Any], key: str) -> str | None:
    """What is wrong with the list of descriptors at ``key`` (None: nothing)."""
    listed = _list_or_none(document.get(key))
    if not isinstance(listed, list):
        return f"{key} is not a list but {_shown(listed)}"
    for number, entry in enumerate(listed):
        problem = descriptor_problem(entry, f"{key}[{number}]")
        if problem is not None:
            return problem
    return None


def manifest_problem(document: dict[str, Any], is_index: bool) -> str | None:
    """What makes a manifest or index refused by a copy (None: nothing): a ``config``,
    ``layers`` entry or ``manifests`` entry that is not a descriptor, a ``layers`` or
    ``manifests`` that is not a list (``null`` is read as an empty one, as Go writes an empty
    list), a schema 1 ``blobSum`` that is not a digest.  Copied without what it names, the
    copy would be missing what its manifest says it holds."""
    if is_index:
        return _descriptors_problem(document, "manifests")
    if "config" in document:
        problem = descriptor_problem(document["config"], "config")
        if problem is not None:
            return problem
    problem = _descriptors_problem(document, "layers")
    if problem is not None:
        return problem
    schema1 = _list_or_none(document.get("fsLayers"))
    if not isinstance(schema1, list):
        return f"fsLayers is not a list but {_shown(schema1)}"
    for number, layer in enumerate(schema1):
        blob_sum = layer.get("blobSum") if isinstance(layer, dict) else None
        problem = _digest_problem(blob_sum)
        if problem is not None:
            return f"fsLayers[{number}].blobSum {problem}"
    return None


def _document(manifest: FetchedManifest) -> dict[str, Any]:
    try:
        document = json.loads(manifest.body)
    except ValueError:
        raise CopyError(f"manifest {manifest.digest} is not JSON") from None
    if not isinstance(document, dict):
        raise CopyError(f"manifest {manifest.digest} is not a JSON object")
    return document


class ImageWalk:
    """
    One walk over ``sides``.  ``referrers``: after each manifest, copy its referrers (and
    theirs) too; `copy_referrers` can also be called alone.  ``referrer_depth`` bounds how
    deep referrers of referrers are followed (None: until there are none).  ``children_at_once``:
    the platforms of an index are copied at once rather than one after the other.
    """

    def __init__(
        self,
        sides: ImageSides,
        *,
        referrers: bool = False,
        referrer_depth: int | None = None,
        children_at_once: bool = True,
    ) -> None:
        self.sides = sides
        self._referrers = referrers
        self._referrer_depth = referrer_depth
        self._children_at_once = children_at_once
        self._done: set[tuple[Digest, str | None]] = set()

    async def copy(
        self,
        manifest: FetchedManifest,
        tag: str | None = None,
        what: str = "manifest",
        depth: int = 0,
    ) -> None:
        """Copy ``manifest`` and everything it names, then put it (under ``tag``)."""
        key = (manifest.digest, tag)
        if key in self._done:
            return
        self._done.add(key)
        document = _document(manifest)
        is_index = manifest.media_type in INDEX_TYPES or "manifests" in document
        problem = manifest_problem(document, is_index)
        if problem is not None:
            kind = "index" if is_index else "manifest"
            raise CopyError(f"{kind} {manifest.digest} is not valid: {problem}")
        children = index_descriptors(document) if is_index else []
        blobs = blob_descriptors(document)
        if len(children) + len(blobs) > MAX_REFERENCES:
            raise CopyError(f"manifest {manifest.digest} names too many references")
        if is_index and what == "manifest":
            what = "index"
        digests = [Digest.parse(child["digest"]) for child in children]
        if self._children_at_once:
            await gather([self.copy_digest(digest, "manifest", depth) for digest in digests])
        else:
            for digest in digests:
                await self.copy_digest(digest, "manifest", depth)
        await gather([self.sides.blob(descriptor) for descriptor in blobs])
        await self.sides.put(manifest, tag, what)
        if self._referrers:
            await self.copy_referrers(manifest.digest, depth)

    async def copy_digest(self, digest: Digest, what: str = "manifest", depth: int = 0) -> bool:
        """Copy a manifest by digest unless the destination has it; True when it was copied."""
        if await self.sides.has_manifest(digest):
            return False
        manifest = await self.sides.manifest(str(digest))
        if manifest.digest != digest:
            raise CopyError(f"asked for {digest}, the source answered {manifest.digest}")
        await self.copy(manifest, None, what, depth)
        return True

    async def copy_referrers(self, subject: Digest, depth: int = 0) -> None:
        """Bring the subject's referrers (signatures, SBOMs, attestations) along, and theirs."""
        if self._referrer_depth is not None and depth >= self._referrer_depth:
            return
        for descriptor in await self.sides.referrers(subject):
            try:
                digest = Digest.parse(str(descriptor.get("digest")))
            except RegistryError:
                continue  # not a digest: nothing that could be fetched
            copied = await self.copy_digest(digest, "referrer", depth + 1)
            if not (copied and self._referrers):  # copy() followed them already
                await self.copy_referrers(digest, depth + 1)


async def gather(calls: list[Coroutine[Any, Any, Any]]) -> None:
    """Run the coroutines at once; once every one has finished (nothing is left running behind
    the caller's back), raise the first failure as itself (not wrapped in FirstError)."""
    if not calls:
        return
    results = await DeferredList([Deferred.fromCoroutine(c) for c in calls], consumeErrors=True)
    for ok, value in results:
        if not ok:
            assert isinstance(value, Failure)
            value.raiseException()


__all__ = [
    "MAX_REFERENCES",
    "CopyError",
    "FetchedManifest",
    "ImageSides",
    "ImageWalk",
    "blob_descriptors",
    "descriptor_problem",
    "gather",
    "manifest_problem",
]
