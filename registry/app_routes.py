"""
Klein's routes of the registry's own port: every path but the ``/v2/`` API's ordinary
requests, which `registry.front` answers without routing (the health checks, ``/metrics``,
``/sync/status``, the web UI, ``/v2/`` paths werkzeug treats differently, and the 404 for
anything else).

Imported by `registry.front` at the first request that needs it, not at start-up: Klein and
werkzeug (with http.server, socketserver, markupsafe, mimetypes) cost about 3 MiB resident in
each worker, and a registry that only serves the API never loads them
(tests/test_lean_imports.py).
"""

from __future__ import annotations

from typing import Any

import attrs
from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from registry.api.errors import NOT_FOUND, UNSUPPORTED, RegistryError
from registry.app import METHODS, RegistryApp, metrics_on_main_port
from registry.handlers import monitoring


@attrs.define
class KleinRoutes:
    """The routes, over the `RegistryApp` that answers the API and renders every error."""

    app: RegistryApp
    router = Klein()

    @router.route("/v2", methods=METHODS, strict_slashes=False)
    async def base(self, request: IRequest) -> bytes | None:
        return await self.app.dispatch(request, "")

    @router.route("/v2/<path:rest>", methods=METHODS)
    async def v2(self, request: IRequest, rest: str) -> bytes | None:
        return await self.app.dispatch(request, rest)

    @router.route("/ui/", branch=True, methods=METHODS)
    def ui(self, request: IRequest) -> Any:
        """
        The web UI (registry/ui), when ``[ui] enabled``.  Every method goes to it: one a page
        does not take is answered there (405 with ``Allow``, as a page), not with the API's 404.
        """
        if self.app.web_ui is None:
            path = request.path.decode("latin-1")[:300]
            raise RegistryError(NOT_FOUND, {"path": path}, "the web UI is disabled")
        return self.app.web_ui

    @router.route("/ui", methods=["GET", "HEAD"])
    def ui_root(self, request: IRequest) -> bytes:
        if self.app.web_ui is None:
            raise RegistryError(NOT_FOUND, {"path": "/ui"}, "the web UI is disabled")
        request.redirect(b"/ui/")
        return b""

    @router.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        """Prometheus text format, here only when `metrics_on_main_port` (see docs)."""
        if not metrics_on_main_port(self.app.ctx):
            raise RegistryError(NOT_FOUND, {"path": "/metrics"})
        return await monitoring.metrics_answer(self.app.ctx, request)

    @router.route("/sync/status", methods=["GET"])
    async def sync_status(self, request: IRequest) -> bytes:
        """Replication status, where /metrics is served (`metrics_on_main_port`)."""
        return await self._sync_status(request, None)

    @router.route("/sync/status/<name>", methods=["GET"])
    async def one_sync_status(self, request: IRequest, name: str) -> bytes:
        return await self._sync_status(request, name)

    async def _sync_status(self, request: IRequest, name: str | None) -> bytes:
        if not metrics_on_main_port(self.app.ctx):
            raise RegistryError(NOT_FOUND, {"path": request.path.decode("latin-1")[:300]})
        return await monitoring.sync_status_answer(self.app.ctx, request, name)

    @router.route("/health", methods=["GET", "HEAD"])
    async def health(self, request: IRequest) -> bytes:
        """For load balancers and monitors: 200 while storage answers, 503 with the reason."""
        return await monitoring.storage_answer(self.app.ctx, request)

    @router.route("/health/live", methods=["GET", "HEAD"])
    def live(self, request: IRequest) -> bytes:
        return monitoring.live_answer(request)

    @router.route("/health/ready", methods=["GET", "HEAD"])
    async def ready(self, request: IRequest) -> bytes:
        return await monitoring.ready_answer(self.app.ctx, request)

    @router.route("/", branch=True, methods=METHODS)
    async def elsewhere(self, request: IRequest) -> bytes:
        path = request.path.decode("latin-1")[:300]
        allow = self.app.fixed_allow(request.path)
        if allow is not None:  # a page that is there, asked with a method it does not take
            raise RegistryError(
                UNSUPPORTED,
                {"method": request.method.decode("latin-1"), "path": path},
                "method not allowed",
                status=405,
                headers={"Allow": allow},
            )
        raise RegistryError(NOT_FOUND, {"path": path})

    @router.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        """Klein's one error handler: `RegistryApp.answer_failure`."""
        return self.app.answer_failure(request, failure)


def klein_resource(app: RegistryApp) -> IResource:
    """The Klein resource serving ``app``'s routes."""
    resource: IResource = KleinRoutes(app).router.resource()
    return resource
