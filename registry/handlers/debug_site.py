"""
The ``[debug] addr`` listener's site: the monitoring answers of `registry.handlers.monitoring`
and nothing of ``/v2``.  Imported only where that listener is configured (it routes with
Klein, which a worker otherwise loads only for its first request outside the API).
"""

from __future__ import annotations

from typing import Any

import attrs
from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from registry.api.errors import NOT_FOUND, RegistryError
from registry.handlers.context import RegistryContext
from registry.handlers.monitoring import (
    live_answer,
    metrics_answer,
    ready_answer,
    storage_answer,
    sync_status_answer,
)
from registry.http import responses
from registry.http.unbranded import UnbrandedRequest


@attrs.define
class DebugApp:
    """The ``[debug] addr`` listener's application: monitoring only, nothing of ``/v2``."""

    ctx: RegistryContext
    router = Klein()

    @router.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        return await metrics_answer(self.ctx, request)

    @router.route("/health/live", methods=["GET", "HEAD"])
    def live(self, request: IRequest) -> bytes:
        return live_answer(request)

    @router.route("/sync/status", methods=["GET"])
    async def sync_status(self, request: IRequest) -> bytes:
        return await sync_status_answer(self.ctx, request, None)

    @router.route("/sync/status/<name>", methods=["GET"])
    async def one_sync_status(self, request: IRequest, name: str) -> bytes:
        return await sync_status_answer(self.ctx, request, name)

    @router.route("/health/ready", methods=["GET", "HEAD"])
    @router.route("/debug/health", methods=["GET", "HEAD"])
    async def ready(self, request: IRequest) -> bytes:
        return await ready_answer(self.ctx, request)

    @router.route("/health", methods=["GET", "HEAD"])
    async def health(self, request: IRequest) -> bytes:
        return await storage_answer(self.ctx, request)

    @router.route("/", branch=True)
    def elsewhere(self, request: IRequest) -> bytes:
        error = RegistryError(NOT_FOUND, {"path": request.path.decode("latin-1")[:300]})
        return responses.error(request, error)

    @router.handle_errors(RegistryError)
    def registry_error(self, request: IRequest, failure: Failure) -> bytes:
        """The OCI error envelope, as on the main port (``/sync/status/<unknown>``: 404)."""
        error = failure.value
        assert isinstance(error, RegistryError)
        return responses.error(request, error)


class _QuietSite(Site):
    """No access log: a scrape every few seconds and a probe every second would drown it."""

    requestFactory = UnbrandedRequest

    def log(self, request: Any) -> None:
        pass


def make_debug_site(ctx: RegistryContext) -> Site:
    site = _QuietSite(DebugApp(ctx).router.resource())  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    return site
