"""
The wire and the credentials of one registry: what every API call goes through.

A `Session` sends one request to the registry and returns the response with its body unread:
it learns the ``/v2/`` challenge, buys Bearer tokens per scope (cached, shared, renewed once on
a 401) or sends Basic credentials, follows redirects itself, bounds every exchange with a
timeout and retries idempotent calls with backoff.

Redirects are followed here rather than by treq because a blob GET on Docker Hub is redirected
to a CDN on another host, and ``Authorization`` must never travel with a redirect: treq's
redirect agents would forward it.

Whom we trust with credentials: the configured username and password, and the tokens bought
with them, go only to the token realm that the registry's own origin (its URL: scheme, host
and port) announced in its ``/v2/`` challenge, and to that origin itself.  A redirect target
(a CDN) that answers 401 gets nothing: its challenge is not learned, no token is fetched for
it, and the request fails with `Unauthorized`.  Only a 401 from the origin itself may change
the learned challenge, and only to a realm ``/v2/`` names too (a Basic one aside when
``/v2/`` asked for nothing: see `Session._needs_announcement`).  A registry reached over https
that names a plain-http realm gets no credentials sent there: they would cross the network
in clear text.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import ipaddress
import json
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from http.cookiejar import CookiePolicy
from typing import Any, NoReturn
from urllib.parse import urlencode, urljoin, urlsplit

import attrs
from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool, RequestGenerationFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from registry.client._body import Collector
from registry.client._challenge import Challenge, pick_challenge
from registry.client._inflight import Inflight
from registry.client._streams import WatchedBody
from registry.client._tls import TLSOptions
from registry.client._tokens import MAX_TOKENS, TokenCache, TokenKey, clamp_expires_in
from registry.client.auth import Credentials
from registry.client.errors import (
    AccessDenied,
    BadResponse,
    ClientError,
    ForeignChallenge,
    NotFound,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
    UntrustedCertificate,
    without_userinfo,
)
from registry.http.bounded_agent import bounded_agent
from registry.http.headers import header_values
from registry.http.twisted_internals import quiet_pool

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
SMALL_BODY = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})

Origin = tuple[str, str, int]
BodyFactory = Callable[[], IBodyProducer]


def origin_of(url: str) -> Origin:
    """(scheme, host, port) with default ports filled in: what "same origin" compares."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, (parts.hostname or "").lower(), port)


def origin_text(origin: Origin) -> str:
    """``scheme://host:port``, an IPv6 address in brackets, as a URL writes it."""
    scheme, host, port = origin
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _LiteralURL(EncodedURL):
    """A URL whose host is an IPv6 address (``http://[::1]:5000/v2/``), for treq: hyperlink's
    `to_uri`, which treq calls on every URL, IDNA-encodes the host and refuses the address's
    colons.  Such a host has nothing to encode: the URL is its own URI."""

    def to_uri(self, *args: Any, **kwargs: Any) -> EncodedURL:
        return self


def _for_treq(url: str) -> str | EncodedURL:
    """``url`` as treq is given it (`_LiteralURL` for an IPv6 host)."""
    if "://[" not in url:
        return url
    return _LiteralURL.from_text(url)


def _same_service(before: Challenge | None, after: Challenge | None) -> bool:
    """Whether two Bearer challenges name one token service (scope and error aside)."""
    if before is None or after is None:
        return False
    return (before.scheme, before.realm, before.service) == (
        after.scheme,
        after.realm,
        after.service,
    )


# An authority as RFC 3986 writes it: userinfo aside, a bracketed IPv6 address or a name, and
# an optional port (anything after the colon: checked below, so that it can be named).
_AUTHORITY = re.compile(r"(?:.*@)?(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>.*))?", re.DOTALL)
# A host name's characters (RFC 3986 reg-name: unreserved, sub-delims, percent-encoding).
_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")


def url_problem(url: str) -> str | None:
    """What keeps a URL a registry sent (a redirect's ``Location``, a token realm) from being
    requested as it says, or None.  urllib raises ``ValueError`` for several of these only
    once the port is read ("46201:46204", "abc", 70000, a bracket missing), and twisted for
    others only when the request is made (no host); an answer naming such a URL is one not
    to act on, never a crash."""
    try:
        parts = urlsplit(url)
    except ValueError:  # brackets unbalanced, or not around an IP address
        return "cannot be parsed"
    if parts.scheme.lower() not in ("http", "https"):
        return "not an http(s) URL"
    authority = _AUTHORITY.fullmatch(parts.netloc)
    if authority is None:
        return "malformed host"  # "[::1]x"
    host, port = authority["host"], authority["port"]
    if not host:
        return "no host"
    if host.startswith("["):
        if not _is_ipv6(host[1:-1]):
            return f"{host[:100]} is not an IPv6 address"
    elif not _REG_NAME.fullmatch(host):
        return f"malformed host {host[:100]!r}"
    # (An empty port is the default one to RFC 3986, but treq refuses it.)
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        return f"port {port[:100]!r} is not a number from 1 to 65535"
    return None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _same_realm(announced: Challenge | None, challenge: Challenge) -> bool:
    """Whether ``/v2/`` announced the realm ``challenge`` names, in the same scheme (a Basic
    realm is a label: it announces no token service)."""
    if announced is None:
        return False
    return (announced.scheme, announced.realm) == (challenge.scheme, challenge.realm)


def header(headers: Headers, name: str) -> str | None:
    """The last value of ``name`` as text, whatever bytes the server sent."""
    values = header_values(headers, name)
    return values[-1] if values else None


def _leading_int(value: str) -> int | None:
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match else None


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


@attrs.frozen
class RateLimitStatus:
    """Last ``ratelimit-*`` headers seen (Docker Hub: ``76;w=21600``: 76 left in 6 hours)."""

    limit: int | None
    remaining: int | None
    window: int | None
    observed_at: float


class Session:
    """Requests to one registry origin, authorised, redirected, timed and retried."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        credentials: Credentials | None,
        tls: TLSOptions,
        timeout: float,
        retries: int,
        backoff: float,
        pool: HTTPConnectionPool | None,
        clock: IReactorTime | None,
        user_agent: str,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.reactor = reactor
        self.url = url.rstrip("/")
        if without_userinfo(self.url) != self.url:
            # Not repeated: it would print the password.
            raise ValueError(
                "the registry URL holds a user name or password (USER:PASSWORD@HOST): "
                "pass credentials= instead"
            )
        self.origin = origin_of(self.url)
        # Answers that came from another origin than the registry's (a redirect target):
        # `fail` says so on their errors (`ClientError.elsewhere`).
        self._answered_elsewhere: weakref.WeakKeyDictionary[IResponse, str] = (
            weakref.WeakKeyDictionary()
        )
        if self.origin[0] not in ("http", "https") or not self.origin[1]:
            raise ValueError(f"not an http(s) URL: {without_userinfo(url)!r}")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.credentials = credentials
        self._user_agent = user_agent
        self.owns_pool = pool is None
        if pool is None:
            pool = quiet_pool(HTTPConnectionPool(reactor, persistent=True))
            pool.maxPersistentPerHost = 8  # concurrent transfers to one host
        self.pool = pool
        agent = bounded_agent(reactor, tls=tls.policy(), connect_timeout=timeout, pool=pool)
        self._http = HTTPClient(agent, cookiejar=IndexableCookieJar(_NoCookies()))
        self.tokens = TokenCache(clock if clock is not None else reactor, max_tokens)
        self.challenge: Challenge | None = None
        self._challenge_known = False
        self._ping: Inflight[str, Challenge | None] = Inflight()
        # Observations, for metrics and tests.
        self.requests = 0
        self.token_requests = 0
        self.bytes_received = 0
        self.bytes_sent = 0  # request bodies
        self.errors = 0
        self.rate_limit: RateLimitStatus | None = None

    async def close(self) -> None:
        if self.owns_pool:
            await self.pool.closeCachedConnections()

    # -- one call: retried, authorised, status checked

    async def call(
        self,
        method: str,
        path: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: BodyFactory | None = None,
        ok: Sequence[int] = (200,),
        what: str,
        retry: bool | None = None,
    ) -> IResponse:
        """``method path`` until a status in ``ok`` (returned, body unread) or a failure (raised
        as a `ClientError`).  Idempotent methods are retried ``retries`` times on no answer,
        5xx and 429, waiting ``backoff`` doubled each time (or the ``Retry-After`` asked)."""
        if retry is None:
            retry = method in _IDEMPOTENT
        attempts = (self.retries if retry else 0) + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self.request(method, path, scopes, headers or {}, body)
            except Unavailable:
                if last:
                    raise
                await self.pause(attempt, None)
                continue
            if response.code in ok:
                return response
            if not last and (response.code >= 500 or response.code == 429):
                retry_after = self.retry_after(response.headers)
                await self.discard(response)
                await self.pause(attempt, retry_after)
                continue
            await self.fail(response, method, what, registry=True)
        raise AssertionError("unreachable")

    async def pause(self, attempt: int, retry_after: float | None = None) -> None:
        """Wait before retry number ``attempt + 1``: ``backoff`` doubled at each attempt, or
        the ``Retry-After`` asked (at most a minute)."""
        delay = self.backoff * (2**attempt) if retry_after is None else min(retry_after, 60.0)
        await deferLater(self.reactor, delay, lambda: None)

    async def request(
        self,
        method: str,
        path_or_url: str,
        scopes: Sequence[str],
        headers: Mapping[str, str],
        body: BodyFactory | None = None,
    ) -> IResponse:
        """One registry call: authorised, redirected, and sent again once after a 401 with a
        fresh token (the registry may drop tokens before their announced expiry)."""
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        await self.ensure_challenge()
        started = self.tokens.clock.seconds()
        for attempt in range(2):
            key, authorization = await self.authorization(scopes)
            response, answered_by = await self.exchange(method, url, headers, authorization, body)
            if response.code == 401 and answered_by != self.origin:
                await self.discard(response)
                raise self.foreign_challenge(answered_by)
            if answered_by != self.origin:
                self._answered_elsewhere[response] = origin_text(answered_by)
            if response.code != 401 or attempt == 1:
                return response
            before = self.challenge
            refused = await self._learn_challenge(response)
            if refused is not None and key is None:
                # No token of the announced realm to try again with: the answer stands.
                await self.discard(response)
                raise self.unannounced_realm(url, refused)
            if key is None and self.challenge == before:
                return response  # Basic or nothing, and nothing new to try
            if key is not None:
                value = (authorization or "").removeprefix("Bearer ")
                if _same_service(before, self.challenge) and self._fetched_since(
                    key, value, started
                ):
                    # A token asked for since this call began, refused (a private or unknown
                    # repository: Docker Hub's insufficient_scope): another would be too.
                    return response
                self.tokens.invalidate(key, value)
            await self.discard(response)
        raise AssertionError("unreachable")

    def _fetched_since(self, key: TokenKey, value: str, started: float) -> bool:
        token = self.tokens.cached(key)
        return token is not None and token.value == value and token.asked_at >= started

    # -- auth

    def foreign_challenge(self, origin: Origin) -> ForeignChallenge:
        """A 401 from another origin than the registry's (a redirect target): an error for this
        request, never a reason to send credentials or tokens anywhere else."""
        self.errors += 1
        where = "{}://{}:{}".format(*origin)
        return ForeignChallenge(
            401, f"{where} (not the registry) asked for authentication; nothing was sent to it"
        )

    async def _learn_challenge(self, response: IResponse) -> Challenge | None:
        """Called only for a 401 from the registry's own origin; returns the challenge it
        refused to take (None: taken, or none there).  A token realm other than the one known
        (none known included: a ``/v2/`` that asked for nothing) is taken only when the
        registry's ``/v2/`` names it too (asked again now): the credentials go to a realm the
        registry announces where every client looks for it, not to one a single answer names
        (a path-specific proxy in front of the registry, one misbehaving endpoint), which
        would then get them for every later token."""
        challenge = pick_challenge(header_values(response.headers, "www-authenticate"))
        if challenge is None:
            return None
        if self._needs_announcement(challenge):
            announced = await self._ping.run("ping", self._fetch_challenge)
            if not _same_realm(announced, challenge):
                return challenge  # what was known stays
        self.challenge = challenge
        self._challenge_known = True
        return None

    def _needs_announcement(self, challenge: Challenge) -> bool:
        """Whether a path's challenge is taken only once ``/v2/`` names it too: one naming
        another realm than the known one.  A Basic challenge when ``/v2/`` asked for nothing
        is taken as it is: Basic sends the configured username and password only to the
        registry's own origin (a Basic realm is a label, not a place), whom they are
        configured for and who gets the tokens bought with them anyway, so nobody else
        learns them.  A registry may well leave ``/v2/`` open and guard its repositories (a
        web server's Basic auth on ``/v2/<name>/`` only)."""
        known = self.challenge
        if known is None:
            return challenge.scheme != "basic"
        return challenge.realm != known.realm

    def unannounced_realm(self, url: str, challenge: Challenge) -> BadResponse:
        """A 401 from the registry's own origin whose challenge names a realm its ``/v2/``
        does not announce: an answer not to act on, an error for this request; nothing was
        sent to that realm."""
        path = urlsplit(url).path
        realm = (challenge.realm or "")[:200]
        return self.bad(
            f"{path[:200]} asked for {challenge.scheme} auth with realm {realm!r}, "
            "which the registry's /v2/ does not announce; nothing was sent there"
        )

    async def ensure_challenge(self) -> None:
        if not self._challenge_known:
            self.challenge = await self._ping.run("ping", self._fetch_challenge)
            self._challenge_known = True

    async def _fetch_challenge(self) -> Challenge | None:
        response, answered_by = await self.exchange("GET", self.url + "/v2/", {}, None)
        if response.code >= 500 or response.code == 429:
            await self.fail(response, "GET", "/v2/")
        await self.discard(response)
        if response.code == 401 and answered_by != self.origin:
            raise self.foreign_challenge(answered_by)
        if response.code == 401:
            return pick_challenge(header_values(response.headers, "www-authenticate"))
        return None

    def basic(self) -> str | None:
        if self.credentials is None:
            return None
        raw = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    async def authorization(self, scopes: Sequence[str]) -> tuple[TokenKey | None, str | None]:
        """(token cache key or None, the ``Authorization`` value or None)."""
        challenge = self.challenge
        if challenge is None:
            return None, None
        if challenge.scheme == "basic":
            return None, self.basic()
        realm = challenge.realm
        if not realm:
            raise self.bad("Bearer challenge without a realm")
        problem = url_problem(realm)
        if problem is not None:
            raise self.bad(f"token realm {realm[:200]!r}: {problem}")
        key: TokenKey = (realm, challenge.service or "", " ".join(scopes))
        self._refuse_insecure_realm(realm)
        token = await self.tokens.get(key, lambda: self._fetch_token(key))
        return key, f"Bearer {token.value}"

    def _refuse_insecure_realm(self, realm: str) -> None:
        """A registry reached over https that names a plain-http token service would have the
        username and password travel in clear text (Basic, to the realm): refuse, for this
        request.  Anonymous token requests carry nothing secret and go ahead; a registry
        reached over plain http gains nothing from the check (its own requests are clear)."""
        if self.credentials is None or self.origin[0] != "https":
            return
        if urlsplit(realm).scheme.lower() == "https":
            return
        self.errors += 1
        raise Unauthorized(
            None,
            f"the registry at {self.url} names an insecure token service {realm[:200]}; "
            "credentials are not sent over plain HTTP",
        )

    async def _fetch_token(self, key: TokenKey) -> tuple[str, int, str | None]:
        realm, service, scope = key
        params = [("service", service)] if service else []
        params += [("scope", s) for s in scope.split(" ") if s]
        url = realm + ("&" if "?" in realm else "?") + urlencode(params)
        headers = {}
        basic = self.basic()
        if basic is not None:
            headers["Authorization"] = basic
        self.token_requests += 1
        # The realm may be another host (auth.docker.io): the registry's own origin named it,
        # so credentials are meant for it.  No redirect is followed from here.
        response = await self.send("GET", url, headers)
        if response.code != 200:
            where = urlsplit(realm)
            await self.fail(
                response,
                "GET",
                f"{where.scheme}://{where.netloc}{where.path} refused a token for {scope}",
                source="token service",
            )
        body = await self.collect(response, SMALL_BODY, "token response")
        try:
            data = json.loads(body)
        except ValueError:
            raise self.bad("token response is not JSON") from None
        if not isinstance(data, dict):
            raise self.bad("token response is not a JSON object")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise self.bad("token response without a token")
        issued_at = data.get("issued_at")
        return (
            token,
            clamp_expires_in(data.get("expires_in")),
            issued_at if isinstance(issued_at, str) else None,
        )

    # -- the wire

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        authorization: str | None,
        body: BodyFactory | None = None,
    ) -> tuple[IResponse, Origin]:
        """Send, following redirects ourselves; return the answer and the origin that gave it.

        ``Authorization`` goes only to the registry's origin (scheme, host, port), on the hops
        before the chain first leaves it (a registry may redirect to another path of its own,
        as docker and containerd expect): a redirect target elsewhere never sees it, whatever
        its host, and neither does the registry's origin at a path another host sent us to
        (a CDN would choose which of the registry's resources the credentials open)."""
        own = True
        for _hop in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            own = own and origin_of(url) == self.origin
            if authorization is not None and own:
                sent["Authorization"] = authorization
            try:
                response = await self.send(method, url, sent, body)
            except ClientError as exc:
                if origin_of(url) != self.origin:
                    exc.elsewhere = origin_text(origin_of(url))
                raise
            location = header(response.headers, "location")
            if response.code not in _REDIRECTS or not location:
                return response, origin_of(url)
            await self.discard(response)
            target = self._redirect_target(url, location)
            if response.code == 303 and method != "HEAD":
                method, body = "GET", None
            url = target
        raise self.bad(f"more than {_MAX_REDIRECTS} redirects")

    def _redirect_target(self, url: str, location: str) -> str:
        """The URL a redirect from ``url`` names, or the `BadResponse` for one that cannot be
        followed as it is: not a usable http(s) URL (`url_problem`), or plain http after
        https."""
        try:
            target = urljoin(url, location)
        except ValueError:  # brackets unbalanced, or not around an IP address
            target = ""
        problem = url_problem(target) if target else "cannot be parsed"
        if problem is not None:
            raise self.bad(f"redirect to {location[:200]!r}: {problem}")
        if origin_of(url)[0] == "https" and origin_of(target)[0] != "https":
            raise self.bad("redirect from https to plain http refused")
        return target

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: BodyFactory | None = None,
    ) -> IResponse:
        """One HTTP exchange up to the response headers, within ``timeout`` (of silence, while
        a request body is sent)."""
        self.requests += 1
        raw = Headers({"User-Agent": [self._user_agent]})
        for name, value in headers.items():
            raw.setRawHeaders(name, [value])
        timed_out = False
        d: Deferred[Any] | None = None
        watched: WatchedBody | None = None
        timer: IDelayedCall

        def expire() -> None:
            nonlocal timed_out, timer
            if watched is not None and watched.waiting_on_source:
                # The body waits on the server it is read from (a blob streamed from another
                # registry), which times its own silence and names itself: not this one's.
                timer = self.reactor.callLater(self.timeout, expire)
                return
            timed_out = True
            if d is not None:
                d.cancel()

        # Connect to first byte of the answer within ``timeout``; a request body restarts
        # the clock at every write, so a large upload takes its time but never stalls.
        timer = self.reactor.callLater(self.timeout, expire)

        def progress(written: int) -> None:
            self.bytes_sent += written
            if timer.active():
                timer.reset(self.timeout)

        kwargs: dict[str, Any] = {}
        if body is not None:
            watched = WatchedBody(body(), progress)
            kwargs["data"] = watched
        try:
            d = self._http.request(
                method,
                _for_treq(url),
                headers=raw,
                allow_redirects=False,
                unbuffered=True,
                **kwargs,
            )
        except ValueError as exc:
            # treq reads the URL before anything is sent, and refuses at once a host name
            # IDNA refuses ("a_b", "-a", "xn--zz"): an error for this request (a URL the
            # registry named, or one configured so), not a defect.
            timer.cancel()
            raise self.bad(f"cannot request {url[:200]}: {str(exc)[:200]}") from None
        try:
            response: IResponse = await d
        except ClientError:
            self.errors += 1
            raise
        except Exception as exc:
            # A cancelled request surfaces as CancelledError or, once sent, wrapped in
            # ResponseNeverReceived; either is our timeout or our caller going away.
            if is_cancellation(exc):
                if not timed_out:
                    raise CancelledError() from exc
                self.errors += 1
                where = origin_text(origin_of(url))
                raise Unavailable(None, f"no answer from {where} within {self.timeout}s") from None
            sent = body_error(exc)
            if sent is not None:
                # The request body failed (a blob streamed from another registry that hashed
                # wrong or was cut): that source's error, not this registry's silence.
                raise sent from None
            self.errors += 1
            where = origin_text(origin_of(url))
            untrusted = certificate_failure(exc)
            if untrusted is not None:
                # A configuration error, not an outage: `call` does not retry it.
                raise UntrustedCertificate(where, untrusted) from exc
            raise Unavailable(None, f"no answer from {where}: {describe(exc)}") from exc
        finally:
            if timer.active():
                timer.cancel()
        self._observe_rate_limit(response.headers)
        return response

    async def collect(
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
                raise Unavailable(None, f"{what} stalled") from None
            raise
        except ClientError:
            self.errors += 0 if quiet else 1
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def discard(self, response: IResponse) -> None:
        """Read and drop a small body so the connection can go back to the pool; a large or
        broken one just loses its connection."""
        with contextlib.suppress(ClientError):
            await self.collect(response, SMALL_BODY, "discarded body", quiet=True)

    def _observe_rate_limit(self, headers: Headers) -> None:
        limit = header(headers, "ratelimit-limit")
        remaining = header(headers, "ratelimit-remaining")
        if limit is None and remaining is None:
            return
        window = re.search(r"w=(\d+)", remaining or limit or "")
        self.rate_limit = RateLimitStatus(
            limit=_leading_int(limit) if limit else None,
            remaining=_leading_int(remaining) if remaining else None,
            window=int(window.group(1)) if window else None,
            observed_at=self.reactor.seconds(),
        )

    def bad(self, reason: str) -> BadResponse:
        self.errors += 1
        return BadResponse(None, reason)

    async def fail(
        self,
        response: IResponse,
        method: str,
        what: str,
        registry: bool = False,
        source: str = "registry",
    ) -> NoReturn:
        """Raise the `ClientError` for a non-success answer (``registry``: of a registry
        call, where a 401/403 is `AccessDenied`; ``source``: who answered, for the message:
        a token service's refusal is not the registry's)."""
        status = response.code
        errors: tuple[tuple[str, str], ...] = ()
        if method != "HEAD":
            try:
                body = await self.collect(response, SMALL_BODY, "error body", quiet=True)
            except ClientError:
                body = b""
            errors = error_codes(body)
            if not errors and source != "registry":
                errors = token_service_words(body)
        else:
            await self.discard(response)
            # A HEAD answer has no body to name the code; these two statuses say it anyway.
            implied = {401: "UNAUTHORIZED", 403: "DENIED"}.get(status)
            errors = ((implied, "(HEAD: no body)"),) if implied else ()
        code = (errors[0][0] or None) if errors else None
        # Every error of the body, not only the first (registry:2 lists UNKNOWN before the
        # one that says what is wrong).
        said = "; ".join(f"{c} {m}".strip() for c, m in errors[:5]) or str(status)
        reason = f"{what}: {said}".strip()
        self.errors += 1
        error = self._error_for(status, reason, code, errors, response, registry, source)
        error.elsewhere = self._answered_elsewhere.get(response)
        raise error

    def _error_for(
        self,
        status: int,
        reason: str,
        code: str | None,
        errors: tuple[tuple[str, str], ...],
        response: IResponse,
        registry: bool,
        source: str,
    ) -> ClientError:
        if status == 404:
            return NotFound(status, reason, code, errors, source=source)
        if status == 429:
            return RateLimited(status, reason, self.retry_after(response.headers), code, errors)
        if status in (401, 403):
            # Refused with a token the token service issued for this very call: the
            # repository is not open to these credentials (with Basic auth, a 401 may as well
            # mean wrong credentials: plain Unauthorized).
            bearer = self.challenge is not None and self.challenge.scheme == "bearer"
            denied = registry and bearer
            return (AccessDenied if denied else Unauthorized)(
                status, reason, code, errors, source=source
            )
        if status >= 500:
            return Unavailable(status, reason, code, errors, source=source)
        if 400 <= status < 500:
            return Rejected(status, reason, code, errors, source=source)
        return ClientError(status, reason, code, errors, source=source)

    def retry_after(self, headers: Headers) -> float | None:
        value = header(headers, "retry-after")
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


def is_cancellation(exc: BaseException) -> bool:
    """Whether a request ended because it was cancelled: while connecting (Twisted's own
    error for that), or later (a `CancelledError`, bare or inside a ``ResponseFailed``)."""
    if isinstance(exc, CancelledError | ConnectingCancelledError):
        return True
    reasons = getattr(exc, "reasons", None) or []
    return any(isinstance(getattr(r, "value", None), CancelledError) for r in reasons)


def body_error(exc: BaseException) -> ClientError | None:
    """The `ClientError` a request body producer failed with, which twisted's client wraps in
    a ``RequestGenerationFailed`` (None for any other failure)."""
    if not isinstance(exc, RequestGenerationFailed):
        return None
    for reason in exc.reasons:
        if isinstance(reason.value, ClientError):
            return reason.value
    return None


def certificate_failure(exc: BaseException) -> str | None:
    """What failed, in words, when ``exc`` (twisted's failure of a request, with its nested
    reasons) is the server's TLS certificate failing this client's verification: OpenSSL's
    chain check ("certificate verify failed": an unknown CA, expired, not yet valid...) or
    the host name check (service_identity); None for any other failure, a TLS alert the
    server sent included (it refused the handshake: not our verdict on its certificate)."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    pending: list[object] = [exc]
    while pending:
        value = pending.pop()
        value = getattr(value, "value", value)  # a Failure
        if isinstance(value, VerificationError):
            return "; ".join(_mismatch(error) for error in value.errors) or "wrong host name"
        if isinstance(value, SSL.Error):
            entries = value.args[0] if value.args and isinstance(value.args[0], list) else []
            said = [str(entry[-1]) for entry in entries if isinstance(entry, tuple) and entry]
            if any("certificate verify failed" in text for text in said):
                return (
                    f"{', '.join(dict.fromkeys(said))} (OpenSSL: the certificate chain does not"
                    " lead to a CA the client trusts, or a certificate in it has expired or is"
                    " not yet valid)"
                )
        pending.extend(getattr(value, "reasons", None) or [])
    return None


def _mismatch(error: object) -> str:
    """One of service_identity's mismatches (`DNSMismatch`, `IPAddressMismatch`...) in words:
    the certificate names no such host."""
    wanted = getattr(error, "mismatched_id", None)
    name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None) or wanted
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return f"the certificate is not valid for {name}" if name is not None else str(error)


def describe(exc: BaseException) -> str:
    """A short reason from twisted's nested failures (ResponseNeverReceived wraps a list)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = reasons[0]
        value = getattr(inner, "value", inner)
        return f"{type(exc).__name__}: {type(value).__name__}: {value}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def token_service_words(body: bytes) -> tuple[tuple[str, str], ...]:
    """What a token service's refusal says, as ``(code, message)``: Docker Hub and
    docker_auth write ``{"details": ...}``, OAuth servers ``{"error": ...,
    "error_description": ...}``; () for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    code = data.get("error") if isinstance(data.get("error"), str) else ""
    words = [
        str(data[key])[:200]
        for key in ("details", "error_description", "message")
        if isinstance(data.get(key), str) and data[key]
    ]
    return ((code or "", "; ".join(words)),) if code or words else ()


def error_codes(body: bytes) -> tuple[tuple[str, str], ...]:
    """The ``(code, message)`` pairs of an OCI error body; () when it is not one.  A short
    ``detail`` goes into the message: it is what names the blob a manifest lacks, say."""
    try:
        data = json.loads(body)
        found = []
        for entry in data["errors"]:
            message = str(entry.get("message", ""))[:200]
            detail = entry.get("detail")
            if detail not in (None, "", {}, []):
                text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)
                if len(text) <= 200:
                    message = f"{message} ({text})" if message else text
            found.append((str(entry.get("code")), message))
        return tuple(found)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ()
