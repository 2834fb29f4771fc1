"""
Health and metrics over HTTP, outside ``/v2`` and without authentication (load balancers and
Prometheus have no registry credentials):

- ``/health/live``: 200 while the process serves (no I/O);
- ``/health/ready``: every readiness check (storage, each cache's index loaded, each
  upstream), 503 naming the failing ones;
- ``/health``: the storage check alone, the body kept as it always was;
- ``/metrics``: Prometheus text format;
- ``/sync/status``: every replication's state (``[sync:NAME]``), ``/sync/status/<name>`` one.

`registry.handlers.debug_site` serves the same on the ``[debug] addr`` listener, where
``/debug/health`` is registry:2's name for readiness.  Which of these the main port serves is
decided in `registry.app` (see `metrics_on_main_port`); `registry.app_routes` routes them.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from registry.api.errors import NOT_FOUND, RegistryError
from registry.handlers.context import RegistryContext
from registry.http import responses
from registry.ops.health import STORAGE
from registry.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

# How long ``/sync/status`` waits, right after a start, for the syncs' saved states to be read
# back (storage that hangs at start must not hang it; it then shows what is known).
SYNC_STATE_WAIT = 5.0


def live_answer(request: IRequest) -> bytes:
    return responses.json_body(request, 200, {"status": "ok"})


async def ready_answer(ctx: RegistryContext, request: IRequest) -> bytes:
    """503 while a check fails; 200 while every check passes, some perhaps degraded (a full
    disk: pulls are served), with ``"status": "degraded"`` and their names for monitoring."""
    results = await ctx.health.run()
    failing = [result.name for result in results if not result.ok]
    degraded = [result.name for result in results if result.ok and result.degraded]
    value: dict[str, Any] = {
        "status": "unavailable" if failing else "degraded" if degraded else "ok",
        "checks": {result.name: result.as_json() for result in results},
    }
    if failing:
        value["failing"] = failing
    if degraded:
        value["degraded"] = degraded
    return responses.json_body(request, 503 if failing else 200, value)


async def storage_answer(ctx: RegistryContext, request: IRequest) -> bytes:
    """``/health`` as it always answered: ``{"status": "ok"}``, or 503 with the reason; a full
    disk, where pulls are served, is 200 ``{"status": "degraded"}`` with the reason."""
    (result,) = await ctx.health.run([STORAGE])
    if result.ok and result.degraded:
        return responses.json_body(request, 200, {"status": "degraded", "reason": result.error})
    if result.ok:
        return responses.json_body(request, 200, {"status": "ok"})
    return responses.json_body(request, 503, {"status": "unavailable", "reason": result.error})


async def local_metrics(ctx: RegistryContext) -> bytes:
    """This process's own metrics (a worker's share, with several workers)."""
    await ctx.metrics.gc.refresh(ctx.driver, ctx.reactor)
    await ctx.sync.restored(1.0, ctx.reactor)  # a scrape waits as long for the gc record
    return ctx.metrics.render()


async def metrics_answer(ctx: RegistryContext, request: IRequest) -> bytes:
    tree = ctx.metrics.tree
    if tree is None:
        return responses.body(request, 200, await local_metrics(ctx), METRICS_CONTENT_TYPE)
    try:
        text = await tree()
    except Exception as exc:  # the supervisor is gone or stuck: say so, not a 500
        reason = str(exc) or type(exc).__name__
        message = f"metrics of the other workers unavailable: {reason}\n".encode()
        return responses.body(request, 503, message, "text/plain; charset=utf-8")
    return responses.body(request, 200, text, METRICS_CONTENT_TYPE)


async def sync_status_answer(ctx: RegistryContext, request: IRequest, name: str | None) -> bytes:
    """Every sync's status as JSON, or one sync's (404 for a name that is not configured)."""
    if ctx.sync.from_storage:
        from registry.sync.service import refresh_from_storage

        await refresh_from_storage(ctx, SYNC_STATE_WAIT)
    else:
        await ctx.sync.restored(SYNC_STATE_WAIT, ctx.reactor)
    if name is None:
        return responses.json_body(request, 200, ctx.sync.as_json())
    status = ctx.sync.syncs.get(name)
    if status is None:
        raise RegistryError(NOT_FOUND, {"sync": name[:100]}, "no such sync")
    return responses.json_body(request, 200, status.as_json())
