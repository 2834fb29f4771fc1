"""
The registry's application: every ``/v2/...`` request is parsed by `registry.http.routes` and
sent to the handler registered for its resource kind and method; errors are rendered once, here,
as the OCI error envelope.  `registry.front` sends it the API's requests; everything else goes
through Klein's routes (`registry.app_routes`), built at the first request that needs them.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from registry.api.errors import (
    NOT_FOUND,
    UNSUPPORTED,
    RegistryError,
)
from registry.auth.interfaces import PULL, AllowAll, repository
from registry.failures import log_failure
from registry.front import FrontResource
from registry.handlers import blobs, limits, listings, manifests, uploads
from registry.handlers.common import authorize, error_for
from registry.handlers.context import RegistryContext
from registry.http import responses
from registry.http.forwarded import TrustedProxies
from registry.http.request import RegistryRequest, RegistrySite
from registry.http.routes import Kind, Route, UnservedNamespace, parse_route
from registry.ops.accounting import RequestAccounting, count_upload_sinks
from registry.proxy.errors import CorruptBody, ResumeFailed, UpstreamError
from registry.storage.driver import StorageError, WriteTakenOver
from registry.ui import ui_resource

log = Logger()

Handler = Callable[[RegistryContext, IRequest, Route], Awaitable[bytes | None]]


async def _base(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    await authorize(ctx, request, [])
    return responses.json_body(request, 200, {})


# (resource kind, method) -> handler: every route of the API, in one table.
HANDLERS: dict[tuple[Kind, bytes], Handler] = {
    (Kind.BASE, b"GET"): _base,
    (Kind.BASE, b"HEAD"): _base,
    (Kind.BLOB, b"GET"): blobs.get_blob,
    (Kind.BLOB, b"HEAD"): blobs.get_blob,
    (Kind.BLOB, b"DELETE"): blobs.delete_blob,
    (Kind.UPLOADS, b"POST"): uploads.start_upload,
    (Kind.UPLOAD, b"PATCH"): uploads.patch_upload,
    (Kind.UPLOAD, b"PUT"): uploads.put_upload,
    (Kind.UPLOAD, b"GET"): uploads.get_upload,
    (Kind.UPLOAD, b"HEAD"): uploads.get_upload,
    (Kind.UPLOAD, b"DELETE"): uploads.delete_upload,
    (Kind.MANIFEST, b"GET"): manifests.get_manifest,
    (Kind.MANIFEST, b"HEAD"): manifests.get_manifest,
    (Kind.MANIFEST, b"PUT"): manifests.put_manifest,
    (Kind.MANIFEST, b"DELETE"): manifests.delete_manifest,
    # HEAD wherever GET is (RFC 9110 section 9.1), the listings too: registry:2 refuses it
    # on them, and a client checking a listing's headers (its Link, its size) need not read it.
    (Kind.TAGS, b"GET"): listings.list_tags,
    (Kind.TAGS, b"HEAD"): listings.list_tags,
    (Kind.CATALOG, b"GET"): listings.list_catalog,
    (Kind.CATALOG, b"HEAD"): listings.list_catalog,
    (Kind.REFERRERS, b"GET"): listings.list_referrers,
    (Kind.REFERRERS, b"HEAD"): listings.list_referrers,
}


# Every method the /v2/ routes take (werkzeug answers others with 405).
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def metrics_on_main_port(ctx: RegistryContext) -> bool:
    """
    ``/metrics`` on the registry's own port only where that port is open to anyone anyway
    (no authentication) and no ``[debug] addr`` listener is configured for it.  A registry
    that denies by default does not publish its traffic figures to anonymous callers.
    """
    return not ctx.config.debug.addr and isinstance(ctx.access, AllowAll)


@attrs.define
class RegistryApp:
    ctx: RegistryContext
    handlers: dict[tuple[Kind, bytes], Handler] = attrs.field(factory=lambda: dict(HANDLERS))
    # The web UI (registry.ui) mounted under /ui/, None when ``[ui] enabled = false``.
    web_ui: IResource | None = None

    async def dispatch(self, request: IRequest, rest: str) -> bytes | None:
        """Answer a ``/v2/`` request; ``rest`` is its path after ``/v2/`` ("" for the base)."""
        request.setHeader(*responses.API_VERSION_HEADER)
        route = parse_route(rest, read=request.method in (b"GET", b"HEAD"))
        refused = getattr(request, "sink", None)
        if isinstance(refused, limits.RefusedBody):
            # Refused from its Content-Length: answered already over HTTP/1.x (this answer is
            # dropped; over HTTP/2 the route does not run then), or only now, when the whole
            # body came before the refusal was seen (over HTTP/2, with the headers).
            raise refused.error
        if getattr(request, "body_too_large", False):  # a chunked body past the limit
            config = self.ctx.config
            if route.kind is Kind.MANIFEST:
                raise limits.manifest_too_large(config.storage.max_manifest_size)
            raise limits.body_too_large(
                max(config.http.max_body_size, config.storage.max_manifest_size)
            )
        # Pull-through cache: containerd's ?ns= selects the upstream (registry.proxy.routing).
        rewriter = self.ctx.route_rewriter
        if rewriter is not None:
            try:
                rewritten = rewriter.rewrite_route(request, route)
            except UnservedNamespace as exc:
                # Which namespaces have an upstream here is told only to a caller who may
                # read the name a served one would have: anyone else gets its challenge.
                await authorize(self.ctx, request, [repository(exc.checked_name, PULL)])
                raise
            if rewritten.namespace:
                # Checked before ``OCI-Namespace`` is said (the handler checks again, as
                # for any request): a refused caller's answer is the same for a namespace
                # served here and for one that is not.
                await authorize(self.ctx, request, [repository(rewritten.name, PULL)])
                request.setHeader("OCI-Namespace", rewritten.namespace)
            route = rewritten
        handler = self.handlers.get((route.kind, request.method))
        if handler is None:
            raise RegistryError(
                UNSUPPORTED,
                {"method": request.method.decode("latin-1"), "resource": route.kind.value},
                "method not allowed",
                headers={"Allow": self._allow(route)},
            )
        try:
            return await handler(self.ctx, request, route)
        except RegistryError as exc:
            # A method refused by the configuration (read-only mode, deletes disabled).
            if exc.status == 405 and "Allow" not in exc.headers:
                exc.headers["Allow"] = self._allow(route)
            raise

    def _allow(self, route: Route) -> str:
        """RFC 9110 section 15.5.6: a 405 says which methods the resource takes, here and
        now: only reads in read-only mode, no DELETE while deletes are disabled."""
        methods = [m for m in METHODS if (route.kind, m.encode()) in self.handlers]
        config = self.ctx.config
        if config.maintenance.readonly:
            methods = [m for m in methods if m in ("GET", "HEAD")]
        elif not config.storage.delete_enabled and route.kind in (Kind.MANIFEST, Kind.BLOB):
            # (Cancelling an upload is a DELETE that deletes_enabled does not govern.)
            methods = [m for m in methods if m != "DELETE"]
        return ", ".join(methods)

    def _allow_unknown(self, request: IRequest, error: object) -> str:
        """The ``Allow`` of a 405 to a method no route takes (werkzeug's ``FOO /v2/``): for
        the API, what its resource takes; for the fixed pages, theirs; elsewhere, what
        werkzeug says the route takes."""
        path = request.path
        if path == b"/v2" or path.startswith(b"/v2/"):
            return self._allow(parse_route(path[4:].decode("utf-8", "replace"), read=True))
        fixed = self.fixed_allow(path)
        if fixed is not None:
            return fixed
        return ", ".join(sorted(getattr(error, "valid_methods", None) or ()))

    def fixed_allow(self, path: bytes) -> str | None:
        """The methods a page outside the API and the UI takes (the health answers, and
        /metrics and /sync/status where they are served here); None for other paths."""
        if path in (b"/health", b"/health/live", b"/health/ready", b"/ui"):
            return "GET, HEAD"
        served = metrics_on_main_port(self.ctx)
        if served and (path in (b"/metrics", b"/sync/status") or path.startswith(b"/sync/status/")):
            return "GET"
        return None

    def answer_failure(self, request: IRequest, failure: Failure) -> bytes:
        """
        The answer to a request whose route failed, by the failure's type, most specific
        first; for Klein's routes and for the ``/v2/`` API `registry.front` serves without it.
        """
        if failure.check(RegistryError):
            return self.registry_error(request, failure)
        # Only Klein's routes raise werkzeug's errors; named, so that werkzeug is imported
        # only with them (`registry.app_routes`).
        if failure.check("werkzeug.exceptions.HTTPException"):
            return self.routing_error(request, failure)
        if failure.check(StorageError):
            return self.storage_error(request, failure)
        if failure.check(responses.ResponseInterrupted):
            return self.interrupted(request, failure)
        return self.unexpected_error(request, failure)

    def registry_error(self, request: IRequest, failure: Failure) -> bytes:
        request.setHeader(*responses.API_VERSION_HEADER)
        error = failure.value
        assert isinstance(error, RegistryError)
        return responses.error(request, error)

    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        """Paths Klein's router cannot match at all (control characters, say)."""
        request.setHeader(*responses.API_VERSION_HEADER)
        status = getattr(failure.value, "code", 404) or 404
        code = UNSUPPORTED if status == 405 else NOT_FOUND
        detail = {"path": request.uri.decode("latin-1")[:300]}
        headers = {"Allow": self._allow_unknown(request, failure.value)} if status == 405 else {}
        error = RegistryError(code, detail, status=status, headers=headers)
        return responses.error(request, error)

    def storage_error(self, request: IRequest, failure: Failure) -> bytes:
        if getattr(request, "answered_early", False):
            # An upload body refused while it came: logged and answered then, in one line
            # (`registry.handlers.uploads`); what is written now is dropped.
            return b""
        if failure.check(WriteTakenOver):
            # The client's upload went on in another request: said in the answer, and no
            # storage failure to log.
            log.info(
                "{method} {uri}: {reason}",
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1")[:300],
                reason=str(failure.value),
            )
            return responses.error(request, error_for(failure.value))
        log_failure(
            log,
            failure,
            "storage failure on {method} {uri}",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1")[:300],
        )
        return responses.error(request, error_for(failure.value))

    def interrupted(self, request: IRequest, failure: Failure) -> bytes:
        """
        A body that failed after the status line went out: the connection is already
        dropped (`responses.stream`), so there is nothing left to answer, only to log.
        Storage and upstream failures, and a fleet body whose bytes did not hash to its
        digest or that could not be resumed, say what went wrong in one line (the
        pull-through cache logs its upstream's failure itself); anything else keeps its
        traceback.
        """
        cause = failure.value.__cause__ if failure.value is not None else None
        fields = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1")[:300],
        }
        if isinstance(cause, StorageError | UpstreamError | CorruptBody | ResumeFailed):
            log.warn("{method} {uri}: body cut short: {reason}", reason=str(cause), **fields)
        else:
            shown = Failure(cause) if cause is not None else failure
            log.failure("{method} {uri}: body cut short", shown, **fields)
        return b""

    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(CancelledError):
            return b""
        log.failure(
            "unexpected error on {method} {uri}",
            failure,
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1")[:300],
        )
        request.setHeader(*responses.API_VERSION_HEADER)
        return responses.error(request, error_for(failure.value))


def _klein_resource(app: RegistryApp) -> IResource:
    from registry.app_routes import klein_resource

    return klein_resource(app)


def make_site(
    ctx: RegistryContext, after_request: Callable[[int], None] | None = None
) -> RegistrySite:
    app = RegistryApp(ctx, web_ui=ui_resource(ctx) if ctx.config.ui.enabled else None)

    def sink_factory(
        request: RegistryRequest, method: bytes, uri: bytes, length: int | None
    ) -> Any:
        sink = uploads.upload_sink(ctx, request, method, uri, length)
        if sink is None:  # not an upload: refused at once if announced over its limit
            return limits.refuse_by_length(ctx, method, uri, length)
        return sink

    site = RegistrySite(
        FrontResource(app, functools.partial(_klein_resource, app), METHODS),
        sink_factory=count_upload_sinks(sink_factory, ctx.metrics),
        max_body_size=max(ctx.config.http.max_body_size, ctx.config.storage.max_manifest_size),
        access_log=ctx.config.log.accesslog,
        after_request=after_request,
        timeout=ctx.config.http.timeout,
        trusted_proxies=TrustedProxies.from_words(ctx.config.http.trusted_proxies),
        observer=RequestAccounting(ctx.metrics),
    )
    return site
