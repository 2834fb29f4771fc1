"""
The client a pull-through cache uses to talk to one upstream registry (Docker Hub or any other).

It does the registry-client chores so the caching stores only see content or an `UpstreamError`:
the ``/v2/`` challenge, Bearer tokens per repository scope (cached, shared, renewed once on a
401) or Basic credentials, Docker Hub's ``library/`` names, the manifest ``Accept`` list, digest
checks, rate-limit headers, timeouts and redirects.

Redirects are followed here rather than by treq because a blob GET on Docker Hub is redirected
to a CDN on another host, and ``Authorization`` must never travel with a redirect: treq's
redirect agents would forward it.

Whom we trust with credentials: the configured username and password, and the tokens bought
with them, go only to the token realm that the upstream's own origin (``remoteurl``: scheme,
host and port) announced in a challenge, and to that origin itself.  A redirect target (a CDN)
that answers 401 gets nothing: its challenge is not learned, no token is fetched for it, and
the request fails as an upstream error.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import re
from collections.abc import Mapping
from http.cookiejar import CookiePolicy
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlencode, urljoin, urlsplit

import attrs
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse

from registry.api import mediatypes
from registry.api.digests import Digest, digest_of
from registry.api.errors import RegistryError
from registry.proxy._inflight import Inflight
from registry.proxy.body import BodyRelay, Collector, ConsumerWriter
from registry.proxy.challenge import Challenge, pick_challenge
from registry.proxy.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from registry.proxy.tokens import MAX_TOKENS, TokenCache, TokenKey, clamp_expires_in

DOCKER_HUB_HOSTS = frozenset(
    {"registry-1.docker.io", "docker.io", "index.docker.io", "registry.hub.docker.com"}
)
DEFAULT_MAX_MANIFEST_SIZE = 4 * 1024 * 1024 + 65536
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_SMALL_BODY = 64 * 1024
_LIST_BODY = 8 * 1024 * 1024  # a tag list page
_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

Origin = tuple[str, str, int]
Method = Literal["GET", "HEAD"]


def origin_of(url: str) -> Origin:
    """(scheme, host, port) with default ports filled in: what "same origin" compares."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, (parts.hostname or "").lower(), port)


def load_trust_root(ca_bundle: str | Path) -> Any:
    """Every certificate of a PEM bundle as the only trusted roots (this replaces the platform
    store: a private upstream's CA is the one that should vouch for it)."""
    pems = _CERT_RE.findall(Path(ca_bundle).read_bytes())
    if not pems:
        raise ValueError(f"no PEM certificate in {ca_bundle}")
    certificates = [ssl.Certificate.loadPEM(pem) for pem in pems]
    return ssl.trustRootFromCertificates(certificates)


class _NoCookies(CookiePolicy):
    """Registries need no cookies; a CDN's cookies must not ride along to anything else."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: Any, request: Any) -> bool:
        return False

    def path_return_ok(self, path: Any, request: Any) -> bool:
        return False


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _header(headers: Headers, name: str) -> str | None:
    values = headers.getRawHeaders(name)
    return values[-1] if values else None


def _content_length(headers: Headers) -> int | None:
    """``Content-Length`` of a HEAD answer (twisted keeps it among the headers only for HEAD;
    for a body it becomes ``response.length``)."""
    value = _header(headers, "content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _content_range_start(value: str | None) -> int:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else -1


def _leading_int(value: str) -> int | None:
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match else None


@attrs.frozen
class RateLimitStatus:
    """Last ``ratelimit-*`` headers seen (Docker Hub: ``76;w=21600``: 76 left in 6 hours)."""

    limit: int | None
    remaining: int | None
    window: int | None
    observed_at: float


@attrs.frozen
class UpstreamManifest:
    """A manifest as the upstream serves it.  ``body`` is None for a HEAD; ``size`` may be None
    for a HEAD without ``Content-Length``."""

    digest: Digest
    media_type: str
    size: int | None
    body: bytes | None
    headers: Headers


class UpstreamBlob:
    """An open upstream blob response whose body has not been read yet.

    Read it exactly once: `deliver` (a protocol, Twisted style), `write_to` (an IConsumer) or
    `read` (small blobs).  Or `abort` it.  The body ends in the protocol's ``connectionLost``
    with ``ResponseDone`` only when it is complete and (with ``verify``) hashes to ``digest``;
    otherwise with an `UpstreamError`.  A caller that keeps an unread blob leaks a connection.
    """

    def __init__(
        self,
        client: UpstreamClient,
        response: IResponse,
        digest: Digest,
        length: int | None,
        offset: int = 0,
    ) -> None:
        self._client = client
        self._response = response
        self.digest = digest
        self.length = length  # bytes in this response (None: unknown)
        self.offset = offset  # where in the blob this body starts
        self.headers: Headers = response.headers
        self._relay: BodyRelay | None = None

    @property
    def received(self) -> int:
        return self._relay.received if self._relay is not None else 0

    def deliver(self, protocol: Protocol, *, verify: bool = True) -> None:
        """Stream the body into ``protocol``.

        ``protocol.transport`` is an `IPushProducer`: pause it to apply back-pressure to the
        upstream socket (the idle timeout does not run while paused), stop it to abort.
        Set ``verify=False`` when the consumer hashes anyway (a cache writer does).
        """
        if self._relay is not None:
            raise RuntimeError("an upstream blob body can be read only once")
        client = self._client

        def count_bytes(n: int) -> None:
            client.bytes_received += n

        def count_error() -> None:
            client.errors += 1

        self._relay = BodyRelay(
            protocol,
            reactor=client.reactor,
            digest=self.digest,
            length=self.length,
            verify=verify and self.offset == 0,
            idle_timeout=client.timeout,
            on_bytes=count_bytes,
            on_error=count_error,
        )
        self._response.deliverBody(self._relay)

    async def write_to(self, consumer: IConsumer, *, verify: bool = True) -> int:
        """Stream the body into ``consumer`` (registered as a push producer on it) and return
        the byte count.  Cancelling the awaiting coroutine aborts the upstream connection."""
        writer = ConsumerWriter(consumer, self.abort)
        self.deliver(writer, verify=verify)
        return await writer.done

    async def read(
        self, max_size: int = DEFAULT_MAX_MANIFEST_SIZE, *, verify: bool = True
    ) -> bytes:
        """The whole body, for small blobs such as image configs."""
        if self.length is not None and self.length > max_size:
            self.abort()
            raise UpstreamBadResponse(None, f"blob of {self.length} bytes over {max_size}")
        collector = Collector(max_size, "blob")
        self.deliver(collector, verify=verify)
        return await collector.done

    def abort(self) -> None:
        """Drop the connection now (the body, read or not, is abandoned)."""
        if self._relay is None:
            self.deliver(Protocol(), verify=False)
        assert self._relay is not None
        self._relay.abort(UpstreamUnavailable(None, "aborted by the caller"))


class UpstreamClient:
    """A client for one upstream registry.

    ``clock`` measures token lifetimes (inject a `Clock` in tests); network timeouts run on
    ``reactor``.  ``timeout`` bounds connect-to-first-byte of every exchange and the silence
    allowed inside a blob body.  ``docker_hub_library`` maps one-component names to
    ``library/<name>`` upstream; by default only when the host is Docker Hub.
    """

    def __init__(
        self,
        reactor: Any,
        remote_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_bundle: str | Path | None = None,
        timeout: float = 30.0,
        pool: HTTPConnectionPool | None = None,
        clock: IReactorTime | None = None,
        docker_hub_library: bool | None = None,
        max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE,
        user_agent: str = "txregistry",
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.reactor = reactor
        self.remote_url = remote_url.rstrip("/")
        self.origin = origin_of(self.remote_url)
        if self.origin[0] not in ("http", "https") or not self.origin[1]:
            raise ValueError(f"not an http(s) URL: {remote_url!r}")
        self.timeout = timeout
        self.max_manifest_size = max_manifest_size
        self._credentials = (username, password or "") if username else None
        self._user_agent = user_agent
        if docker_hub_library is None:
            docker_hub_library = self.origin[1] in DOCKER_HUB_HOSTS
        self.docker_hub_library = docker_hub_library
        self._owns_pool = pool is None
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 8  # concurrent fills to one CDN host
        self.pool = pool
        trust_root = load_trust_root(ca_bundle) if ca_bundle is not None else None
        policy: IPolicyForHTTPS = BrowserLikePolicyForHTTPS(trustRoot=trust_root)
        agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout, pool=self.pool)
        self._http = HTTPClient(agent, cookiejar=IndexableCookieJar(_NoCookies()))
        self.tokens = TokenCache(clock if clock is not None else reactor, max_tokens)
        self._challenge: Challenge | None = None
        self._challenge_known = False
        self._ping: Inflight[str, Challenge | None] = Inflight()
        # Observations, for metrics and tests.
        self.requests = 0
        self.token_requests = 0
        self.bytes_received = 0
        self.errors = 0
        self.rate_limit: RateLimitStatus | None = None

    # -- public API

    def upstream_name(self, name: str) -> str:
        """The repository name upstream (``alpine`` → ``library/alpine`` on Docker Hub)."""
        if self.docker_hub_library and "/" not in name:
            return f"library/{name}"
        return name

    async def manifest(self, name: str, reference: str, method: Method = "GET") -> UpstreamManifest:
        """Fetch (GET) or revalidate (HEAD: not counted by Docker Hub's rate limit) a manifest
        by tag or digest.  A GET body is checked against ``Docker-Content-Digest`` and against
        ``reference`` when that is a digest."""
        upstream = self.upstream_name(name)
        wanted = Digest.parse(reference) if Digest.is_digest(reference) else None
        response = await self._registry_request(
            method,
            upstream,
            f"/v2/{upstream}/manifests/{reference}",
            {"Accept": mediatypes.MANIFEST_ACCEPT_HEADER},
        )
        if response.code != 200:
            await self._fail(response, method, f"manifest {upstream}:{reference}")
        announced = self._announced_digest(response)
        media_type = _media_type(_header(response.headers, "content-type"))
        if method == "HEAD":
            await self._discard(response)
            if announced is not None and wanted is not None and announced != wanted:
                raise self._bad(f"HEAD {reference} answered for {announced}")
            digest = announced or wanted
            if digest is None:
                raise self._bad(f"HEAD manifest {upstream}:{reference} without a digest")
            return UpstreamManifest(
                digest, media_type, _content_length(response.headers), None, response.headers
            )
        body = await self._collect(response, self.max_manifest_size, "manifest")
        self.bytes_received += len(body)
        for expected in (announced, wanted):
            if expected is not None:
                actual = digest_of(body, expected.algorithm)
                if actual != expected:
                    raise self._bad(f"manifest {upstream}:{reference} hashes to {actual}")
        digest = announced or wanted or digest_of(body)
        if media_type in ("", "application/json", "text/plain", "application/octet-stream"):
            media_type = _sniff_media_type(body) or media_type
        return UpstreamManifest(digest, media_type, len(body), body, response.headers)

    async def blob(self, name: str, digest: Digest | str, *, offset: int = 0) -> UpstreamBlob:
        """Open a blob GET (following a CDN redirect without ``Authorization``) and return it
        once the headers are in; the body is streamed by the caller (`UpstreamBlob`).

        ``offset`` > 0 asks for the rest of the blob from there (to resume a fill).  Check
        ``blob.offset``: it is 0 when the upstream ignored the range and sends everything.
        A partial body cannot be verified here; the caller's hasher must carry on.
        """
        dgst = digest if isinstance(digest, Digest) else Digest.parse(digest)
        upstream = self.upstream_name(name)
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        response = await self._registry_request(
            "GET", upstream, f"/v2/{upstream}/blobs/{dgst}", headers
        )
        start = 0
        if offset > 0 and response.code == 206:
            start = _content_range_start(_header(response.headers, "content-range"))
            if start != offset:
                await self._discard(response)
                raise self._bad(f"asked for bytes from {offset}, got a range from {start}")
        elif response.code != 200:
            await self._fail(response, "GET", f"blob {upstream}@{dgst}")
        announced = self._announced_digest(response)
        if announced is not None and announced != dgst:
            await self._discard(response)
            raise self._bad(f"blob GET {dgst} answered for {announced}")
        length = response.length if isinstance(response.length, int) else None
        return UpstreamBlob(self, response, dgst, length, start)

    async def blob_head(self, name: str, digest: Digest | str) -> int:
        """The blob's size upstream; raises UpstreamNotFound when it is not there."""
        dgst = digest if isinstance(digest, Digest) else Digest.parse(digest)
        upstream = self.upstream_name(name)
        response = await self._registry_request(
            "HEAD", upstream, f"/v2/{upstream}/blobs/{dgst}", {}
        )
        if response.code != 200:
            await self._fail(response, "HEAD", f"blob {upstream}@{dgst}")
        await self._discard(response)
        size = _content_length(response.headers)
        if size is None:
            raise self._bad(f"HEAD blob {dgst} without Content-Length")
        return size

    async def tags(
        self, name: str, n: int | None = None, last: str | None = None
    ) -> tuple[list[str], bool]:
        """One page of the repository's tag list upstream (``n`` and ``last`` as the
        distribution-spec has them) and whether the upstream announced a next page."""
        upstream = self.upstream_name(name)
        query = urlencode(
            {k: v for k, v in (("n", None if n is None else str(n)), ("last", last)) if v}
        )
        path = f"/v2/{upstream}/tags/list" + (f"?{query}" if query else "")
        response = await self._registry_request(
            "GET", upstream, path, {"Accept": "application/json"}
        )
        if response.code != 200:
            await self._fail(response, "GET", f"tag list of {upstream}")
        data = self._json_object(await self._collect(response, _LIST_BODY, "tag list"), "tag list")
        tags = data.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise self._bad("tag list without a list of tags")
        link = _header(response.headers, "link") or ""
        return tags, 'rel="next"' in link

    async def referrers(self, name: str, subject: Digest) -> list[dict[str, Any]] | None:
        """The descriptors the upstream's referrers API lists for ``subject``, or None when
        the upstream has no referrers API (a 404: then the ``sha256-<hex>`` tag schema is
        the way to ask)."""
        upstream = self.upstream_name(name)
        response = await self._registry_request(
            "GET",
            upstream,
            f"/v2/{upstream}/referrers/{subject}",
            {"Accept": mediatypes.OCI_IMAGE_INDEX},
        )
        if response.code == 404:
            await self._discard(response)
            return None
        if response.code != 200:
            await self._fail(response, "GET", f"referrers of {upstream}@{subject}")
        body = await self._collect(response, self.max_manifest_size, "referrers index")
        return index_descriptors(self._json_object(body, "referrers index"))

    def _json_object(self, body: bytes, what: str) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError:
            raise self._bad(f"{what} is not JSON") from None
        if not isinstance(data, dict):
            raise self._bad(f"{what} is not a JSON object")
        return data

    async def ping(self) -> int:
        """
        ``GET /v2/`` without credentials (readiness checks): the upstream's status, 401 being
        the usual healthy answer.  UpstreamError when it does not answer; the caller bounds
        the wait by cancelling.
        """
        response, _ = await self._exchange("GET", self.remote_url + "/v2/", {}, None)
        await self._discard(response)
        return int(response.code)

    async def close(self) -> None:
        """Close idle pooled connections (only when the pool is ours)."""
        if self._owns_pool:
            await self.pool.closeCachedConnections()

    # -- auth

    async def _registry_request(
        self, method: str, upstream: str, path: str, headers: Mapping[str, str]
    ) -> IResponse:
        """One registry call: authorised, redirected, and retried once on a 401 with a fresh
        token (the upstream may drop tokens before their announced expiry)."""
        url = self.remote_url + path
        await self._ensure_challenge()
        for attempt in range(2):
            key, authorization = await self._authorization(upstream)
            response, answered_by = await self._exchange(method, url, headers, authorization)
            if response.code == 401 and answered_by != self.origin:
                await self._discard(response)
                raise self._foreign_challenge(answered_by)
            if response.code != 401 or attempt == 1:
                return response
            before = self._challenge
            self._learn_challenge(response)
            if key is None and self._challenge == before:
                return response  # Basic or nothing, and nothing new to try
            if key is not None:
                self.tokens.invalidate(key, (authorization or "").removeprefix("Bearer "))
            await self._discard(response)
        raise AssertionError("unreachable")

    def _foreign_challenge(self, origin: Origin) -> UpstreamUnauthorized:
        """A 401 from another origin than the upstream's (a redirect target): an error for this
        request, never a reason to send credentials or tokens anywhere else."""
        self.errors += 1
        where = "{}://{}:{}".format(*origin)
        return UpstreamUnauthorized(
            401, f"{where} (not the upstream) asked for authentication; nothing was sent to it"
        )

    def _learn_challenge(self, response: IResponse) -> None:
        """Called only for a 401 from the upstream's own origin."""
        challenge = pick_challenge(response.headers.getRawHeaders("www-authenticate", []))
        if challenge is not None:
            self._challenge = challenge
            self._challenge_known = True

    async def _ensure_challenge(self) -> None:
        if not self._challenge_known:
            self._challenge = await self._ping.run("ping", self._fetch_challenge)
            self._challenge_known = True

    async def _fetch_challenge(self) -> Challenge | None:
        response, answered_by = await self._exchange("GET", self.remote_url + "/v2/", {}, None)
        if response.code >= 500 or response.code == 429:
            await self._fail(response, "GET", "/v2/")
        await self._discard(response)
        if response.code == 401 and answered_by != self.origin:
            raise self._foreign_challenge(answered_by)
        if response.code == 401:
            return pick_challenge(response.headers.getRawHeaders("www-authenticate", []))
        return None

    def _basic(self) -> str | None:
        if self._credentials is None:
            return None
        user, password = self._credentials
        raw = f"{user}:{password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    async def _authorization(self, upstream: str) -> tuple[TokenKey | None, str | None]:
        """(token cache key or None, the ``Authorization`` value or None)."""
        challenge = self._challenge
        if challenge is None:
            return None, None
        if challenge.scheme == "basic":
            return None, self._basic()
        realm = challenge.realm
        if not realm:
            raise self._bad("Bearer challenge without a realm")
        key: TokenKey = (realm, challenge.service or "", f"repository:{upstream}:pull")
        token = await self.tokens.get(key, lambda: self._fetch_token(key))
        return key, f"Bearer {token.value}"

    async def _fetch_token(self, key: TokenKey) -> tuple[str, int, str | None]:
        realm, service, scope = key
        query = urlencode({k: v for k, v in (("service", service), ("scope", scope)) if v})
        url = realm + ("&" if "?" in realm else "?") + query
        headers = {}
        basic = self._basic()
        if basic is not None:
            headers["Authorization"] = basic
        self.token_requests += 1
        # The realm may be another host (auth.docker.io): the upstream's own origin named it,
        # so credentials are meant for it.  No redirect is followed from here.
        response = await self._send("GET", url, headers)
        if response.code != 200:
            await self._fail(response, "GET", f"token for {scope}")
        body = await self._collect(response, _SMALL_BODY, "token response")
        try:
            data = json.loads(body)
        except ValueError:
            raise self._bad("token response is not JSON") from None
        if not isinstance(data, dict):
            raise self._bad("token response is not a JSON object")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise self._bad("token response without a token")
        issued_at = data.get("issued_at")
        return (
            token,
            clamp_expires_in(data.get("expires_in")),
            issued_at if isinstance(issued_at, str) else None,
        )

    # -- the wire

    async def _exchange(
        self, method: str, url: str, headers: Mapping[str, str], authorization: str | None
    ) -> tuple[IResponse, Origin]:
        """Send, following redirects ourselves; return the answer and the origin that gave it.

        ``Authorization`` goes with the first request only, and only to the upstream's origin:
        a redirect target never sees it, whatever its host."""
        for hop in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization is not None and hop == 0 and origin_of(url) == self.origin:
                sent["Authorization"] = authorization
            response = await self._send(method, url, sent)
            location = _header(response.headers, "location")
            if response.code not in _REDIRECTS or not location:
                return response, origin_of(url)
            await self._discard(response)
            target = urljoin(url, location)
            if origin_of(target)[0] not in ("http", "https"):
                raise self._bad(f"redirect to a non-HTTP URL {target[:200]}")
            if origin_of(url)[0] == "https" and origin_of(target)[0] != "https":
                raise self._bad("redirect from https to plain http refused")
            if response.code == 303 and method != "HEAD":
                method = "GET"
            url = target
        raise self._bad(f"more than {_MAX_REDIRECTS} redirects")

    async def _send(self, method: str, url: str, headers: Mapping[str, str]) -> IResponse:
        """One HTTP exchange up to the response headers, within ``timeout``."""
        self.requests += 1
        raw = Headers({"User-Agent": [self._user_agent]})
        for name, value in headers.items():
            raw.setRawHeaders(name, [value])
        d: Deferred[Any] = self._http.request(
            method, url, headers=raw, allow_redirects=False, unbuffered=True
        )
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        timer = self.reactor.callLater(self.timeout, expire)
        try:
            response: IResponse = await d
        except UpstreamError:
            self.errors += 1
            raise
        except Exception as exc:
            # A cancelled request surfaces as CancelledError or, once sent, wrapped in
            # ResponseNeverReceived; either is our timeout or our caller going away.
            if _is_cancellation(exc):
                if not timed_out:
                    raise CancelledError() from exc
                self.errors += 1
                where = "{}://{}:{}".format(*origin_of(url))
                raise UpstreamUnavailable(
                    None, f"no answer from {where} within {self.timeout}s"
                ) from None
            self.errors += 1
            raise UpstreamUnavailable(None, _describe(exc)) from exc
        finally:
            if timer.active():
                timer.cancel()
        self._observe_rate_limit(response.headers)
        return response

    async def _collect(
        self, response: IResponse, limit: int, what: str, *, quiet: bool = False
    ) -> bytes:
        """A whole small body within ``timeout``; ``quiet`` failures are not counted as errors
        (nobody needed that body)."""
        collector = Collector(limit, what)
        response.deliverBody(collector)
        timer = self.reactor.callLater(self.timeout, collector.done.cancel)
        try:
            return await collector.done
        except CancelledError:
            if timer.called:
                self.errors += 0 if quiet else 1
                raise UpstreamUnavailable(None, f"{what} stalled") from None
            raise
        except UpstreamError:
            self.errors += 0 if quiet else 1
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _discard(self, response: IResponse) -> None:
        """Read and drop a small body so the connection can go back to the pool; a large or
        broken one just loses its connection."""
        with contextlib.suppress(UpstreamError):
            await self._collect(response, _SMALL_BODY, "discarded body", quiet=True)

    def _announced_digest(self, response: IResponse) -> Digest | None:
        value = _header(response.headers, "docker-content-digest")
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except RegistryError:
            raise self._bad(f"unusable Docker-Content-Digest {value[:100]!r}") from None

    def _observe_rate_limit(self, headers: Headers) -> None:
        limit = _header(headers, "ratelimit-limit")
        remaining = _header(headers, "ratelimit-remaining")
        if limit is None and remaining is None:
            return
        window = re.search(r"w=(\d+)", remaining or limit or "")
        self.rate_limit = RateLimitStatus(
            limit=_leading_int(limit) if limit else None,
            remaining=_leading_int(remaining) if remaining else None,
            window=int(window.group(1)) if window else None,
            observed_at=self.reactor.seconds(),
        )

    def _bad(self, reason: str) -> UpstreamBadResponse:
        self.errors += 1
        return UpstreamBadResponse(None, reason)

    async def _fail(self, response: IResponse, method: str, what: str) -> NoReturn:
        """Raise the UpstreamError for a non-success answer."""
        status = response.code
        code, message = None, ""
        if method != "HEAD":
            try:
                body = await self._collect(response, _SMALL_BODY, "error body", quiet=True)
            except UpstreamError:
                body = b""
            code, message = _error_code(body)
        else:
            await self._discard(response)
        reason = f"{what}: {code or status} {message}".strip()
        self.errors += 1
        if status == 404:
            raise UpstreamNotFound(status, reason, code)
        if status == 429:
            raise UpstreamRateLimited(status, reason, self._retry_after(response.headers))
        if status in (401, 403):
            raise UpstreamUnauthorized(status, reason)
        if status >= 500:
            raise UpstreamUnavailable(status, reason)
        raise UpstreamError(status, reason)

    def _retry_after(self, headers: Headers) -> float | None:
        value = _header(headers, "retry-after")
        if value is None:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        now: float = self.reactor.seconds()
        return max(0.0, when.timestamp() - now)


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, CancelledError):
        return True
    reasons = getattr(exc, "reasons", None) or []
    return any(isinstance(getattr(r, "value", None), CancelledError) for r in reasons)


def _describe(exc: BaseException) -> str:
    """A short reason from twisted's nested failures (ResponseNeverReceived wraps a list)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = reasons[0]
        value = getattr(inner, "value", inner)
        return f"{type(exc).__name__}: {type(value).__name__}: {value}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def _error_code(body: bytes) -> tuple[str | None, str]:
    try:
        data = json.loads(body)
        first = data["errors"][0]
        return str(first.get("code")) or None, str(first.get("message", ""))[:200]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, ""


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
            return (
                mediatypes.DOCKER_SCHEMA1_SIGNED
                if "signatures" in data
                else mediatypes.DOCKER_SCHEMA1
            )
    return None


__all__ = [
    "RateLimitStatus",
    "UpstreamBlob",
    "UpstreamClient",
    "UpstreamManifest",
]
