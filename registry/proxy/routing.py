"""
Which repositories are proxied, and the stores that send each request to the local stores or
to the right upstream's cache.

Handlers keep calling ``ctx.blobs``, ``ctx.manifests``, ``ctx.tags`` and ``ctx.uploads``; these
*wrap* the local stores (composition, never subclasses): each provides the store's complete
interface, method by method, looking at the repository name and either calling the local store
or handing over to a `ProxyCache`.  A method added to a local store is therefore not reachable
here until it is written here, and one added to an interface fails ``verifyObject`` until it
is: a new write can never reach a read-only cache silently.  Rules, in order:

1. ``<prefix>/<rest>``: the upstream with that prefix (``docker.io/library/alpine``);
2. otherwise the default upstream, if any, unless the first component looks like a registry
   host (it contains ``.`` or ``:``, or is ``localhost``: Docker's own rule), so that names
   such as ``registry.example.com/team/app`` stay hosted next to a Docker Hub mirror;
3. otherwise the repository is hosted: push and pull work as usual.

A proxied repository is stored under one canonical local name, ``<prefix>/<upstream name>``
(``docker.io/library/alpine`` whether the client asked for ``alpine``, ``library/alpine`` or
``docker.io/alpine``), so every spelling shares one cached copy.  Writes to proxied names are
refused with 405 UNSUPPORTED, as registry:2 does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.web.iweb import IBodyProducer, IRequest
from zope.interface import implementer

from registry.api.digests import Digest
from registry.api.errors import NAME_UNKNOWN, UNSUPPORTED, RegistryError
from registry.client._client import DOCKER_HUB_HOSTS
from registry.http.routes import IRouteRewriter, Route, UnservedNamespace
from registry.proxy.cache import ProxyCache
from registry.proxy.config import looks_like_host
from registry.storage.blobs import BlobInfo, IBlobStore
from registry.storage.manifests import IManifestStore, PutResult, StoredManifest
from registry.storage.pagination import paginate, parse_count
from registry.storage.referrers import IReferrers, within_bytes
from registry.storage.tags import ITagStore
from registry.storage.uploads import CommittedUpload, IUploadStore, UploadAppender


@attrs.frozen
class Routed:
    cache: ProxyCache
    local: str  # where the cache stores it here
    upstream: str  # the name the upstream knows (``library/alpine``)


@implementer(IRouteRewriter)
@attrs.define
class ProxyRouter:
    caches: list[ProxyCache]

    @property
    def default(self) -> ProxyCache | None:
        for cache in self.caches:
            if cache.config.default:
                return cache
        return None

    def by_prefix(self, prefix: str) -> ProxyCache | None:
        for cache in self.caches:
            if cache.config.prefix and cache.config.prefix == prefix:
                return cache
        return None

    def by_namespace(self, namespace: str) -> ProxyCache | None:
        """The upstream containerd's ``?ns=`` names: the one whose ``prefix`` it is, else the
        one whose ``remoteurl`` is that registry (``docker.io`` for Docker Hub's hosts, a
        port only when not the scheme's default)."""
        by_prefix = self.by_prefix(namespace)
        if by_prefix is not None:
            return by_prefix
        for cache in self.caches:
            if registry_namespace(cache.config.remoteurl) == namespace:
                return cache
        return None

    def route(self, name: str) -> Routed | None:
        """The upstream serving repository ``name``, or None for a hosted repository."""
        for cache in self.caches:
            prefix = cache.config.prefix
            if prefix and name.startswith(prefix + "/"):
                return self._routed(cache, name[len(prefix) + 1 :])
        default = self.default
        if default is not None and not looks_like_host(name.split("/", 1)[0]):
            return self._routed(default, name)
        return None

    def _routed(self, cache: ProxyCache, rest: str) -> Routed:
        upstream = cache.client.upstream_name(rest)
        prefix = cache.config.prefix
        local = f"{prefix}/{upstream}" if prefix else upstream
        return Routed(cache, local, upstream)

    def local_name(self, name: str) -> str:
        routed = self.route(name)
        return routed.local if routed is not None else name

    def rewrite_route(self, request: IRequest, route: Route) -> Route:
        """containerd's ``?ns=<registry host>`` names the upstream a mirror request is for:
        answer from that upstream (with ``OCI-Namespace``), or 404 NAME_UNKNOWN when none is
        configured for it so containerd tries its next host.

        Reads only: containerd sends ``ns`` when it resolves and fetches.  A write names the
        repository it writes, as the upload sink (which checks access and stores the body
        before any route is rewritten) takes it, so one request has one name throughout: a
        rewrite here would record and answer the write under a repository nobody checked."""
        if request.method not in (b"GET", b"HEAD"):
            return route
        values = request.args.get(b"ns") if request.args else None
        if not values or not route.name:
            return route
        namespace = values[0].decode("utf-8", "replace").strip().lower()
        detail = {"name": route.name, "ns": namespace[:200]}
        # The name a caller is checked under before learning that no upstream serves this
        # namespace: the one a configured upstream of that prefix would be asked for.
        unserved_name = f"{_as_component(namespace)}/{route.name}"
        cache = self.by_prefix(namespace)
        if cache is not None and route.name.startswith(namespace + "/"):
            name = route.name  # the prefix in the path too (a mirror path ending in it)
        else:
            # containerd names the repository as that registry knows it: always under the
            # upstream's prefix here (an upstream repository may itself start with it).
            cache = cache or self.by_namespace(namespace)
            if cache is None:
                raise UnservedNamespace(
                    unserved_name,
                    NAME_UNKNOWN,
                    detail,
                    f"no upstream is configured for namespace {namespace[:200]}",
                )
            prefix = cache.config.prefix
            name = f"{prefix}/{route.name}" if prefix else route.name
        # The name must reach that upstream (a default upstream without a prefix does not
        # get names under another upstream's prefix): else this mirror does not serve it.
        routed = self.route(name)
        if routed is None or routed.cache is not cache:
            raise UnservedNamespace(
                name,
                NAME_UNKNOWN,
                detail,
                f"the upstream for namespace {namespace[:200]} is not asked for"
                f" {route.name[:200]} here: the name is another upstream's",
            )
        # (``OCI-Namespace`` is said once the caller may read the name: `RegistryApp.dispatch`.)
        if name == route.name:
            return attrs.evolve(route, namespace=namespace)
        # The stores are asked for the prefixed name; the answers still name the requested
        # repository (`Route.requested_name`).
        return attrs.evolve(route, name=name, namespace=namespace, requested=route.name)


def _as_component(namespace: str) -> str:
    """``namespace`` as one repository name component (``host:port`` has a colon, which no
    name has): only a pattern as wide as ``**`` grants it."""
    return re.sub(r"[^a-z0-9._-]+", "-", namespace).strip("._-")[:200] or "unnamed"


def registry_namespace(url: str) -> str:
    """How containerd names the registry at ``url`` in ``?ns=`` (the host of an image
    reference): ``docker.io`` for Docker Hub, ``host:port`` only for a port other than the
    scheme's default."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in DOCKER_HUB_HOSTS:
        return "docker.io"
    shown = f"[{host}]" if ":" in host else host
    default_port = 443 if parts.scheme.lower() == "https" else 80
    return shown if parts.port in (None, default_port) else f"{shown}:{parts.port}"


def refuse_write(name: str, allow: str = "GET, HEAD") -> RegistryError:
    """405, with the ``Allow`` RFC 9110 asks of it: what the route still takes on a cached
    repository (reads of manifests and blobs; nothing on an upload's routes)."""
    return RegistryError(
        UNSUPPORTED,
        {"name": name, "reason": "repository is a pull-through cache of an upstream"},
        "the operation is unsupported: this repository is a read-only pull-through cache",
        headers={"Allow": allow},
    )


@implementer(IBlobStore)
@attrs.frozen
class RoutingBlobStore:
    local: IBlobStore
    router: ProxyRouter

    async def exists(self, digest: Digest) -> BlobInfo | None:
        # Stored data, whoever links it: callers (mounts) check a repository's link first.
        return await self.local.exists(digest)

    async def is_linked(self, name: str, digest: Digest) -> bool:
        routed = self.router.route(name)
        return await self.local.is_linked(routed.local if routed else name, digest)

    async def stat(self, name: str, digest: Digest) -> BlobInfo:
        routed = self.router.route(name)
        if routed is None:
            return await self.local.stat(name, digest)
        return await routed.cache.blob_stat(routed.local, routed.upstream, digest)

    async def open(
        self, name: str, digest: Digest, offset: int = 0, length: int | None = None
    ) -> IBodyProducer:
        routed = self.router.route(name)
        if routed is None:
            return await self.local.open(name, digest, offset, length)
        return await routed.cache.blob_open(routed.local, routed.upstream, digest, offset, length)

    async def redirect_url(self, name: str, digest: Digest) -> str | None:
        if self.router.route(name) is not None:
            return None  # the data may not be stored yet
        return await self.local.redirect_url(name, digest)

    async def link(self, name: str, digest: Digest) -> None:
        if self.router.route(name) is not None:
            raise refuse_write(name, allow="")  # a mount: an upload's route
        await self.local.link(name, digest)

    async def unlink(self, name: str, digest: Digest) -> None:
        if self.router.route(name) is not None:
            raise refuse_write(name)
        await self.local.unlink(name, digest)


@implementer(IManifestStore)
@attrs.frozen
class RoutingManifestStore:
    local: IManifestStore
    router: ProxyRouter

    async def get(self, name: str, reference: str | Digest) -> StoredManifest:
        routed = self.router.route(name)
        if routed is None:
            return await self.local.get(name, reference)
        return await routed.cache.manifest_get(routed.local, routed.upstream, str(reference))

    async def put(
        self,
        name: str,
        reference: str | Digest,
        body: bytes,
        content_type: str | None,
        tags: Sequence[str] = (),
    ) -> PutResult:
        if self.router.route(name) is not None:
            raise refuse_write(name)
        return await self.local.put(name, reference, body, content_type, tags)

    async def delete(self, name: str, digest: str | Digest) -> list[str]:
        if self.router.route(name) is not None:
            raise refuse_write(name)
        return await self.local.delete(name, digest)

    async def untag(self, name: str, tag: str) -> None:
        if self.router.route(name) is not None:
            raise refuse_write(name)
        await self.local.untag(name, tag)


@implementer(ITagStore)
@attrs.frozen
class RoutingTagStore:
    """Tags of a proxied repository are the upstream's (those cached here when it fails)."""

    local: ITagStore
    router: ProxyRouter

    @property
    def max_page(self) -> Any:
        return self.local.max_page

    async def list_tags(
        self, name: str, n: int | str | None = None, last: str | None = None
    ) -> tuple[list[str], bool]:
        routed = self.router.route(name)
        if routed is None:
            return await self.local.list_tags(name, n, last)
        count = parse_count(n, self.local.max_page)
        return await routed.cache.tag_list(routed.local, routed.upstream, count, last)


@implementer(IReferrers)
@attrs.frozen
class RoutingReferrers:
    """Referrers of a proxied manifest are the upstream's (its referrers API, or the
    ``sha256-<hex>`` tag schema), filtered and paged here."""

    local: IReferrers
    router: ProxyRouter

    @property
    def max_page(self) -> Any:
        return self.local.max_page

    async def list_referrers(
        self, name: str, subject: Digest, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        routed = self.router.route(name)
        if routed is None:
            return await self.local.list_referrers(name, subject, artifact_type)
        found = await routed.cache.referrers(routed.local, routed.upstream, subject)
        if artifact_type is not None:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        return sorted(found, key=lambda d: str(d["digest"]))

    async def page(
        self,
        name: str,
        subject: Digest,
        artifact_type: str | None = None,
        n: int | str | None = None,
        last: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        if self.router.route(name) is None:
            return await self.local.page(name, subject, artifact_type, n, last)
        found = await self.list_referrers(name, subject, artifact_type)  # sorted by digest
        by_digest = {str(d["digest"]): d for d in found}
        digests, more = paginate(list(by_digest), parse_count(n, self.local.max_page), last)
        kept, trimmed = within_bytes([by_digest[digest] for digest in digests])
        return kept, more or trimmed


@implementer(IUploadStore)
@attrs.frozen
class RoutingUploadStore:
    """Uploads are writes: refused for proxied names, the local store's otherwise."""

    local: IUploadStore
    router: ProxyRouter

    def _refuse(self, name: str) -> None:
        if self.router.route(name) is not None:
            raise refuse_write(name, allow="")

    async def start(self, name: str) -> str:
        self._refuse(name)
        return await self.local.start(name)

    async def open(
        self, name: str, upload_id: str, start: int | None = None, coming: int | None = None
    ) -> UploadAppender:
        self._refuse(name)
        return await self.local.open(name, upload_id, start, coming)

    async def recover(self, name: str, upload_id: str, digest: Digest) -> CommittedUpload | None:
        self._refuse(name)
        return await self.local.recover(name, upload_id, digest)

    async def commit(
        self,
        appender: UploadAppender | CommittedUpload,
        digest: Digest,
        expected_size: int | None = None,
    ) -> int:
        self._refuse(appender.name)
        return await self.local.commit(appender, digest, expected_size)

    async def cancel(self, name: str, upload_id: str) -> None:
        self._refuse(name)
        await self.local.cancel(name, upload_id)

    async def size(self, name: str, upload_id: str) -> int:
        self._refuse(name)
        return await self.local.size(name, upload_id)

    async def flush(self) -> None:
        await self.local.flush()
