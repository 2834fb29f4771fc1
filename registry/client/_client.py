"""
`RegistryClient`: the Distribution API of one registry, as async methods.

Every call goes through a `Session` (auth, redirects, timeouts, retries).  Manifests are small
and come back whole, bytes exactly as served; blobs are streamed (`BlobStream`) and uploaded
from files or from another registry's blob stream in constant memory, hashed as they pass.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from registry.api import mediatypes
from registry.api.digests import Digest, digest_of
from registry.api.errors import RegistryError
from registry.asyncutil import within_time
from registry.client._body import BodyRelay, Collector, ConsumerWriter
from registry.client._digests import as_digest
from registry.client._session import (
    BodyFactory,
    RateLimitStatus,
    Session,
    header,
    origin_of,
    url_problem,
)
from registry.client._streams import (
    FileSink,
    FileSource,
    PipeSource,
    SkipFirst,
    in_thread,
    new_hash,
    single_use,
)
from registry.client._tls import TLSOptions
from registry.client._tokens import MAX_TOKENS
from registry.client.auth import Credentials
from registry.client.errors import (
    BadResponse,
    ClientError,
    NotFound,
    Rejected,
    TooLarge,
    Unavailable,
)
from registry.http.headers import header_values

# The media types come from registry.api.mediatypes, the one list the registry serves and
# stores; the default Accept leaves schema1 out (a caller may ask for it with ``accept=``).
OCI_MANIFEST = mediatypes.OCI_IMAGE_MANIFEST
OCI_INDEX = mediatypes.OCI_IMAGE_INDEX
DOCKER_MANIFEST = mediatypes.DOCKER_MANIFEST_V2
DOCKER_MANIFEST_LIST = mediatypes.DOCKER_MANIFEST_LIST
DOCKER_SCHEMA1_SIGNED = mediatypes.DOCKER_SCHEMA1_SIGNED
DOCKER_SCHEMA1 = mediatypes.DOCKER_SCHEMA1
MANIFEST_MEDIA_TYPES: tuple[str, ...] = mediatypes.MANIFEST_ACCEPT
MANIFEST_ACCEPT = mediatypes.MANIFEST_ACCEPT_HEADER

log = Logger()

DOCKER_HUB_HOSTS = frozenset(
    {"registry-1.docker.io", "docker.io", "index.docker.io", "registry.hub.docker.com"}
)


def image_reference(name: str, reference: str) -> str:
    """``name:tag`` or ``name@digest``, as image references are written."""
    return f"{name}@{reference}" if Digest.is_digest(reference) else f"{name}:{reference}"


def maps_to_library(url: str, library: bool | None) -> bool:
    """Whether the registry at ``url`` takes one-component names as ``library/<name>``:
    ``library`` when given, else only for Docker Hub's hosts."""
    if library is not None:
        return library
    return origin_of(url)[1] in DOCKER_HUB_HOSTS


DEFAULT_MAX_MANIFEST_SIZE = 4 * 1024 * 1024 + 65536
_LIST_BODY = 8 * 1024 * 1024  # a tag list or catalog page
# Bounds on a referrers answer split over pages (see `RegistryClient._referrers_api`).
MAX_REFERRER_PAGES = 16
MAX_REFERRERS = 4096
_SMALL = 64 * 1024
# Pages `all_tags` and `all_repositories` follow at most (a million names at 100 a page).
MAX_LIST_PAGES = 10_000

Method = Literal["GET", "HEAD"]


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _content_length(headers: Headers) -> int | None:
    """``Content-Length`` of a HEAD answer (twisted keeps it among the headers only for HEAD;
    for a body it becomes ``response.length``)."""
    value = header(headers, "content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _content_range_start(value: str | None) -> int:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else -1


_as_digest = as_digest


def _next_url(base: str, link: str | None) -> str | None:
    """The absolute URL of a ``Link`` header's ``rel="next"`` target (relative ones are
    resolved against ``base``, the URL that was asked), or None."""
    for target, params in re.findall(r"<([^>]*)>([^,]*)", link or ""):
        rel = re.search(r'rel\s*=\s*"?([^";]*)"?', params)
        if rel is not None and "next" in rel.group(1).lower().split():
            try:
                return str(urljoin(base, target))
            except ValueError:  # brackets unbalanced, or not around an IP address
                return str(target)  # as written: the caller refuses it (`url_problem`)
    return None


def _last_of(url: str) -> str | None:
    """The ``last`` query parameter of a next-page URL, or None (an opaque page token)."""
    try:
        values = parse_qs(urlsplit(url).query).get("last")
    except ValueError:  # a URL urllib cannot split: no ``last`` to read from it
        return None
    return values[0] if values else None


def _with_query(path: str, n: int | None, last: str | None) -> str:
    """``path`` with the spec's ``n`` and ``last`` list parameters, those that are set."""
    query = urlencode(
        {k: v for k, v in (("n", None if n is None else str(n)), ("last", last)) if v}
    )
    return path + (f"?{query}" if query else "")


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@attrs.frozen
class Manifest:
    """A manifest as the registry serves it: ``body`` is the exact bytes (None for a HEAD);
    ``size`` may be None for a HEAD without ``Content-Length``."""

    digest: Digest
    media_type: str
    size: int | None
    body: bytes | None
    headers: Headers

    def json(self) -> dict[str, Any]:
        """The body parsed (a BadResponse when it is not a JSON object)."""
        try:
            data = json.loads(self.body or b"")
        except ValueError:
            raise BadResponse(None, "manifest is not JSON") from None
        if not isinstance(data, dict):
            raise BadResponse(None, "manifest is not a JSON object")
        return data


@attrs.frozen
class Page:
    """One page of a list (tags, repositories).  ``next_url`` is the absolute URL of the next
    page, as the ``Link`` header names it (None: this was the last page); ``next_last`` is the
    ``last`` to pass for it, from that URL or, when it carries an opaque token instead, this
    page's last item (what a caller asking page by page with ``last`` can do)."""

    items: list[str]
    next_last: str | None
    next_url: str | None = None

    @property
    def has_next(self) -> bool:
        return self.next_url is not None or self.next_last is not None


@attrs.define
class Upload:
    """An open upload session: its absolute ``location`` and the bytes the registry holds.
    Save ``location`` to resume after a restart (`RegistryClient.resume_upload`)."""

    name: str
    location: str
    offset: int = 0


class BlobStream:
    """An open blob response whose body has not been read yet.

    Read it exactly once: `deliver` (a protocol, Twisted style), `write_to` (an IConsumer) or
    `read` (small blobs).  Or `abort` it.  The body ends in the protocol's ``connectionLost``
    with ``ResponseDone`` only when it is complete and (with ``verify``, for a whole blob)
    hashes to ``digest``; otherwise with a `ClientError`.  A caller that keeps an unread blob
    leaks a connection.
    """

    def __init__(
        self,
        session: Session,
        response: IResponse,
        digest: Digest,
        length: int | None,
        offset: int = 0,
        whole: bool | None = None,
    ) -> None:
        self._session = session
        self._response = response
        self.digest = digest
        self.length = length  # bytes in this response (None: unknown)
        self.offset = offset  # where in the blob this body starts
        # Whether the body is the whole blob, the only body its digest can check.
        self.whole = offset == 0 if whole is None else whole
        self.headers: Headers = response.headers
        self._relay: BodyRelay | None = None

    @property
    def received(self) -> int:
        return self._relay.received if self._relay is not None else 0

    def deliver(
        self, protocol: Protocol, *, verify: bool = True, read_size: int | None = None
    ) -> None:
        """Stream the body into ``protocol``.

        ``protocol.transport`` is an `IPushProducer`: pause it to apply back-pressure to the
        socket (the idle timeout does not run while paused), stop it to abort.  Set
        ``verify=False`` when the consumer hashes anyway.  A partial body (``offset`` > 0 or a
        bounded range) is never verified here.  ``read_size`` raises how much one socket read
        takes (plain TCP only): fewer, larger chunks for a consumer with a cost per chunk.
        """
        if self._relay is not None:
            raise RuntimeError("a blob body can be read only once")
        session = self._session

        def count_bytes(n: int) -> None:
            session.bytes_received += n

        def count_error() -> None:
            session.errors += 1

        self._relay = BodyRelay(
            protocol,
            reactor=session.reactor,
            digest=self.digest,
            length=self.length,
            verify=verify and self.whole,
            idle_timeout=session.timeout,
            on_bytes=count_bytes,
            on_error=count_error,
            read_size=read_size,
        )
        self._response.deliverBody(self._relay)
        # deliverBody passes on the bytes that came with the headers, then resumes the socket
        # whatever ``protocol`` asked for meanwhile: a pause asked for then must hold.
        self._relay.reassert_pause()

    async def write_to(self, consumer: IConsumer, *, verify: bool = True) -> int:
        """Stream the body into ``consumer`` (registered as a push producer on it) and return
        the byte count.  Cancelling the awaiting coroutine aborts the connection."""
        writer = ConsumerWriter(consumer, self.abort)
        self.deliver(writer, verify=verify)
        return await writer.done

    async def read(
        self, max_size: int = DEFAULT_MAX_MANIFEST_SIZE, *, verify: bool = True
    ) -> bytes:
        """The whole body, for small blobs such as image configs."""
        if self.length is not None and self.length > max_size:
            self.abort()
            raise TooLarge(f"blob of {self.length} bytes", max_size)
        collector = Collector(max_size, "blob")
        self.deliver(collector, verify=verify)
        return await collector.done

    def abort(self) -> None:
        """Drop the connection now (the body, read or not, is abandoned)."""
        if self._relay is None:
            self.deliver(Protocol(), verify=False)
        assert self._relay is not None
        self._relay.abort(Unavailable(None, "aborted by the caller"))


class RegistryClient:
    """A client for one registry (``url``: ``https://host[:port]`` or ``http://...``).

    ``credentials`` (or ``username``/``password``) answer a Basic challenge or buy Bearer
    tokens from the realm the registry's own ``/v2/`` announces; nothing is sent elsewhere.
    ``timeout`` bounds connect-to-first-byte of every exchange and the silence allowed inside a
    body.  Idempotent calls are retried ``retries`` times on 5xx, 429 and lost connections,
    ``backoff`` seconds doubled each time.  ``clock`` measures token lifetimes (inject a
    `Clock` in tests).  ``docker_hub_library`` maps one-component names to ``library/<name>``;
    by default only when the host is Docker Hub.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        credentials: Credentials | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: TLSOptions | None = None,
        ca_bundle: str | Path | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        pool: HTTPConnectionPool | None = None,
        clock: IReactorTime | None = None,
        docker_hub_library: bool | None = None,
        max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE,
        user_agent: str = "txregistry",
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        if credentials is None and username:
            credentials = Credentials(username, password or "")
        if tls is None:
            tls = TLSOptions(ca_file=ca_bundle)
        self.session = Session(
            reactor,
            url,
            credentials=credentials,
            tls=tls,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            pool=pool,
            clock=clock,
            user_agent=user_agent,
            max_tokens=max_tokens,
        )
        self.reactor = reactor
        self.url = self.session.url
        self.origin = self.session.origin
        self.max_manifest_size = max_manifest_size
        self.docker_hub_library = maps_to_library(self.url, docker_hub_library)
        # Sessions an interrupted or failed upload may have left open: the registry refused
        # their DELETE (their partial bytes may stay until the registry purges old uploads).
        self.uncancelled_uploads: list[str] = []
        # Sessions being cancelled after the call that opened them was (`start_upload`).
        self._cleanups: set[Deferred[None]] = set()

    # -- observations (metrics and tests)

    @property
    def timeout(self) -> float:
        return self.session.timeout

    @property
    def pool(self) -> HTTPConnectionPool:
        return self.session.pool

    @property
    def tokens(self) -> Any:
        return self.session.tokens

    @property
    def requests(self) -> int:
        return self.session.requests

    @property
    def token_requests(self) -> int:
        return self.session.token_requests

    @property
    def bytes_received(self) -> int:
        return self.session.bytes_received

    @property
    def errors(self) -> int:
        return self.session.errors

    @property
    def rate_limit(self) -> RateLimitStatus | None:
        return self.session.rate_limit

    def upstream_name(self, name: str) -> str:
        """The repository name on the registry (``alpine`` → ``library/alpine`` on Docker Hub)."""
        if self.docker_hub_library and "/" not in name:
            return f"library/{name}"
        return name

    def _pull(self, name: str) -> list[str]:
        return [f"repository:{name}:pull"]

    def _push(self, name: str) -> list[str]:
        return [f"repository:{name}:pull,push"]

    # -- base

    async def ping(self) -> int:
        """``GET /v2/`` without credentials (readiness checks): the status, 401 being the
        usual healthy answer for a registry with auth.  `ClientError` when it does not answer."""
        response, _ = await self.session.exchange("GET", self.url + "/v2/", {}, None)
        await self.session.discard(response)
        return int(response.code)

    async def check(self) -> None:
        """``GET /v2/`` with credentials: returns when the registry accepts them."""
        await self.session.ensure_challenge()
        response = await self.session.call("GET", "/v2/", scopes=[], what="/v2/")
        await self.session.discard(response)

    async def close(self) -> None:
        """Wait for upload sessions still being cancelled (see `start_upload`), then close
        idle pooled connections (only when the pool is the client's own)."""
        while self._cleanups:  # each ends within twice the session's timeout, starting no other
            await next(iter(self._cleanups))
        await self.session.close()

    # -- lists

    async def catalog(self, n: int | None = None, last: str | None = None) -> Page:
        """One page of ``/v2/_catalog``."""
        return await self._page(
            _with_query("/v2/_catalog", n, last), "repositories", ["registry:catalog:*"]
        )

    async def list_tags(self, name: str, n: int | None = None, last: str | None = None) -> Page:
        """One page of the repository's tags (``n`` and ``last`` as the spec has them)."""
        upstream = self.upstream_name(name)
        path = _with_query(f"/v2/{upstream}/tags/list", n, last)
        return await self._page(path, "tags", self._pull(upstream))

    async def all_tags(self, name: str, page_size: int | None = None) -> AsyncIterator[str]:
        """Every tag, following ``Link`` pages (see `_all_pages` for the bounds)."""
        upstream = self.upstream_name(name)
        first = _with_query(f"/v2/{upstream}/tags/list", page_size, None)
        async for tag in self._all_pages(first, "tags", self._pull(upstream), f"tags of {name}"):
            yield tag

    async def all_repositories(self, page_size: int | None = None) -> AsyncIterator[str]:
        """Every repository of the catalog, following ``Link`` pages."""
        first = _with_query("/v2/_catalog", page_size, None)
        pages = self._all_pages(first, "repositories", ["registry:catalog:*"], "catalog")
        async for name in pages:
            yield name

    async def _all_pages(
        self, first: str, key: str, scopes: list[str], what: str
    ) -> AsyncIterator[str]:
        """The items of every page, from ``first`` (a path) on through each ``Link`` target,
        asked for as the registry wrote it (a registry may page with an opaque token rather
        than ``last``, and may want its ``n`` kept).

        A next page whose URL is the one just asked for ends the list (some registries link
        the last page to itself); one asked for earlier (a ``Link`` cycle) is a `BadResponse`,
        and so are more than `MAX_LIST_PAGES` pages.  So is a next page on another origin:
        its names would not be the registry's, and a registry must not be able to aim the
        client (the pull-through cache, replication) at any other host; stopping there
        instead would end the list early without saying so.  So is a next page link that
        names no URL that can be requested (`url_problem`: a second port, a bracket
        missing)."""
        url = self.session.url + first
        asked = {url}
        for _ in range(MAX_LIST_PAGES):
            page = await self._page(url, key, scopes)
            for item in page.items:
                yield item
            following = page.next_url
            if following is None or following == url:
                return
            problem = url_problem(following)
            if problem is not None:
                raise self.session.bad(
                    f"{what}: the next page link {following[:200]!r}: {problem}; not followed"
                )
            if origin_of(following) != self.session.origin:
                raise self.session.bad(
                    f"{what}: the next page is on another origin ({following[:200]}); not followed"
                )
            if following in asked:
                raise self.session.bad(
                    f"{what}: the next page link cycles (back to "
                    f"{_path_and_query(following)[:200]} after {_path_and_query(url)[:200]})"
                )
            asked.add(following)
            url = following
        raise self.session.bad(f"{what}: more than {MAX_LIST_PAGES} pages")

    async def tags(
        self, name: str, n: int | None = None, last: str | None = None
    ) -> tuple[list[str], bool]:
        """One page of tags and whether a next page was announced (the proxy's shape)."""
        page = await self.list_tags(name, n, last)
        return page.items, page.has_next

    async def _page(self, path_or_url: str, key: str, scopes: list[str]) -> Page:
        path = urlsplit(path_or_url).path
        response = await self.session.call(
            "GET",
            path_or_url,
            scopes=scopes,
            headers={"Accept": "application/json"},
            what=path,
        )
        data = self._json_object(await self.session.collect(response, _LIST_BODY, key), key)
        items = data.get(key) or []
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise self.session.bad(f"{path} without a list of {key}")
        asked = path_or_url if "://" in path_or_url else self.session.url + path_or_url
        following = _next_url(asked, ", ".join(header_values(response.headers, "link")))
        if following is None:
            return Page(items, None)
        return Page(items, _last_of(following) or (items[-1] if items else None), following)

    # -- manifests

    async def manifest(
        self,
        name: str,
        reference: str,
        method: Method = "GET",
        accept: Sequence[str] = MANIFEST_MEDIA_TYPES,
    ) -> Manifest:
        """Fetch (GET) or check (HEAD: not counted by Docker Hub's rate limit) a manifest by
        tag or digest.  A GET body is checked against ``Docker-Content-Digest`` and against
        ``reference`` when that is a digest."""
        upstream = self.upstream_name(name)
        wanted = _as_digest(reference) if Digest.is_digest(reference) else None
        shown = image_reference(upstream, reference)
        session = self.session
        response = await session.call(
            method,
            f"/v2/{upstream}/manifests/{reference}",
            scopes=self._pull(upstream),
            headers={"Accept": ", ".join(accept)},
            what=f"manifest {shown}",
        )
        announced = self._announced_digest(response)
        media_type = _media_type(header(response.headers, "content-type"))
        if method == "HEAD":
            await session.discard(response)
            if announced is not None and wanted is not None and announced != wanted:
                raise session.bad(f"HEAD {reference} answered for {announced}")
            digest = announced or wanted
            if digest is None:
                raise session.bad(f"HEAD manifest {shown} without a digest")
            return Manifest(
                digest, media_type, _content_length(response.headers), None, response.headers
            )
        body = await session.collect(response, self.max_manifest_size, "manifest")
        session.bytes_received += len(body)
        for expected, source in (
            (announced, "announced in Docker-Content-Digest"),
            (wanted, "asked for"),
        ):
            if expected is not None:
                actual = digest_of(body, expected.algorithm)
                if actual != expected:
                    raise session.bad(
                        f"manifest {shown} hashes to {actual}, not the {expected} {source}"
                    )
        problem = _not_a_manifest(body)
        if problem is not None:  # a 200 from a captive portal or a broken proxy on the way
            raise session.bad(f"manifest {shown} is not a manifest: {problem}")
        digest = announced or wanted or digest_of(body)
        if media_type in ("", "application/json", "text/plain", "application/octet-stream"):
            media_type = _sniff_media_type(body) or media_type
        return Manifest(digest, media_type, len(body), body, response.headers)

    async def get_manifest(
        self, name: str, reference: str, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> Manifest:
        """GET a manifest by tag or digest: the exact bytes, digest-checked."""
        return await self.manifest(name, reference, "GET", accept)

    async def head_manifest(self, name: str, reference: str) -> Manifest | None:
        """HEAD a manifest: its digest, media type and size, or None when it is not there."""
        try:
            return await self.manifest(name, reference, "HEAD")
        except NotFound:
            return None

    async def put_manifest(
        self,
        name: str,
        reference: str,
        body: bytes,
        media_type: str | None = None,
        tags: Sequence[str] = (),
    ) -> Digest:
        """PUT ``body`` (unchanged) under a tag or its digest; returns the digest the registry
        announced, checked against the bytes.  ``media_type`` defaults to the body's
        ``mediaType``; ``tags`` adds ``?tag=`` parameters (a PUT by digest).  Under a digest
        the body does not hash to, `Rejected` ``DIGEST_INVALID`` before anything is sent."""
        upstream = self.upstream_name(name)
        algorithm = _as_digest(reference).algorithm if Digest.is_digest(reference) else "sha256"
        mine = digest_of(body, algorithm)
        if Digest.is_digest(reference) and mine != _as_digest(reference):
            # Refused before anything is sent: a registry that checks nothing would keep it.
            raise Rejected(
                None, f"the manifest given hashes to {mine}, not {reference}", "DIGEST_INVALID"
            )
        media_type = media_type or _sniff_media_type(body)
        if not media_type:
            raise ValueError("the manifest has no mediaType; pass media_type")
        query = ("?" + urlencode([("tag", t) for t in tags])) if tags else ""
        response = await self.session.call(
            "PUT",
            f"/v2/{upstream}/manifests/{reference}{query}",
            scopes=self._push(upstream),
            headers={"Content-Type": media_type},
            body=_bytes_body(body),
            ok=(201, 200),
            what=f"manifest PUT {image_reference(upstream, reference)}",
        )
        await self.session.discard(response)
        announced = self._announced_digest(response)
        if announced is not None and announced.algorithm == algorithm and announced != mine:
            raise self.session.bad(f"manifest PUT answered {announced}, body hashes to {mine}")
        return mine

    async def delete_manifest(self, name: str, digest: Digest | str) -> None:
        """DELETE a manifest by digest (or a tag, where the registry allows it)."""
        upstream = self.upstream_name(name)
        response = await self.session.call(
            "DELETE",
            f"/v2/{upstream}/manifests/{digest}",
            scopes=[f"repository:{upstream}:delete"],
            ok=(202, 200),
            what=f"manifest DELETE {upstream}@{digest}",
        )
        await self.session.discard(response)

    async def referrers(
        self,
        name: str,
        subject: Digest | str,
        artifact_type: str | None = None,
        *,
        tag_schema: bool = False,
    ) -> list[dict[str, Any]] | None:
        """The descriptors the referrers API lists for ``subject`` (filtered by
        ``artifact_type``, here too when the registry did not filter), or None when the
        registry has no referrers API (a 404).  With ``tag_schema``, a registry without the
        API is asked for the spec's fallback tag (``sha256-<hex>``) instead, and the answer
        is a list (empty when neither exists).  The tag is looked for with a HEAD first: most
        subjects have none, and Docker Hub (no referrers API) counts a manifest GET against
        its pull rate limit, a HEAD not, so a mirror run over many tags costs no pulls."""
        found = await self._referrers_api(name, subject, artifact_type)
        if found is not None or not tag_schema:
            return found
        tag = _referrers_tag(subject)
        try:
            if await self.head_manifest(name, tag) is None:
                return []
        except BadResponse:
            pass  # a HEAD without Docker-Content-Digest says only that it is there: GET it

        try:
            index = await self.get_manifest(name, tag, [OCI_INDEX])
        except NotFound:
            return []
        listed = index_descriptors(index.json())
        if artifact_type:
            listed = [d for d in listed if d.get("artifactType") == artifact_type]
        return listed

    async def update_referrers_tag(
        self, name: str, subject: Digest | str, descriptor: Mapping[str, Any]
    ) -> bool:
        """After pushing a manifest whose ``subject`` is ``subject``: on a registry without
        the referrers API (registry:2), add its ``descriptor`` to the fallback tag's index
        (``sha256-<hex>``), as the distribution-spec asks clients to.  False when the
        registry has the API (nothing to do) or already lists it."""
        if await self._referrers_api(name, subject, None) is not None:
            return False
        tag = _referrers_tag(subject)
        try:
            current = (await self.get_manifest(name, tag, [OCI_INDEX])).json()
        except NotFound:
            current = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        entries = [e for e in current.get("manifests") or [] if isinstance(e, dict)]
        if any(e.get("digest") == descriptor.get("digest") for e in entries):
            return False
        current["manifests"] = [*entries, dict(descriptor)]
        await self.put_manifest(name, tag, json.dumps(current).encode(), OCI_INDEX)
        return True

    async def _referrers_api(
        self, name: str, subject: Digest | str, artifact_type: str | None
    ) -> list[dict[str, Any]] | None:
        """Every page of the referrers API's answer, merged (None: a 404, no API).

        A registry may split the list over pages chained by ``Link: <...>; rel="next"``.
        Only pages on the registry's own origin are read (a next link elsewhere is where
        the credentials must not go, and is not followed, nor is one naming no URL that
        can be requested), and at most
        `MAX_REFERRER_PAGES` pages and `MAX_REFERRERS` descriptors: a registry that
        chains pages forever costs a bounded amount of time and memory, and what was read
        by then is the answer."""
        upstream = self.upstream_name(name)
        query = f"?{urlencode({'artifactType': artifact_type})}" if artifact_type else ""
        url = f"{self.session.url}/v2/{upstream}/referrers/{subject}{query}"
        what = f"referrers of {upstream}@{subject}"
        found: dict[str, dict[str, Any]] = {}
        for page in range(MAX_REFERRER_PAGES):
            try:
                response = await self.session.call(
                    "GET",
                    url,
                    scopes=self._pull(upstream),
                    headers={"Accept": OCI_INDEX},
                    what=what,
                )
            except NotFound:
                if page == 0:
                    return None
                raise self.session.bad(f"{what}: page {page + 1} answered 404") from None
            body = await self.session.collect(response, self.max_manifest_size, "referrers index")
            for descriptor in index_descriptors(self._json_object(body, "referrers index")):
                found.setdefault(descriptor["digest"], descriptor)
            if len(found) >= MAX_REFERRERS:
                log.warn(
                    "{what}: more than {limit} referrers; the first {limit} are used",
                    what=what,
                    limit=MAX_REFERRERS,
                )
                break
            following = _next_url(url, header(response.headers, "link"))
            if following is None:
                break
            problem = url_problem(following)
            if problem is not None:
                log.warn(
                    "{what}: next page link not followed ({problem}): {url}",
                    what=what,
                    problem=problem,
                    url=following[:200],
                )
                break
            if origin_of(following) != self.session.origin:
                log.warn(
                    "{what}: next page on another origin not followed: {url}",
                    what=what,
                    url=following,
                )
                break
            url = following
        else:
            log.warn(
                "{what}: more than {pages} pages; the first {pages} are used",
                what=what,
                pages=MAX_REFERRER_PAGES,
            )
        listed = list(found.values())[:MAX_REFERRERS]
        if artifact_type:
            listed = [d for d in listed if d.get("artifactType") == artifact_type]
        return listed

    # -- blobs, down

    async def blob(
        self,
        name: str,
        digest: Digest | str,
        *,
        offset: int = 0,
        length: int | None = None,
        size: int | None = None,
    ) -> BlobStream:
        """Open a blob GET (following a redirect to another origin, a CDN, without
        ``Authorization``) and return it once the headers are in; the caller streams the body
        (`BlobStream`).

        ``offset``/``length`` ask for a byte range.  Check ``blob.offset``: it is 0 when the
        registry ignored the range and sends everything.  Only a body that is the whole blob
        is verified against the digest here (``blob.whole``); a range is not, even one from
        byte 0.

        ``size`` is the blob's size as a manifest declares it (not used with ``length``).  An
        answer announcing another length is a `BadResponse` at once; a body without a length
        fails with a `BadResponse` as soon as it goes past that size, and one that ends short
        fails too (`Unavailable` when the connection closed, which may be a cut).  Without
        ``size``, a source streaming without end is read until it stops: the digest tells
        only at the end.
        """
        dgst = _as_digest(digest)
        upstream = self.upstream_name(name)
        headers = {}
        if offset > 0 or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = await self.session.call(
            "GET",
            f"/v2/{upstream}/blobs/{dgst}",
            scopes=self._pull(upstream),
            headers=headers,
            ok=(200, 206),
            what=f"blob {upstream}@{dgst}",
        )
        start = 0
        if response.code == 206:
            start = _content_range_start(header(response.headers, "content-range"))
            if start != offset:
                await self.session.discard(response)
                said = header(response.headers, "content-range")
                got = (
                    f"a range from {start}"
                    if start >= 0
                    else f"Content-Range {said[:100]!r}"
                    if said
                    else "no Content-Range"
                )
                raise self.session.bad(f"asked for bytes from {offset}, got {got}")
        announced = self._announced_digest(response)
        if announced is not None and announced != dgst:
            await self.session.discard(response)
            raise self.session.bad(f"blob GET {dgst} answered for {announced}")
        announced_length = response.length if isinstance(response.length, int) else None
        expected = size - start if size is not None and length is None else None
        if expected is not None and announced_length not in (None, expected):
            await self.session.discard(response)
            raise self.session.bad(
                f"blob {dgst}: {announced_length} bytes announced from byte {start}, "
                f"its size is {size}"
            )
        return BlobStream(
            self.session,
            response,
            dgst,
            expected if announced_length is None else announced_length,
            start,
            # No Range asked, or the registry ignored it: whatever the status says, the body
            # must be the whole blob (a 206 must not be a way around the digest check).
            whole=response.code == 200 or (offset == 0 and length is None),
        )

    async def blob_head(self, name: str, digest: Digest | str) -> int:
        """The blob's size; raises NotFound when it is not there."""
        dgst = _as_digest(digest)
        upstream = self.upstream_name(name)
        response = await self.session.call(
            "HEAD",
            f"/v2/{upstream}/blobs/{dgst}",
            scopes=self._pull(upstream),
            what=f"blob {upstream}@{dgst}",
        )
        await self.session.discard(response)
        size = _content_length(response.headers)
        if size is None:
            raise self.session.bad(f"HEAD blob {dgst} without Content-Length")
        return size

    async def blob_exists(self, name: str, digest: Digest | str) -> int | None:
        """The blob's size when the repository has it, else None."""
        try:
            return await self.blob_head(name, digest)
        except NotFound:
            return None

    async def download_blob(
        self,
        name: str,
        digest: Digest | str,
        path: str | Path,
        *,
        resume: bool = True,
        size: int | None = None,
    ) -> int:
        """Save a blob to ``path`` (written in the thread pool, hashed on the way, the file
        removed unless it hashes to ``digest``).  A body cut off mid-way (`Unavailable`) is
        resumed with a ``Range`` request from where it stopped (``retries`` times, when
        ``resume``).  A server that ignores the ``Range`` and answers 200 with the whole
        blob (RFC 7233 allows it) has the bytes the file already holds skipped as they come
        (streamed, not buffered), the whole body still checked against ``digest``.  ``size``,
        the size a manifest declares, bounds what is written (see `blob`)."""
        dgst = _as_digest(digest)
        target = Path(path)
        hasher = new_hash(dgst.algorithm)
        handle: IO[bytes] = await in_thread(self.reactor, target.open, "wb")
        ok = False
        try:
            sink = FileSink(self.reactor, handle, hasher)
            for attempt in range(self.session.retries + 1):
                blob = await self.blob(name, dgst, offset=sink.written, size=size)
                # What the file holds of this body: none when it starts where the file ends
                # (a 206, or the first attempt); else a 200 with the whole blob, the Range
                # ignored, whose start is skipped (`blob` refuses a range from elsewhere).
                held = sink.written - blob.offset
                consumer: IConsumer = sink if held == 0 else SkipFirst(sink, held)
                try:
                    # The file's hash checks what is written; a whole body read again past
                    # bytes already written is checked whole as well (`BadResponse`).
                    await blob.write_to(consumer, verify=held > 0)
                    break
                except Exception as exc:
                    sink.check()  # a write that failed (a full disk) stopped the body
                    if not isinstance(exc, Unavailable):
                        raise
                    await sink.close()
                    if not resume or attempt == self.session.retries:
                        raise
            await sink.close()
            actual = Digest(dgst.algorithm, hasher.hexdigest())
            if actual != dgst:
                raise self.session.bad(f"blob {dgst} hashes to {actual}")
            ok = True
            return sink.written
        finally:
            await in_thread(self.reactor, handle.close)
            if not ok:
                await in_thread(self.reactor, target.unlink, True)

    # -- blobs, up

    async def mount_blob(self, name: str, digest: Digest | str, from_name: str) -> bool:
        """Cross-repository mount: True when the registry linked the blob; False when it did
        not (the upload session it opened instead is cancelled)."""
        upstream, source = self.upstream_name(name), self.upstream_name(from_name)
        query = urlencode({"mount": str(digest), "from": source})
        response = await self.session.call(
            "POST",
            f"/v2/{upstream}/blobs/uploads/?{query}",
            scopes=[*self._push(upstream), f"repository:{source}:pull"],
            ok=(201, 202),
            what=f"mount {digest} from {source}",
        )
        await self.session.discard(response)
        if response.code == 201:
            return True
        location = header(response.headers, "location")
        if location:
            await self.cancel_upload(Upload(upstream, self._absolute(location)))
        return False

    async def start_upload(self, name: str) -> Upload:
        """POST a new upload session.

        Cancelled while the POST is on its way, this raises `CancelledError` at once; the
        registry may have opened the session already, and the caller never gets its
        `Upload` to cancel it, so the answer is awaited in the background (up to the
        session's ``timeout``) and the session it names is cancelled (given ``timeout`` too);
        `close` waits for that.
        """
        upstream = self.upstream_name(name)
        opening = Deferred.fromCoroutine(self._open_session(upstream))
        opened: list[Upload] = []
        answer: Deferred[Upload] = Deferred(lambda _: self._cancel_once_opened(opening, opened))

        def settle(result: Upload | Failure) -> None:
            if isinstance(result, Upload):
                opened.append(result)
            if answer.called:
                return  # the caller left: `_cancel_once_opened` has it
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        opening.addBoth(settle)
        return await answer

    async def _open_session(self, upstream: str) -> Upload:
        response = await self.session.call(
            "POST",
            f"/v2/{upstream}/blobs/uploads/",
            scopes=self._push(upstream),
            ok=(202,),
            what=f"upload to {upstream}",
        )
        await self.session.discard(response)
        return Upload(upstream, self._upload_location(response))

    def _cancel_once_opened(self, opening: Deferred[Upload], opened: list[Upload]) -> None:
        async def clean_up() -> None:
            if not await within_time(opening, self.session.timeout, self.reactor):
                opening.cancel()
            if opened:
                # One try, within the timeout too: `close` waits for this, and a registry
                # that does not answer must not hold it for every retry.
                deleting = Deferred.fromCoroutine(self._cancel_abandoned(opened[0]))
                if not await within_time(deleting, self.session.timeout, self.reactor):
                    deleting.cancel()

        task = Deferred.fromCoroutine(clean_up())
        self._cleanups.add(task)
        task.addBoth(lambda _: self._cleanups.discard(task))

    async def resume_upload(self, name: str, location: str) -> Upload:
        """An upload session opened earlier (perhaps by another process), with the offset the
        registry holds (its ``Range``)."""
        upload = Upload(self.upstream_name(name), self._absolute(location))
        await self.upload_status(upload)
        return upload

    async def upload_status(self, upload: Upload) -> int:
        """GET the session: sets and returns ``upload.offset`` (bytes the registry holds)."""
        response = await self.session.call(
            "GET",
            upload.location,
            scopes=self._push(upload.name),
            ok=(204, 200),
            what="upload status",
        )
        await self.session.discard(response)
        upload.offset = _range_end(header(response.headers, "range"))
        upload.location = self._upload_location(response, upload.location)
        return upload.offset

    async def upload_chunk(self, upload: Upload, data: bytes) -> None:
        """PATCH ``data`` at ``upload.offset`` (``Content-Range``); advances the session from
        the registry's answer.  Not retried here (see `upload_blob`)."""
        await self._patch(upload, _bytes_body(data), len(data))

    async def _patch(self, upload: Upload, body: BodyFactory, length: int) -> None:
        start = upload.offset
        response = await self.session.call(
            "PATCH",
            upload.location,
            scopes=self._push(upload.name),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + length - 1}",
            },
            body=body,
            ok=(202, 204),
            what="upload chunk",
        )
        await self.session.discard(response)
        upload.location = self._upload_location(response, upload.location)
        upload.offset = _range_end(header(response.headers, "range"))

    async def finish_upload(
        self, upload: Upload, digest: Digest | str, body: BodyFactory | None = None
    ) -> Digest:
        """PUT ``?digest=`` (with the last bytes as ``body``, or none): the blob is committed."""
        dgst = _as_digest(digest)
        separator = "&" if "?" in upload.location else "?"
        response = await self.session.call(
            "PUT",
            f"{upload.location}{separator}{urlencode({'digest': str(dgst)})}",
            scopes=self._push(upload.name),
            headers={"Content-Type": "application/octet-stream"},
            body=body,
            ok=(201,),
            what=f"upload commit {dgst}",
            retry=body is None,
        )
        await self.session.discard(response)
        return dgst

    async def cancel_upload(self, upload: Upload) -> None:
        """DELETE the session at its latest ``location`` (registry:2 refuses an older one).

        A 404 ``BLOB_UPLOAD_UNKNOWN`` is not an error: the session is gone either way.  Any
        other 404 is raised: the registry did not say the session is gone.  (registry:2 answers
        ``BLOB_UPLOAD_INVALID`` for a location whose state no longer matches the bytes it holds,
        as after a cut-off PUT or PATCH, and removes the session while refusing; a request of
        its own still writing may then leave bytes behind.)"""
        try:
            response = await self.session.call(
                "DELETE",
                upload.location,
                # registry:2 asks a token for ``delete`` for any DELETE, an upload's too; a
                # token server grants what it may of what is asked.
                scopes=[f"repository:{upload.name}:pull,push,delete"],
                ok=(204, 200, 202),
                what="upload cancel",
            )
        except NotFound as exc:
            if exc.code == "BLOB_UPLOAD_UNKNOWN":
                return
            raise
        await self.session.discard(response)

    async def upload_blob(
        self,
        name: str,
        source: bytes | str | Path,
        digest: Digest | str | None = None,
        *,
        chunk_size: int | None = None,
        upload: Upload | None = None,
    ) -> Digest:
        """Upload bytes or a file; return its digest.

        Monolithic (one PUT) for bytes, or for a file whose ``digest`` is given, when
        ``chunk_size`` is None; else PATCH chunks of ``chunk_size`` (the whole file in one
        PATCH when None) while the digest is computed, then PUT ``?digest=``; a given
        ``digest`` is checked against it before the commit.  Pass ``upload`` to carry on a
        session from earlier (`resume_upload`).

        A chunk cut off mid-way (`Unavailable`) is resumed from the offset the registry
        reports.  A registry that refuses to resume (``BLOB_UPLOAD_INVALID``, as registry:2
        answers after a cut request, or ``BLOB_UPLOAD_UNKNOWN``, on the status GET or on the
        resumed PATCH) gets the session cancelled (best effort) and the upload starts again
        from byte 0 in a fresh one; ``upload``, when given, then names the new session.  A
        monolithic PUT that fails `Unavailable` is sent again whole (bytes, or the file read
        from its start) in a fresh session, the old one cancelled (best effort), after the
        session's backoff.  Either way each failure counts against ``retries``.

        A ``digest`` the source does not hash to is `Rejected` with code ``DIGEST_INVALID``
        on either path.  A session this call opened is deleted when the call fails or is
        cancelled; one passed as ``upload`` is left to the caller.
        """
        if isinstance(source, bytes):
            data = source
            dgst = _as_digest(digest) if digest is not None else digest_of(data)
            actual = digest_of(data, dgst.algorithm)
            if actual != dgst:  # refused before anything is sent
                raise Rejected(
                    None, f"the bytes given hash to {actual}, not {dgst}", "DIGEST_INVALID"
                )
            if chunk_size is None and upload is None:
                return await self._upload_whole(name, dgst, _bytes_body(data))
            path, size = None, len(data)
        else:
            path, data = Path(source), b""
            size = (await in_thread(self.reactor, path.stat)).st_size
            if digest is not None and chunk_size is None and upload is None and size > 0:
                # Monolithic: one PUT with the file as its body, hashed as it is read; its
                # last bytes go out only once the hash is known to be ``digest`` (else the
                # request is cut short, `Rejected`): no registry commits a wrong body.
                dgst = _as_digest(digest)
                return await self._upload_whole(
                    name, dgst, lambda: FileSource(self.reactor, path, 0, size, expected=dgst)
                )
        expected = _as_digest(digest) if digest is not None else None
        if upload is not None:  # the caller's session: theirs to resume or cancel
            return await self._upload_chunks(upload, path, data, size, expected, chunk_size)
        upload = await self.start_upload(name)
        async with self._abandoned_unless_done(upload):
            return await self._upload_chunks(upload, path, data, size, expected, chunk_size)

    async def _upload_whole(self, name: str, digest: Digest, body: BodyFactory) -> Digest:
        """POST a session and PUT the whole blob as ``body``, a factory that makes the body
        afresh (from memory, or from the file's start): a PUT without a usable answer
        (`Unavailable`: cut, reset, 5xx) is sent again in a new session, ``retries`` times,
        the one it went to cancelled (best effort; a refusal is kept in
        ``uncancelled_uploads``)."""
        failures = 0
        while True:
            upload = await self.start_upload(name)
            async with self._abandoned_unless_done(upload):
                try:
                    return await self.finish_upload(upload, digest, body)
                except Unavailable:
                    failures += 1
                    if failures > self.session.retries:
                        raise
            await self._give_up(upload)
            await self.session.pause(failures - 1)

    async def _upload_chunks(
        self,
        upload: Upload,
        path: Path | None,
        data: bytes,
        size: int,
        expected: Digest | None,
        chunk_size: int | None,
    ) -> Digest:
        """PATCH the source from ``upload.offset`` on, hashing it, then PUT ``?digest=``."""
        algorithm = expected.algorithm if expected is not None else "sha256"
        hasher = new_hash(algorithm)
        hashed = 0  # bytes of the source in `hasher`: always the session's confirmed prefix
        step = chunk_size or size or 1
        failures = 0
        resuming = False  # the last PATCH failed: the next one resumes the session
        while upload.offset < size or size == 0:
            if upload.offset > hashed:  # resumed: the registry holds more than we hashed
                hasher.update(await self._read(path, data, hashed, upload.offset - hashed))
                hashed = upload.offset
            start = upload.offset
            length = min(step, size - start)
            if length == 0:
                break
            sending: list[Any] = []  # the hasher of the attempt that was sent last
            body = self._source(path, data, start, length, hasher, sending)
            try:
                await self._patch(upload, body, length)
            except Unavailable:
                failures += 1
                if failures > self.session.retries:
                    raise
                try:
                    await self.upload_status(upload)
                except (NotFound, Rejected) as exc:
                    if not _resume_refused(exc):
                        raise
                    await self._restart(upload)
                    hasher, hashed, resuming = new_hash(algorithm), 0, False
                    continue
                resuming = True
                continue
            except (NotFound, Rejected) as exc:
                if not (resuming and _resume_refused(exc)):
                    raise
                await self._restart(upload)
                hasher, hashed, resuming = new_hash(algorithm), 0, False
                continue
            resuming = False
            if upload.offset == start + length and sending:
                hasher, hashed = sending[-1], start + length
        if upload.offset > hashed:
            hasher.update(await self._read(path, data, hashed, upload.offset - hashed))
        actual = Digest(algorithm, hasher.hexdigest())
        if expected is not None and actual != expected:
            # What the registry answers a monolithic upload with a wrong digest.
            with contextlib.suppress(ClientError):
                await self.cancel_upload(upload)
            what = "the bytes given" if path is None else str(path)
            raise Rejected(None, f"{what} hashes to {actual}, not {expected}", "DIGEST_INVALID")
        return await self.finish_upload(upload, actual)

    async def _restart(self, upload: Upload) -> None:
        """Cancel the session the registry refused to resume (`_give_up`) and point
        ``upload`` at a fresh one, from byte 0."""
        await self._give_up(Upload(upload.name, upload.location, upload.offset))
        fresh = await self.start_upload(upload.name)
        upload.location, upload.offset = fresh.location, 0

    async def copy_blob_from(
        self,
        source: RegistryClient,
        source_name: str,
        name: str,
        digest: Digest | str,
        *,
        size: int | None = None,
    ) -> int:
        """Stream a blob from another registry (or repository) into this one, through memory
        in constant space: the source body is the upload's body, hashed on the way, its last
        bytes held back until the whole of it hashed to ``digest``.  With ``size`` (what a
        manifest declares), a source sending more fails the copy as soon as it does (see
        `blob`).  A source body cut off mid-way (`Unavailable`) is read on with a ``Range``
        request from the byte it reached, into the same upload, up to the source's
        ``retries`` times (a source answering the range with the whole blob has what was
        sent already dropped).  A failure of the source is raised as the source's error (its
        class), the message naming the source; the upload is cancelled and nothing is
        committed."""
        dgst = _as_digest(digest)
        blob = await source.blob(source_name, dgst, size=size)
        try:
            upload = await self.start_upload(name)
        except BaseException:
            blob.abort()
            raise
        whole = size if size is not None else (blob.length if blob.whole else None)

        def reopen(offset: int) -> Deferred[BlobStream]:
            return Deferred.fromCoroutine(source.blob(source_name, dgst, offset=offset, size=whole))

        pipes: list[PipeSource] = []

        def make() -> PipeSource:
            pipes.append(PipeSource(blob, dgst, reopen=reopen, retries=source.session.retries))
            return pipes[-1]

        body = single_use(make, "a piped blob body")
        try:
            async with self._abandoned_unless_done(upload):
                await self.finish_upload(upload, dgst, body)
        except ClientError as exc:
            if pipes and pipes[0].error is exc:
                raise _named(exc, f"source {source.url}, blob {source_name}@{dgst}") from None
            raise
        return pipes[0].received if pipes else 0

    @contextlib.asynccontextmanager
    async def _abandoned_unless_done(self, upload: Upload) -> AsyncIterator[None]:
        """Cancel ``upload`` when the block fails or is cancelled (the caller interrupted):
        the registry would otherwise keep the partial bytes until it purges old uploads.
        Best effort: a registry that cannot be reached keeps them anyway."""
        try:
            yield
        except BaseException:
            await self._cancel_abandoned(upload)
            raise

    async def _cancel_abandoned(self, upload: Upload) -> None:
        try:
            await self.cancel_upload(upload)
        except Exception as exc:
            self._not_cancelled(upload, exc)

    async def _give_up(self, upload: Upload) -> None:
        """Cancel a session the call goes on without (a fresh one replaces it): a refusal is
        kept in ``uncancelled_uploads``; the call being cancelled meanwhile is not swallowed."""
        try:
            await self.cancel_upload(upload)
        except ClientError as exc:
            self._not_cancelled(upload, exc)

    def _not_cancelled(self, upload: Upload, error: Exception) -> None:
        self.uncancelled_uploads.append(upload.location)
        log.warn(
            "upload {location} could not be cancelled: {error}",
            location=upload.location,
            error=error,
        )

    def _source(
        self,
        path: Path | None,
        data: bytes,
        start: int,
        length: int,
        base: Any,
        sending: list[Any],
    ) -> BodyFactory:
        """A body factory for one chunk; each body hashes into a fresh copy of ``base``
        (a 401 makes the session send it again), the latest kept in ``sending``."""

        def make() -> Any:
            hasher = base.copy()
            sending.append(hasher)
            if path is None:
                chunk = data[start : start + length]
                hasher.update(chunk)
                return FileBodyProducer_from(chunk)
            return FileSource(self.reactor, path, start, length, hasher)

        return make

    async def _read(self, path: Path | None, data: bytes, start: int, length: int) -> bytes:
        if path is None:
            return data[start : start + length]

        def read() -> bytes:
            with open(path, "rb") as handle:
                handle.seek(start)
                return handle.read(length)

        result: bytes = await in_thread(self.reactor, read)
        return result

    # -- helpers

    def _absolute(self, location: str) -> str:
        return urljoin(self.url + "/", location)

    def _upload_location(self, response: IResponse, current: str | None = None) -> str:
        location = header(response.headers, "location")
        if not location:
            if current is not None:
                return current
            raise self.session.bad("upload answer without a Location")
        return self._absolute(location)

    def _json_object(self, body: bytes, what: str) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError:
            raise self.session.bad(f"{what} is not JSON") from None
        if not isinstance(data, dict):
            raise self.session.bad(f"{what} is not a JSON object")
        return data

    def _announced_digest(self, response: IResponse) -> Digest | None:
        value = header(response.headers, "docker-content-digest")
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except RegistryError:
            raise self.session.bad(f"unusable Docker-Content-Digest {value[:100]!r}") from None


def _named(error: ClientError, where: str) -> ClientError:
    """``error`` (same class, same fields) with its message saying where it happened."""
    named = type(error).__new__(type(error))
    named.__dict__.update(error.__dict__)
    named.args = (f"{where}: {error}",)
    named.reason = f"{where}: {error.reason}"
    return named


def FileBodyProducer_from(data: bytes) -> FileBodyProducer:
    import io

    return FileBodyProducer(io.BytesIO(data))


def _bytes_body(data: bytes) -> BodyFactory:
    return lambda: FileBodyProducer_from(data)


def _referrers_tag(subject: Digest | str) -> str:
    """The referrers tag schema's tag for ``subject``: ``<algorithm>-<hex>``."""
    dgst = _as_digest(subject)
    return f"{dgst.algorithm}-{dgst.hex}"


# What a registry answers for a session it will not carry on: registry:2 after a request of it
# was cut ("upload resumed at wrong offset", a 404), or one it does not know (any more).
_RESUME_REFUSED = frozenset({"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"})


def _resume_refused(error: ClientError) -> bool:
    """Whether ``error`` (a 4xx) says the upload session cannot be resumed: one of its codes,
    not only the first (registry:2 may list ``UNKNOWN`` before the one that says why)."""
    codes = {error.code, *(code for code, _ in error.errors)}
    return bool(codes & _RESUME_REFUSED)


def _range_end(value: str | None) -> int:
    """Bytes held according to an upload's ``Range: 0-<last>`` (0 when absent)."""
    match = re.match(r"\s*(?:bytes=)?(\d+)-(\d+)", value or "")
    return int(match.group(2)) + 1 if match else 0


def index_descriptors(index: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The well-formed descriptors (a ``digest`` that parses, a ``mediaType``, an integer
    ``size``) of an image index's ``manifests``; the rest are left out."""
    found: list[dict[str, Any]] = []
    manifests = index.get("manifests")
    for entry in manifests if isinstance(manifests, list) else []:
        if not isinstance(entry, dict):
            continue
        digest, media_type, size = entry.get("digest"), entry.get("mediaType"), entry.get("size")
        if not isinstance(digest, str) or not isinstance(media_type, str):
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            continue
        try:
            Digest.parse(digest)
        except RegistryError:
            continue
        found.append(entry)
    return found


def _not_a_manifest(body: bytes) -> str | None:
    """
    Why ``body`` cannot be a manifest of any kind (None when it can be): a JSON object with
    ``schemaVersion`` 2 (OCI and Docker manifests, indexes, artifacts) or 1 (Docker's old
    schema, still found on registries).  Deliberately no more than that: what an upstream
    serves is passed on as it is, and the digest check has already been made.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(data, dict):
        return "not a JSON object"
    version = data.get("schemaVersion")
    if type(version) is not int or version not in (1, 2):
        return f"schemaVersion {version!r}"[:80]
    if version == 2 and not ({"config", "manifests", "layers"} & data.keys()):
        return "no config, layers or manifests"
    return None


def _sniff_media_type(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        media_type = data.get("mediaType")
        if isinstance(media_type, str):
            return media_type
        if data.get("schemaVersion") == 1:
            return DOCKER_SCHEMA1_SIGNED if "signatures" in data else DOCKER_SCHEMA1
    return None


__all__ = [
    "BlobStream",
    "ClientError",
    "FileSink",
    "Manifest",
    "Page",
    "RegistryClient",
    "Upload",
]
