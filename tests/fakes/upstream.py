"""
A fake Docker-Hub-like upstream registry over real HTTP on 127.0.0.1, with switches to break it.

Two listeners, like Docker Hub: the registry (``/v2/...``, with a catalog of every repository
whatever its name, plus the token service at ``/token``) and a "CDN" on another port that
serves blob bytes after a 307 from the registry.  The CDN answers 400 to any request carrying
``Authorization``, which is how tests prove a client does not forward credentials across
origins.  With ``cdn_challenge`` it answers 401 with a Bearer challenge of its
own instead, naming a token service on the CDN (``/token``, logged as kind ``cdn-token``), so a
test can see whether a client sends credentials to a realm the upstream never announced.

`FakeUpstream.hold` parks matching requests until the test releases them, and
`FakeUpstream.hold_body` stops a CDN body after some bytes until released, so a test can make
a HEAD or a fill (before or after its headers) stay in flight exactly as long as it needs.

In-process::

    fake = await start_fake_upstream(reactor)
    image = fake.content.add_image("library/alpine", "latest", [4096, 1 << 20])
    ...
    await fake.stop()

As its own process (heavy tests, so a 1 GiB layer is not served from the test's reactor)::

    python -m tests.fakes.upstream --port 0 --cdn-port 0 --layer-size 1073741824

prints one JSON line (urls and the image's digests) when ready; ``GET /_fake/stats`` and
``POST /_fake/switches`` (a JSON object of `Switches` fields) drive it from outside.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import attrs
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IPushProducer, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tests.fakes.content import OCI_INDEX, Blob, Content, Image

SERVICE = "fake-registry"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MANIFEST_RE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
_TAGS_RE = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_REFERRERS_RE = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<ref>[^/]+)$")
_CATALOG_PATHS = ("/v2/_catalog", "/v2/_catalog/")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@attrs.define
class Switches:
    """Everything a test may flip while the fake runs."""

    auth: str = "bearer"  # "bearer", "basic" or "none"
    credentials: tuple[str, str] | None = None  # required by the token service / Basic auth
    token_expires_in: int = 300
    token_fields: tuple[str, ...] = ("token", "access_token")
    ratelimit_limit: int = 100
    ratelimit_remaining: int = 100
    ratelimit_window: int = 21600
    # The Retry-After of a manifest GET refused for the rate limit (``ratelimit_remaining``);
    # None: the 429 carries none.
    ratelimit_retry_after: int | None = 60
    fail_status: int | None = None  # every registry, token and CDN request answers this
    # Manifest requests answer a 404 page no registry sends (a proxy's or a CDN's, HTML).
    html_404_manifests: bool = False
    stall: bool = False  # accept requests, never answer
    stall_blob_after: int | None = None  # CDN sends this many bytes, then goes silent
    cut_blob_after: int | None = None  # CDN drops the connection after this many bytes
    cut_blob_times: int | None = None  # ... of this many bodies (None: every one)
    # The CDN ignores Range and answers 200 with the whole blob (RFC 7233 allows it).
    ignore_range: bool = False
    refuse_ranges: bool = False  # the CDN answers any Range request 416 (a plain GET works)
    blob_rate: int | None = None  # CDN bytes per second
    corrupt_blobs: bool = False  # CDN flips the first byte of every body
    # CDN bodies without Content-Length (chunked) that go on this many bytes past the blob.
    endless_blobs: int | None = None
    # CDN bodies without Content-Length (chunked) whose every byte is sent, then the
    # connection closed without the last chunk.
    unfinished_blobs: bool = False
    # CDN bodies whose Content-Length (and body) is this many bytes more than the blob's.
    padded_blobs: int | None = None
    corrupt_manifests: bool = False  # manifest bodies get a trailing space (digest header kept)
    omit_manifest_digest: bool = False  # no Docker-Content-Digest on manifest answers
    redirect_blob_head: bool = False  # HEAD on a blob redirects too (some registries do)
    # The Location a blob's redirect names instead of the CDN's ("{digest}" filled in): a URL
    # that may not parse at all ("http://127.0.0.1:1:2/x").
    blob_location: str | None = None
    cdn_challenge: bool = False  # the CDN answers 401 with a Bearer challenge of its own
    cdn_status: int | None = None  # the CDN answers blob GETs this status (the registry is fine)
    referrers_api: bool = True  # False: 404 on /referrers/ (Docker Hub), use the tag schema
    referrers_page: int | None = None  # referrers per page, chained by Link rel="next"
    referrers_next_origin: str | None = None  # next links absolute, on this origin
    token_realm: str | None = None  # the realm the challenge names (default: our /token)
    # The realm a repository path's 401 names instead (the /v2/ ping keeps token_realm).
    path_realm: str | None = None
    # /v2/ answers 200 without a challenge; repository paths still answer 401 with one.
    open_ping: bool = False
    # Repositories the token service leaves out of the tokens it issues (Docker Hub does so
    # for private and unknown ones): their requests answer 401 insufficient_scope.
    denied: frozenset[str] = frozenset()
    # Blob HEADs in these repositories give this size instead of the blob's (a HEAD that
    # lies; the GET's body stays the blob).
    head_sizes: dict[str, int] = attrs.field(factory=dict)
    # Repositories the catalog leaves out (one that lists only some: an access policy, a
    # catalog that lags behind).
    catalog_hides: frozenset[str] = frozenset()
    # The catalog answers this status with an OCI error body (Docker Hub has no catalog).
    catalog_status: int | None = None
    # Manifest requests (HEAD and GET) for these references (a tag or a digest) answer this
    # status with an OCI error body, in every repository.
    manifest_status: dict[str, int] = attrs.field(factory=dict)
    # Manifest answers for these references carry no Docker-Content-Digest.
    no_digest_refs: frozenset[str] = frozenset()
    # Every request in these repositories answers (status, message): an OCI error body
    # with code DENIED and that message, whatever it holds.
    repository_errors: dict[str, tuple[int, str]] = attrs.field(factory=dict)


class Hold:
    """Requests matching (method, kind, name, ref) wait here until `release` (``None`` matches
    anything).  ``arrived`` counts the requests that were parked."""

    def __init__(
        self, method: str | None, kind: str | None, name: str | None, ref: str | None
    ) -> None:
        self.method = method
        self.kind = kind
        self.name = name
        self.ref = ref
        self.arrived = 0
        self.released = False
        self._parked: list[Any] = []

    def matches(self, request: LoggedRequest) -> bool:
        return not self.released and all(
            want is None or want == got
            for want, got in (
                (self.method, request.method),
                (self.kind, request.kind),
                (self.name, request.name),
                (self.ref, request.ref),
            )
        )

    def park(self, resume: Any) -> None:
        self.arrived += 1
        self._parked.append(resume)

    def release(self) -> None:
        """Answer every parked request now (as it would have been answered) and stop holding;
        a held body carries on."""
        self.released = True
        parked, self._parked = self._parked, []
        for resume in parked:
            resume()


@attrs.frozen
class LoggedRequest:
    method: str
    kind: str  # "ping", "token", "manifest", "blob", "tags", "cdn", "other"
    path: str
    name: str | None
    ref: str | None
    authorization: str | None
    accept: str | None
    status: int | None = None
    range: str | None = None  # the request's Range header


class _TrackingFactory(WrappingFactory):
    """Knows its open connections (to drop them) and counts opened/closed ones."""

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self.opened = 0
        self.closed = 0

    def registerProtocol(self, p: Any) -> None:
        self.opened += 1
        super().registerProtocol(p)

    def unregisterProtocol(self, p: Any) -> None:
        self.closed += 1
        super().unregisterProtocol(p)

    def drop_all(self) -> None:
        for p in list(self.protocols):
            p.transport.abortConnection()


def _json_error(request: Request, status: int, code: str, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


class FakeUpstream:
    """The fake; see the module docstring.  ``clock`` measures token lifetimes."""

    def __init__(
        self,
        reactor: Any,
        content: Content | None = None,
        *,
        clock: IReactorTime | None = None,
        tls: Any = None,
        switches: Switches | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.content = content if content is not None else Content()
        self.switches = switches if switches is not None else Switches()
        self.tls = tls
        self.log: list[LoggedRequest] = []
        self.tokens: dict[str, tuple[set[str], float]] = {}
        self.cdn_auth_rejections = 0
        self.cdn_sent = 0  # bytes of blob bodies the CDN wrote
        self.stalled: list[Request] = []
        self.holds: list[Hold] = []
        self.body_holds: dict[str, tuple[int, Hold]] = {}
        self._secret = secrets.token_bytes(16)
        self._registry = _TrackingFactory(Site(_RegistryResource(self)))
        self._cdn = _TrackingFactory(Site(_CdnResource(self)))
        self._ports: list[IListeningPort] = []
        self.port = 0
        self.cdn_port = 0

    # -- lifecycle

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.cdn_port}"

    def _endpoint(self, port: int) -> Any:
        if self.tls is not None:
            return endpoints.SSL4ServerEndpoint(self.reactor, port, self.tls, interface="127.0.0.1")
        return endpoints.TCP4ServerEndpoint(self.reactor, port, interface="127.0.0.1")

    async def start(self, port: int = 0, cdn_port: int = 0) -> FakeUpstream:
        registry = await self._endpoint(port).listen(self._registry)
        cdn = await self._endpoint(cdn_port).listen(self._cdn)
        self._ports = [registry, cdn]
        self.port = registry.getHost().port
        self.cdn_port = cdn.getHost().port
        return self

    async def go_down(self) -> None:
        """Stop listening (new connections are refused) and drop every open connection."""
        ports, self._ports = self._ports, []
        await DeferredList([Deferred.fromCoroutine(_stop(p)) for p in ports])
        self.drop_connections()

    async def come_up(self) -> None:
        """Listen again on the same ports."""
        await self.start(self.port, self.cdn_port)

    def drop_connections(self) -> None:
        for request in self.stalled:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()
        self.stalled.clear()
        self._registry.drop_all()
        self._cdn.drop_all()

    async def stop(self) -> None:
        await self.go_down()

    # -- observations

    def count(
        self,
        method: str | None = None,
        kind: str | None = None,
        *,
        name: str | None = None,
        ref: str | None = None,
    ) -> int:
        """How many logged requests match (``None`` matches anything)."""
        return sum(
            1
            for r in self.log
            if (method is None or r.method == method)
            and (kind is None or r.kind == kind)
            and (name is None or r.name == name)
            and (ref is None or r.ref == ref)
        )

    def stats(self) -> dict[str, object]:
        counts = Counter(f"{r.method} {r.kind}" for r in self.log)
        return {
            "counts": dict(counts),
            "blob_gets": dict(Counter(r.ref for r in self.log if r.kind == "cdn")),
            "cdn_auth_rejections": self.cdn_auth_rejections,
            "registry_connections": {
                "open": len(self._registry.protocols),
                "opened": self._registry.opened,
            },
            "cdn_connections": {"open": len(self._cdn.protocols), "opened": self._cdn.opened},
            "ratelimit_remaining": self.switches.ratelimit_remaining,
        }

    @property
    def cdn_open_connections(self) -> int:
        return len(self._cdn.protocols)

    @property
    def registry_open_connections(self) -> int:
        return len(self._registry.protocols)

    def hold(
        self,
        method: str | None = None,
        kind: str | None = None,
        *,
        name: str | None = None,
        ref: str | None = None,
    ) -> Hold:
        """Park matching requests until the returned `Hold` is released."""
        hold = Hold(method, kind, name, ref)
        self.holds.append(hold)
        return hold

    def hold_body(self, ref: str, after: int) -> Hold:
        """CDN bodies of blob ``ref`` stop after ``after`` bytes until the hold is released
        (``arrived`` counts the bodies that reached that point)."""
        hold = Hold("GET", "cdn", None, ref)
        self.body_holds[ref] = (after, hold)
        return hold

    def revoke_tokens(self) -> None:
        """Forget every token issued: the next registry request gets a 401."""
        self.tokens.clear()

    # -- pieces used by the resources

    def challenge(self, scope: str | None = None, error: str | None = None) -> bytes:
        if self.switches.auth == "basic":
            return b'Basic realm="fake registry"'
        realm = (scope and self.switches.path_realm) or self.switches.token_realm
        realm = realm or f"{self.url}/token"
        parts = [f'realm="{realm}"', f'service="{SERVICE}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return ("Bearer " + ",".join(parts)).encode()

    def basic_ok(self, request: Request) -> bool:
        expected = self.switches.credentials
        if expected is None:
            return True
        header = request.getHeader(b"authorization") or b""
        if not header.startswith(b"Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (user, password) == expected

    def authorized(self, request: Request, name: str | None) -> bool:
        """Whether the request may read ``name`` (any repository for ``None``: ``/v2/``)."""
        mode = self.switches.auth
        if mode == "none":
            return True
        if mode == "basic":
            return (request.getHeader(b"authorization") or b"").startswith(
                b"Basic "
            ) and self.basic_ok(request)
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if not header.startswith("Bearer "):
            return False
        grant = self.tokens.get(header[7:])
        if grant is None:
            return False
        scopes, expires_at = grant
        if self.clock.seconds() >= expires_at:
            return False
        return name is None or f"repository:{name}:pull" in scopes

    def sign(self, digest: str, expires: int) -> str:
        return hmac.new(self._secret, f"{digest}:{expires}".encode(), hashlib.sha256).hexdigest()


async def _stop(port: IListeningPort) -> None:
    await port.stopListening()


class _Base(Resource):
    isLeaf = True

    def __init__(self, fake: FakeUpstream) -> None:
        super().__init__()
        self.fake = fake

    def _log(self, request: Request, kind: str, name: str | None, ref: str | None) -> LoggedRequest:
        logged = LoggedRequest(
            method=request.method.decode(),
            kind=kind,
            path=request.path.decode(),
            name=name,
            ref=ref,
            authorization=(request.getHeader(b"authorization") or b"").decode("latin-1") or None,
            accept=(request.getHeader(b"accept") or b"").decode("latin-1") or None,
            range=(request.getHeader(b"range") or b"").decode("latin-1") or None,
        )
        self.fake.log.append(logged)
        return logged

    def _held(self, request: Request, logged: LoggedRequest, answer: Any) -> bool:
        """Park the request when a hold matches it; ``answer()`` renders it on release."""
        for hold in self.fake.holds:
            if hold.matches(logged):

                def resume() -> None:
                    if request.finished or request.channel is None:
                        return
                    body = answer()
                    if body is not NOT_DONE_YET:
                        request.write(body)
                        request.finish()

                hold.park(resume)
                return True
        return False

    def _broken(self, request: Request) -> bytes | int | None:
        """The answer the failure switches impose, if any."""
        if self.fake.switches.stall:
            self.fake.stalled.append(request)
            return NOT_DONE_YET
        if self.fake.switches.fail_status is not None:
            return _json_error(
                request, self.fake.switches.fail_status, "UNAVAILABLE", "injected failure"
            )
        return None


class _RegistryResource(_Base):
    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("latin-1")
        if path.startswith("/_fake/"):
            return self._control(request, path)
        match = _MANIFEST_RE.match(path)
        tags = _TAGS_RE.match(path)
        referrers = _REFERRERS_RE.match(path)
        if path == "/token":
            kind, name, ref = "token", None, None
        elif path in _CATALOG_PATHS:
            kind, name, ref = "catalog", None, None
        elif path in ("/v2/", "/v2"):
            kind, name, ref = "ping", None, None
        elif referrers is not None:
            kind, name, ref = "referrers", referrers["name"], referrers["ref"]
        elif match is not None:
            kind, name, ref = match["kind"][:-1], match["name"], match["ref"]
        elif tags is not None:
            kind, name, ref = "tags", tags["name"], None
        else:
            kind, name, ref = "other", None, None
        logged = self._log(request, kind, name, ref)
        if self._held(request, logged, lambda: self._answer(request, kind, name, ref)):
            return NOT_DONE_YET
        return self._answer(request, kind, name, ref)

    def _answer(self, request: Request, kind: str, name: str | None, ref: str | None) -> Any:
        broken = self._broken(request)
        if broken is not None:
            return broken
        if kind == "token":
            return self._token(request)
        if kind == "other":
            return _json_error(request, 404, "NOT_FOUND", "no such endpoint")
        scope = f"repository:{name}:pull" if name else None
        open_ping = kind == "ping" and self.fake.switches.open_ping
        if not open_ping and not self.fake.authorized(request, name):
            request.setResponseCode(401)
            denied = name in self.fake.switches.denied and request.getHeader(b"authorization")
            error = "insufficient_scope" if denied else None
            request.setHeader(b"www-authenticate", self.fake.challenge(scope, error))
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            ).encode()
        if kind == "ping":
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
        if kind == "catalog":
            return self._catalog(request)
        assert name is not None
        refused = self.fake.switches.repository_errors.get(name)
        if refused is not None:
            return _json_error(request, refused[0], "DENIED", refused[1])
        repo = self.fake.content.repos.get(name)
        if repo is None:
            return _json_error(request, 404, "NAME_UNKNOWN", f"repository {name} not known")
        if kind == "tags":
            return self._tags(request, name, sorted(repo.tags))
        assert ref is not None
        if kind == "referrers":
            return self._referrers(request, name, ref)
        if kind == "manifest":
            return self._manifest(request, name, ref)
        return self._blob(request, name, ref)

    def _catalog(self, request: Request) -> bytes:
        """Every repository of the content, whatever its name, paginated as tags are."""
        if self.fake.switches.catalog_status is not None:
            status = self.fake.switches.catalog_status
            return _json_error(request, status, "UNSUPPORTED", "no catalog here")
        args = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        last = args.get("last", [""])[0]
        hidden = self.fake.switches.catalog_hides
        listed = sorted(name for name in self.fake.content.repos if name not in hidden)
        page = [name for name in listed if name > last]
        if "n" in args:
            n = int(args["n"][0])
            if len(page) > n:
                page = page[:n]
                link = f'</v2/_catalog?n={n}&last={page[-1]}>; rel="next"'
                request.setHeader(b"link", link.encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"repositories": page}).encode()

    def _tags(self, request: Request, name: str, tags: list[str]) -> bytes:
        """The distribution-spec pagination: ``n``, ``last`` and a ``Link`` to the next page."""
        args = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        last = args.get("last", [""])[0]
        page = [tag for tag in tags if tag > last]
        if "n" in args:
            n = int(args["n"][0])
            if len(page) > n:
                page = page[:n]
                link = f'</v2/{name}/tags/list?n={n}&last={page[-1]}>; rel="next"'
                request.setHeader(b"link", link.encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"name": name, "tags": page}).encode()

    def _referrers(self, request: Request, name: str, subject: str) -> bytes:
        """Every stored manifest of the repository whose ``subject`` is ``subject``."""
        if not self.fake.switches.referrers_api:
            return _json_error(request, 404, "NOT_FOUND", "no referrers API here")
        found = []
        for digest, (media_type, body) in sorted(self.fake.content.repos[name].manifests.items()):
            document = json.loads(body)
            if (document.get("subject") or {}).get("digest") != subject:
                continue
            descriptor = {"mediaType": media_type, "digest": digest, "size": len(body)}
            artifact_type = document.get("artifactType") or document.get("config", {}).get(
                "mediaType"
            )
            if artifact_type:
                descriptor["artifactType"] = artifact_type
            found.append(descriptor)
        page = self.fake.switches.referrers_page
        if page is not None:
            args = parse_qs(request.uri.decode("latin-1").partition("?")[2])
            last = args.get("last", [""])[0]
            found = [d for d in found if str(d["digest"]) > last]
            if len(found) > page:
                found = found[:page]
                origin = self.fake.switches.referrers_next_origin or ""
                link = f"<{origin}/v2/{name}/referrers/{subject}?last={found[-1]['digest']}>"
                request.setHeader(b"link", f'{link}; rel="next"'.encode())
        request.setHeader(b"content-type", OCI_INDEX.encode())
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}).encode()

    def _token(self, request: Request) -> bytes:
        sw = self.fake.switches
        if not self.fake.basic_ok(request):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="fake token service"')
            return b'{"details": "incorrect username or password"}'
        args = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        scopes = set(" ".join(args.get("scope", [])).split())
        scopes -= {f"repository:{name}:pull" for name in sw.denied}
        if args.get("service") != [SERVICE]:
            request.setResponseCode(400)
            return b'{"details": "wrong service"}'
        token = secrets.token_urlsafe(24)
        self.fake.tokens[token] = (scopes, self.fake.clock.seconds() + sw.token_expires_in)
        body: dict[str, object] = {field: token for field in sw.token_fields}
        body["expires_in"] = sw.token_expires_in
        body["issued_at"] = "2026-01-01T00:00:00Z"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def _manifest(self, request: Request, name: str, ref: str) -> bytes:
        sw = self.fake.switches
        if sw.html_404_manifests:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body><h1>404 Not Found</h1></body></html>"
        status = sw.manifest_status.get(ref)
        if status is not None:
            return _json_error(request, status, "UNKNOWN", f"manifest {ref}: injected failure")
        repo = self.fake.content.repos[name]
        digest = repo.tags.get(ref, ref)
        found = repo.manifests.get(digest)
        if found is None:
            return _json_error(request, 404, "MANIFEST_UNKNOWN", f"manifest {ref} unknown")
        media_type, body = found
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if accept and media_type not in accept and "*/*" not in accept:
            return _json_error(request, 404, "MANIFEST_UNKNOWN", f"{media_type} not accepted")
        is_get = request.method == b"GET"
        if is_get:
            if sw.ratelimit_remaining <= 0:
                if sw.ratelimit_retry_after is not None:
                    request.setHeader(b"retry-after", str(sw.ratelimit_retry_after).encode())
                self._ratelimit_headers(request)
                return _json_error(request, 429, "TOOMANYREQUESTS", "pull rate limit reached")
            sw.ratelimit_remaining -= 1
        self._ratelimit_headers(request)
        if not sw.omit_manifest_digest and ref not in sw.no_digest_refs:
            request.setHeader(b"docker-content-digest", digest.encode())
        if sw.corrupt_manifests:
            body += b" "
        request.setHeader(b"content-type", media_type.encode())
        request.setHeader(b"content-length", str(len(body)).encode())
        return body if is_get else b""

    def _ratelimit_headers(self, request: Request) -> None:
        sw = self.fake.switches
        window = sw.ratelimit_window
        request.setHeader(b"ratelimit-limit", f"{sw.ratelimit_limit};w={window}".encode())
        request.setHeader(
            b"ratelimit-remaining", f"{max(sw.ratelimit_remaining, 0)};w={window}".encode()
        )

    def _blob(self, request: Request, name: str, digest: str) -> bytes:
        repo = self.fake.content.repos[name]
        blob = self.fake.content.blobs.get(digest)
        if blob is None or digest not in repo.blobs:
            return _json_error(request, 404, "BLOB_UNKNOWN", f"blob {digest} unknown")
        if request.method == b"HEAD" and not self.fake.switches.redirect_blob_head:
            request.setHeader(b"docker-content-digest", digest.encode())
            request.setHeader(b"content-type", b"application/octet-stream")
            size = self.fake.switches.head_sizes.get(name, blob.size)
            request.setHeader(b"content-length", str(size).encode())
            return b""
        expires = int(self.fake.reactor.seconds()) + 600
        sig = self.fake.sign(digest, expires)
        location = f"{self.fake.cdn_url}/blobs/{digest}?expires={expires}&sig={sig}"
        if self.fake.switches.blob_location is not None:
            location = self.fake.switches.blob_location.replace("{digest}", digest)
        request.setResponseCode(307)
        request.setHeader(b"location", location.encode())
        return b""

    def _control(self, request: Request, path: str) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if path == "/_fake/switches" and request.method == b"POST":
            changes = json.loads(request.content.read() or b"{}")
            for key, value in changes.items():
                if key == "credentials" and value is not None:
                    value = tuple(value)
                if key in ("denied", "no_digest_refs", "catalog_hides"):
                    value = frozenset(value)
                if key == "repository_errors":
                    value = {name: tuple(answer) for name, answer in value.items()}
                setattr(self.fake.switches, key, value)
            switches = attrs.asdict(self.fake.switches)
            switches["denied"] = sorted(switches["denied"])
            switches["no_digest_refs"] = sorted(switches["no_digest_refs"])
            switches["catalog_hides"] = sorted(switches["catalog_hides"])
            return json.dumps(switches).encode()
        if path == "/_fake/revoke":
            self.fake.revoke_tokens()
            return b"{}"
        if path == "/_fake/drop":
            self.fake.reactor.callLater(0, self.fake.drop_connections)
            return b"{}"
        return json.dumps(self.fake.stats()).encode()


class _CdnResource(_Base):
    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("latin-1")
        if path == "/token":
            self._log(request, "cdn-token", None, None)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"token": "cdn-token", "expires_in": 300}).encode()
        digest = path.removeprefix("/blobs/")
        logged = self._log(request, "cdn", None, digest)
        if self._held(request, logged, lambda: self._answer(request, digest)):
            return NOT_DONE_YET
        return self._answer(request, digest)

    def _answer(self, request: Request, digest: str) -> Any:
        if self.fake.switches.cdn_challenge:
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate",
                f'Bearer realm="{self.fake.cdn_url}/token",service="cdn"'.encode(),
            )
            return b'{"errors": [{"code": "UNAUTHORIZED", "message": "CDN wants a token"}]}'
        if self.fake.switches.cdn_status is not None:
            request.setResponseCode(self.fake.switches.cdn_status)
            return b"<html>CDN trouble</html>"
        if request.getHeader(b"authorization") is not None:
            self.fake.cdn_auth_rejections += 1
            request.setResponseCode(400)
            return b"Authorization header not allowed on the CDN"
        broken = self._broken(request)
        if broken is not None:
            return broken
        args = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        try:
            expires = int(args["expires"][0])
            sig = args["sig"][0]
        except (KeyError, ValueError):
            request.setResponseCode(403)
            return b"unsigned"
        if not hmac.compare_digest(sig, self.fake.sign(digest, expires)):
            request.setResponseCode(403)
            return b"bad signature"
        blob = self.fake.content.blobs.get(digest)
        if blob is None:
            request.setResponseCode(404)
            return b"gone"
        start, end = 0, blob.size
        range_header = (request.getHeader(b"range") or b"").decode("latin-1")
        match = _RANGE_RE.match(range_header)
        if match is not None and (match[1] or match[2]) and not self.fake.switches.ignore_range:
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]) + 1, blob.size) if match[2] else blob.size
            else:
                start = max(0, blob.size - int(match[2]))
            if start >= blob.size or start >= end or self.fake.switches.refuse_ranges:
                request.setResponseCode(416)
                request.setHeader(b"content-range", f"bytes */{blob.size}".encode())
                return b""
            request.setResponseCode(206)
            request.setHeader(b"content-range", f"bytes {start}-{end - 1}/{blob.size}".encode())
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-type", b"application/octet-stream")
        sw = self.fake.switches
        extra = sw.endless_blobs if sw.endless_blobs is not None else sw.padded_blobs or 0
        if sw.endless_blobs is None and not sw.unfinished_blobs:
            request.setHeader(b"content-length", str(end - start + extra).encode())
        if request.method == b"HEAD":
            return b""
        _Streamer(self.fake, request, blob, start, end, extra).start()
        return NOT_DONE_YET


@implementer(IPushProducer)
class _Streamer:
    """Writes a blob range with back-pressure, obeying the CDN failure switches."""

    def __init__(
        self, fake: FakeUpstream, request: Request, blob: Blob, start: int, end: int, extra: int = 0
    ) -> None:
        self.fake = fake
        self.request = request
        self.blob = blob
        self.pos = start
        self.end = end + extra  # past the blob: filler (`UpstreamSwitches.endless_blobs`)
        self.blob_end = end
        self.sent = 0
        self.paused = False
        self.done = False
        self.call: IDelayedCall | None = None
        sw = fake.switches
        self.rate = sw.blob_rate
        self.stall_after = sw.stall_blob_after
        self.cut_after = sw.cut_blob_after
        if self.cut_after is not None and sw.cut_blob_times is not None:
            if sw.cut_blob_times > 0:
                sw.cut_blob_times -= 1
            else:
                self.cut_after = None
        self.corrupt = sw.corrupt_blobs
        self.hold_after, self.hold = fake.body_holds.get(blob.digest, (None, None))

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self.call is None and not self.done:
            self.call = self.fake.reactor.callLater(delay, self._pump)

    def _pump(self) -> None:
        self.call = None
        while not self.paused and not self.done and self.pos < self.end:
            n = self.end - self.pos
            if self.rate is not None:
                n = min(n, max(1, self.rate // 20))
            if self.hold is not None and self.hold_after is not None:
                if self.hold.released:
                    self.hold = None
                elif self.sent >= self.hold_after:
                    self.hold.park(lambda: self._schedule(0))
                    return
                else:
                    n = min(n, self.hold_after - self.sent)
            for limit in (self.cut_after, self.stall_after):
                if limit is not None:
                    n = min(n, limit - self.sent)
            if n <= 0:
                if self.cut_after is not None and self.sent >= self.cut_after:
                    self.done = True
                    self.request.channel.transport.loseConnection()
                return  # stalled: never send again
            if self.pos >= self.blob_end:
                data = b"\0" * min(n, 1 << 20)
            else:
                data = next(iter(self.blob.read(self.pos, min(self.pos + n, self.blob_end))))
            if self.corrupt and self.sent == 0:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self.pos += len(data)
            self.sent += len(data)
            self.fake.cdn_sent += len(data)
            self.request.write(data)
            if self.rate is not None:
                self._schedule(len(data) / self.rate)
                return
        if self.pos >= self.end and not self.done:
            self.done = True
            self.request.unregisterProducer()
            if self.fake.switches.unfinished_blobs:
                self.request.channel.transport.loseConnection()
                return
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule(0)

    def stopProducing(self) -> None:
        self.done = True
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


async def start_fake_upstream(reactor: Any, **kwargs: Any) -> FakeUpstream:
    """A started `FakeUpstream` on 127.0.0.1 (ports chosen by the OS)."""
    port = kwargs.pop("port", 0)
    cdn_port = kwargs.pop("cdn_port", 0)
    return await FakeUpstream(reactor, **kwargs).start(port, cdn_port)


# -- standalone process


class _ReadyProtocol(ProcessProtocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.ready: Deferred[dict[str, Any]] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        if self.ready.called:
            return
        self.buffer += data
        if b"\n" in self.buffer:
            self.ready.callback(json.loads(self.buffer.split(b"\n", 1)[0]))

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"fake upstream exited: {reason.value}"))
        self.ended.callback(None)


@attrs.define
class RunningFake:
    """A fake upstream in its own process; ``info`` is its ready line (urls, image digests)."""

    info: dict[str, Any]
    process: Any
    ended: Deferred[None]

    @property
    def url(self) -> str:
        return str(self.info["url"])

    async def stop(self) -> None:
        if not self.ended.called:
            self.process.signalProcess("TERM")
        await self.ended


async def spawn_fake_upstream(reactor: Any, *args: str) -> RunningFake:
    """Run ``python -m tests.fakes.upstream *args`` and wait for its ready line."""
    root = _REPO_ROOT
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    protocol = _ReadyProtocol()
    process = reactor.spawnProcess(
        protocol,
        sys.executable,
        [sys.executable, "-m", "tests.fakes.upstream", *args],
        env=env,
        path=root,
    )
    info = await protocol.ready
    return RunningFake(info, process, protocol.ended)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument(
        "--layer-size", type=int, action="append", help="bytes; repeat for more layers"
    )
    parser.add_argument("--image", default="library/alpine:latest", help="name:tag")
    parser.add_argument("--seed", default=None)
    parser.add_argument("--auth", choices=["bearer", "basic", "none"], default="bearer")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--token-expires-in", type=int, default=300)
    parser.add_argument("--ratelimit", type=int, default=100)
    parser.add_argument("--blob-rate", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from twisted.internet.task import react

    args = _parse_args(sys.argv[1:] if argv is None else argv)

    async def run(reactor: Any) -> None:
        switches = Switches(
            auth=args.auth,
            credentials=(args.username, args.password or "") if args.username else None,
            token_expires_in=args.token_expires_in,
            ratelimit_limit=args.ratelimit,
            ratelimit_remaining=args.ratelimit,
            blob_rate=args.blob_rate,
        )
        fake = FakeUpstream(reactor, switches=switches)
        name, _, tag = args.image.rpartition(":")
        image: Image = fake.content.add_image(
            name, tag, args.layer_size or [1 << 20], seed=args.seed
        )
        await fake.start(args.port, args.cdn_port)
        ready = {"url": fake.url, "cdn_url": fake.cdn_url, "image": image.as_json()}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        await Deferred()  # until killed

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
