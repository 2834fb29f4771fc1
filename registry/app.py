"""
The Klein application: every ``/v2/...`` request is parsed by `registry.http.routes` and sent to
the handler registered for its resource kind and method; errors are rendered once, here, as the
OCI error envelope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException

from registry.api.errors import (
    NOT_FOUND,
    UNSUPPORTED,
    RegistryError,
)
from registry.auth.interfaces import AllowAll
from registry.failures import log_failure
from registry.front import FrontResource
from registry.handlers import blobs, limits, listings, manifests, monitoring, uploads
from registry.handlers.common import authorize, error_for
from registry.handlers.context import RegistryContext
from registry.http import responses
from registry.http.forwarded import TrustedProxies
from registry.http.request import RegistryRequest, RegistrySite
from registry.http.routes import Kind, Route, parse_route
from registry.ops.accounting import RequestAccounting, count_upload_sinks
from registry.proxy.errors import UpstreamError
from registry.storage.driver import StorageError
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
    (Kind.UPLOAD, b"DELETE"): uploads.delete_upload,
    (Kind.MANIFEST, b"GET"): manifests.get_manifest,
    (Kind.MANIFEST, b"HEAD"): manifests.get_manifest,
    (Kind.MANIFEST, b"PUT"): manifests.put_manifest,
    (Kind.MANIFEST, b"DELETE"): manifests.delete_manifest,
    (Kind.TAGS, b"GET"): listings.list_tags,
    (Kind.CATALOG, b"GET"): listings.list_catalog,
    (Kind.REFERRERS, b"GET"): listings.list_referrers,
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

    router = Klein()

    @router.route("/v2", methods=METHODS, strict_slashes=False)
    async def base(self, request: IRequest) -> bytes | None:
        return await self.dispatch(request, "")

    @router.route("/v2/<path:rest>", methods=METHODS)
    async def v2(self, request: IRequest, rest: str) -> bytes | None:
        return await self.dispatch(request, rest)

    @router.route("/ui/", branch=True, methods=["GET", "HEAD", "POST"])
    def ui(self, request: IRequest) -> Any:
        """The web UI (registry/ui), when ``[ui] enabled``."""
        if self.web_ui is None:
            raise RegistryError(NOT_FOUND, {"path": "/ui/"}, "the web UI is disabled")
        return self.web_ui

    @router.route("/ui", methods=["GET", "HEAD"])
    def ui_root(self, request: IRequest) -> bytes:
        request.redirect(b"/ui/")
        return b""

    @router.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        """Prometheus text format, here only when `metrics_on_main_port` (see docs)."""
        if not metrics_on_main_port(self.ctx):
            raise RegistryError(NOT_FOUND, {"path": "/metrics"})
        return await monitoring.metrics_answer(self.ctx, request)

    @router.route("/sync/status", methods=["GET"])
    async def sync_status(self, request: IRequest) -> bytes:
        """Replication status, where /metrics is served (`metrics_on_main_port`)."""
        return await self._sync_status(request, None)

    @router.route("/sync/status/<name>", methods=["GET"])
    async def one_sync_status(self, request: IRequest, name: str) -> bytes:
        return await self._sync_status(request, name)

    async def _sync_status(self, request: IRequest, name: str | None) -> bytes:
        if not metrics_on_main_port(self.ctx):
            raise RegistryError(NOT_FOUND, {"path": request.path.decode("latin-1")[:300]})
        return await monitoring.sync_status_answer(self.ctx, request, name)

    @router.route("/health", methods=["GET", "HEAD"])
    async def health(self, request: IRequest) -> bytes:
        """For load balancers and monitors: 200 while storage answers, 503 with the reason."""
        return await monitoring.storage_answer(self.ctx, request)

    @router.route("/health/live", methods=["GET", "HEAD"])
    def live(self, request: IRequest) -> bytes:
        return monitoring.live_answer(request)

    @router.route("/health/ready", methods=["GET", "HEAD"])
    async def ready(self, request: IRequest) -> bytes:
        return await monitoring.ready_answer(self.ctx, request)

    @router.route("/", branch=True, methods=METHODS)
    async def elsewhere(self, request: IRequest) -> bytes:
        raise RegistryError(NOT_FOUND, {"path": request.path.decode("latin-1")[:300]})

    async def dispatch(self, request: IRequest, rest: str) -> bytes | None:
        """Answer a ``/v2/`` request; ``rest`` is its path after ``/v2/`` ("" for the base)."""
        request.setHeader(*responses.API_VERSION_HEADER)
        route = parse_route(rest, read=request.method in (b"GET", b"HEAD"))
        refused = getattr(request, "sink", None)
        if isinstance(refused, limits.RefusedBody):
            # Refused from its Content-Length: answered already over HTTP/1.x (this answer is
            # dropped), only now over HTTP/2, which has no early answers.
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
            route = rewriter.rewrite_route(request, route)
        handler = self.handlers.get((route.kind, request.method))
        if handler is None:
            raise RegistryError(
                UNSUPPORTED,
                {"method": request.method.decode("latin-1"), "resource": route.kind.value},
                "method not allowed",
            )
        return await handler(self.ctx, request, route)

    @router.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        """Klein's one error handler: `answer_failure`."""
        return self.answer_failure(request, failure)

    def answer_failure(self, request: IRequest, failure: Failure) -> bytes:
        """
        The answer to a request whose route failed, by the failure's type, most specific
        first; for Klein's routes and for the ``/v2/`` API `registry.front` serves without it.
        """
        if failure.check(RegistryError):
            return self.registry_error(request, failure)
        if failure.check(HTTPException):
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
        return responses.error(request, RegistryError(code, detail, status=status))

    def storage_error(self, request: IRequest, failure: Failure) -> bytes:
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
        Storage and upstream failures say what went wrong in one line (the pull-through
        cache logs its upstream's failure itself); anything else keeps its traceback.
        """
        cause = failure.value.__cause__ if failure.value is not None else None
        fields = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1")[:300],
        }
        if isinstance(cause, StorageError | UpstreamError):
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
        FrontResource(app, app.router.resource(), METHODS),
        sink_factory=count_upload_sinks(sink_factory, ctx.metrics),
        max_body_size=max(ctx.config.http.max_body_size, ctx.config.storage.max_manifest_size),
        access_log=ctx.config.log.accesslog,
        after_request=after_request,
        timeout=ctx.config.http.timeout,
        trusted_proxies=TrustedProxies.from_words(ctx.config.http.trusted_proxies),
        observer=RequestAccounting(ctx.metrics),
    )
    return site
