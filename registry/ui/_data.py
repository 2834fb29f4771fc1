"""
What the pages show, read through the registry's own stores (catalog index, tag links,
manifest and config blobs, referrers index): nothing is copied, and a page reads only the rows
it shows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool

from registry.api.digests import Digest
from registry.api.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_UNKNOWN, RegistryError
from registry.asyncutil import bounded_map
from registry.client._bounded import BoundedMap
from registry.handlers.context import RegistryContext
from registry.manifests import DEFAULT_URL_POLICY, ParsedManifest, parse_manifest
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import PathNotFoundError, StorageError
from registry.storage.manifests import StoredManifest
from registry.storage.repositories import revision_linked
from registry.storage.tags import TagStore
from registry.ui import _format

if TYPE_CHECKING:
    from registry.proxy.routing import ProxyRouter

# The largest config blob read to show an image's settings (real ones are a few KiB).
MAX_CONFIG_SIZE = 1024 * 1024
# The largest manifest a tag row is read from (an image of 127 layers or an index of a few
# dozen platforms is some tens of KiB).  Parsing JSON holds the reactor thread, and a
# manifest may be 4 MiB: a page of 50 tags at that size would stall every request for seconds.
# A larger one is listed with its size only.
MAX_DESCRIBED_SIZE = 256 * 1024
# How many tag rows' descriptions are remembered (a manifest's content never changes under
# its digest): a page viewed again reads nothing but its tag links.
DESCRIBED_ENTRIES = 4096


def router_of(ctx: RegistryContext) -> ProxyRouter | None:
    """The pull-through caches' router, when upstreams are configured."""
    # A registry without [proxy:NAME] never loads the cache (nor its HTTP client and TLS):
    # no router can exist unless its module was loaded.
    if "registry.proxy.routing" not in sys.modules:
        return None
    from registry.proxy.routing import ProxyRouter

    rewriter = ctx.route_rewriter
    return rewriter if isinstance(rewriter, ProxyRouter) else None


def source_of(ctx: RegistryContext, name: str) -> str | None:
    """The upstream a repository is cached from, or None for a hosted repository."""
    router = router_of(ctx)
    if router is None:
        return None
    routed = router.route(name)
    return None if routed is None else str(routed.cache.name)


def local_name(ctx: RegistryContext, name: str) -> str:
    router = router_of(ctx)
    return name if router is None else str(router.local_name(name))


async def stored_manifest(
    ctx: RegistryContext, name: str, reference: str | Digest
) -> StoredManifest:
    """The manifest as this registry stores it.  A cached repository's
    pages show what the cache holds and never ask its upstream: a page view is no pull (it
    would count in the cache's figures, and send upstream requests at the rate pages are
    viewed)."""
    if source_of(ctx, name) is not None:
        from registry.proxy.routing import RoutingManifestStore

        manifests = ctx.manifests
        if isinstance(manifests, RoutingManifestStore):
            try:
                return await manifests.local.get(local_name(ctx, name), reference)
            except RegistryError as exc:
                if exc.code not in (MANIFEST_UNKNOWN, NAME_UNKNOWN):
                    raise
                # An index's platform nobody pulled, say: linked from its index's page.
                why = "not in the cache yet: it is shown here once a client pulls it"
                detail = {"name": name, "reference": str(reference), "reason": why}
                raise RegistryError(MANIFEST_UNKNOWN, detail) from None
    return await ctx.manifests.get(name, reference)


# Children of one index looked up at once (a stat each; an S3 HEAD each).
CHILD_LOOKUPS = 8


async def stored_children(
    ctx: RegistryContext, name: str, digests: Sequence[Digest]
) -> frozenset[Digest]:
    """Which of an index's children ``name`` holds: a platform deleted since (or, in a cache,
    one nobody pulled yet) is shown as such rather than as a link to a 404.  A child that
    cannot be looked up (the storage failing) counts as held: the link says the rest."""
    local = local_name(ctx, name)

    async def held(digest: Digest) -> bool:
        try:
            return await revision_linked(ctx.driver, local, digest)
        except StorageError:
            return True

    found = await bounded_map(held, digests, CHILD_LOOKUPS)
    return frozenset(d for d, ok in zip(digests, found, strict=True) if ok)


async def stored_blob_size(ctx: RegistryContext, name: str, digest: Digest) -> int:
    """The size of a blob this registry stores under ``name`` (see `stored_manifest`: a cached
    repository's are those the cache holds; the page never asks the upstream)."""
    if source_of(ctx, name) is not None:
        from registry.proxy.routing import RoutingBlobStore

        blobs = ctx.blobs
        if isinstance(blobs, RoutingBlobStore):
            try:
                return (await blobs.local.stat(local_name(ctx, name), digest)).size
            except RegistryError as exc:
                if exc.code not in (BLOB_UNKNOWN, NAME_UNKNOWN):
                    raise
                why = "not in the cache yet: it is shown here once a client pulls it"
                detail = {"name": name, "digest": str(digest), "reason": why}
                raise RegistryError(BLOB_UNKNOWN, detail) from None
    return (await ctx.blobs.stat(name, digest)).size


async def stored_referrers(
    ctx: RegistryContext, name: str, subject: Digest
) -> tuple[list[dict[str, Any]], bool]:
    """One page of the referrers stored here for ``subject`` (see `stored_manifest`: a
    cached repository's are those the cache holds), and whether there are more."""
    if source_of(ctx, name) is not None:
        from registry.proxy.routing import RoutingReferrers

        referrers = ctx.referrers
        if isinstance(referrers, RoutingReferrers):
            return await referrers.local.page(local_name(ctx, name), subject)
    return await ctx.referrers.page(name, subject)


@attrs.frozen
class RepositoryRow:
    name: str
    source: str | None
    tags: int | None  # None (shown as "—") for a repository the caller may not pull
    size: int | None


async def tag_count(ctx: RegistryContext, name: str) -> int:
    try:
        return len(await ctx.driver.list(layout.tags_dir(local_name(ctx, name))))
    except PathNotFoundError:
        return 0


@attrs.frozen
class TagRow:
    tag: str
    digest: Digest | None
    media_type: str
    size: int | None
    platforms: tuple[str, ...]
    date: float | None


def parse_stored(body: bytes) -> ParsedManifest | None:
    try:
        return parse_manifest(body, None, DEFAULT_URL_POLICY)
    except RegistryError:
        return None


# A manifest's own page parses it whole (every layer, platform and annotation).  One of 4 MiB
# (10,000 layers) costs a quarter of a second of pure Python: on the reactor thread, every
# request of every client waited for each view.  Past this size it is parsed in a worker
# thread, one such parse at a time, so that the reactor keeps its turns (the interpreter
# switches threads every few milliseconds) and a few clients reloading a large manifest's page
# cannot hold the process.  Nothing parsed is kept: a parsed 4 MiB manifest holds tens of MiB.
PARSE_IN_THREAD_FROM = 64 * 1024
_LARGE_PARSES = DeferredSemaphore(1)


async def parse_shown(reactor: Any, body: bytes) -> ParsedManifest | None:
    """`parse_stored` for a page that shows the whole manifest (see above)."""
    if len(body) < PARSE_IN_THREAD_FROM:
        return parse_stored(body)
    await _LARGE_PARSES.acquire()
    try:
        parsed: ParsedManifest | None = await deferToThreadPool(
            reactor, reactor.getThreadPool(), parse_stored, body
        )
        return parsed
    finally:
        _LARGE_PARSES.release()


async def read_config(
    blobs: BlobStore, local: str, manifest: ParsedManifest, limit: int = MAX_CONFIG_SIZE
) -> dict[str, Any] | None:
    """
    An image's config JSON when it is stored here as a blob of the repository ``local`` (a
    cache may not have it yet).  Only through the repository's own link, as the API serves
    blobs: a manifest may name any digest, and the config of another repository's image
    (environment, labels, history) must not show through one the viewer may pull.
    """
    config = manifest.config
    if config is None or config.size > limit:
        return None
    try:
        if not await blobs.is_linked(local, config.digest):
            return None
        # The size the manifest declares is the pusher's word: the stored one decides.
        stored = await blobs.exists(config.digest)
        if stored is None or stored.size > limit:
            return None
        body = await blobs.get_small(config.digest)
        document = json.loads(body)
    except (RegistryError, StorageError, ValueError, RecursionError):
        # RecursionError: JSON nested deeper than the parser goes.
        return None
    return document if isinstance(document, dict) else None


def image_size(manifest: ParsedManifest) -> int:
    """What a pull downloads: config and layers (compressed)."""
    total = manifest.config.size if manifest.config is not None else 0
    return total + sum(layer.size for layer in manifest.layers)


def index_platforms(manifest: ParsedManifest) -> tuple[str, ...]:
    return tuple(
        _format.platform(child.platform)
        for child in manifest.manifests
        if child.platform and child.platform.get("os") != "unknown"
    )


@attrs.frozen
class LocalReader:
    """
    What is stored here, read with the registry's own store logic over its driver: a tag's
    link, a manifest's or config's bytes.  The repository page uses it so that listing a
    cached repository shows what is cached without asking the upstream once per row.
    """

    tags: TagStore
    blobs: BlobStore
    described: BoundedMap[tuple[str, Digest], _Described]

    @classmethod
    def of(cls, ctx: RegistryContext) -> LocalReader:
        return cls.over(TagStore(ctx.driver), BlobStore(ctx.driver), ctx.reactor)

    @classmethod
    def over(cls, tags: TagStore, blobs: BlobStore, clock: IReactorTime) -> LocalReader:
        return cls(tags, blobs, BoundedMap(clock, DESCRIBED_ENTRIES, None))


# How many manifests one page reads at a time: each may be up to the manifest size limit.
READS_AT_ONCE = 4


@attrs.frozen
class _Described:
    media_type: str
    size: int | None
    platforms: tuple[str, ...]


async def _describe(reader: LocalReader, local: str, digest: Digest) -> _Described:
    """A tag row's media type, size and platforms, remembered once complete (a cached
    image whose config is not stored yet is read again next time)."""
    key = (local, digest)
    known = reader.described.get(key)
    if known is not None:
        return known
    try:
        stored = await reader.blobs.exists(digest)
        if stored is None:
            return _Described("", None, ())
        if stored.size > MAX_DESCRIBED_SIZE:
            about = _Described("", stored.size, ())
            reader.described.put(key, about)
            return about
        body = await reader.blobs.get_small(digest)
    except (RegistryError, StorageError):
        return _Described("", None, ())
    manifest = parse_stored(body)
    if manifest is None:
        about = _Described("", len(body), ())
    elif manifest.kind == "index":
        about = _Described(manifest.media_type, len(body), index_platforms(manifest))
    else:
        config = await read_config(reader.blobs, local, manifest, MAX_DESCRIBED_SIZE)
        platforms = (_format.platform(config),) if config and config.get("os") else ()
        about = _Described(manifest.media_type, image_size(manifest), platforms)
        if (
            config is None
            and manifest.config is not None
            and not await reader.blobs.is_linked(local, manifest.config.digest)
        ):
            return about  # a cache has not stored it yet: not remembered
    reader.described.put(key, about)
    return about


async def tag_rows(
    reader: LocalReader, local: str, shown: Sequence[tuple[str, float | None]]
) -> list[TagRow]:
    """
    The rows of ``(tag, date)``: each distinct manifest is read once, a few at a time, so a
    page of tags that point at large indexes holds a few of them in memory, not all.
    """
    digests = await gatherResults(
        [Deferred.fromCoroutine(reader.tags.resolve(local, tag)) for tag, _ in shown],
        consumeErrors=True,
    )
    gate = DeferredSemaphore(READS_AT_ONCE)
    reads: dict[Digest, Deferred[_Described]] = {}
    for digest in digests:
        if digest is not None and digest not in reads:
            reads[digest] = gate.run(_describe, reader, local, digest)
    described = dict(
        zip(reads, await gatherResults(list(reads.values()), consumeErrors=True), strict=True)
    )
    rows = []
    for (tag, date), digest in zip(shown, digests, strict=True):
        if digest is None:
            rows.append(TagRow(tag, None, "", None, (), date))
            continue
        about = described[digest]
        rows.append(TagRow(tag, digest, about.media_type, about.size, about.platforms, date))
    return rows


@attrs.frozen
class Layer:
    media_type: str
    digest: Digest
    size: int
    created_by: str | None


def layers_with_history(manifest: ParsedManifest, config: Mapping[str, Any] | None) -> list[Layer]:
    """Each layer with the history step that made it (steps with ``empty_layer`` made none)."""
    steps: list[str | None] = []
    history = config.get("history") if config else None
    if isinstance(history, list):
        for step in history:
            if isinstance(step, dict) and not step.get("empty_layer"):
                created = step.get("created_by")
                steps.append(str(created) if created is not None else None)
    return [
        Layer(
            layer.media_type,
            layer.digest,
            layer.size,
            steps[i] if i < len(steps) and len(steps) == len(manifest.layers) else None,
        )
        for i, layer in enumerate(manifest.layers)
    ]


def group_referrers(descriptors: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for descriptor in descriptors:
        kind = str(descriptor.get("artifactType") or descriptor.get("mediaType") or "unknown")
        groups.setdefault(kind, []).append(descriptor)
    return dict(sorted(groups.items()))
