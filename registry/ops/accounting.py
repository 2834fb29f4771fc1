"""
Per-request metrics, kept out of the handlers: `RequestAccounting` is told by the Site when a
request is handed to the application and when it is answered (from the access-log call
twisted.web already makes once per request) or abandoned by its client, and counts it (status,
duration, bytes in and out); `count_upload_sinks` wraps the Site's body-sink factory to know
which uploads are streaming now.

No resource wrapper and no ``notifyFinish`` Deferred per request: this runs for every request,
so it is a few dict updates on values the Site has at hand (measured: docs/monitoring.md).

Route kinds come from the path's shape alone (`route_kind`): no name validation, no storage,
nothing a client can turn into a new label value.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from registry.ops.metrics import METHOD_LABELS, HistogramChild, Metrics

if TYPE_CHECKING:
    from registry.http.request import RegistryRequest


def _v2_kind(rest: bytes) -> str:
    """
    The kind of ``/v2/<rest>``, read from its right-hand end (a repository name may contain
    ``blobs``, ``manifests`` and the like).  String splits, not regular expressions: this runs
    for every request.
    """
    head, _, last = rest.rpartition(b"/")
    name, slash, parent = head.rpartition(b"/")
    has_name = bool(slash and name)
    if parent == b"blobs" and last == b"uploads" and has_name:
        return "upload"  # <name>/blobs/uploads
    if parent == b"uploads" and name.endswith(b"/blobs") and len(name) > 6:
        return "upload"  # <name>/blobs/uploads/ and <name>/blobs/uploads/<id>
    if parent == b"tags" and last == b"list" and has_name:
        return "tags"
    if parent == b"list" and last == b"" and name.endswith(b"/tags") and len(name) > 5:
        return "tags"  # <name>/tags/list/
    if last and has_name:
        if parent == b"manifests":
            return "manifest"
        if parent == b"blobs":
            return "blob"
        if parent == b"referrers":
            return "referrers"
    return "other"


def route_kind(path: bytes) -> str:
    """One of `registry.ops.metrics.ROUTE_KINDS` for a request path (without the query)."""
    if path in (b"/v2", b"/v2/", b"/v2//"):
        return "base"
    if path.startswith(b"/v2/"):
        rest = path[4:]
        if rest in (b"_catalog", b"_catalog/"):
            return "catalog"
        return _v2_kind(rest)
    if path == b"/metrics":
        return "metrics"
    if path == b"/health" or path.startswith((b"/health/", b"/debug/health")):
        return "health"
    return "other"


def _body_size(request: Any) -> int:
    """Body bytes received: what a streaming sink took, or the buffered body's length."""
    sink = request.sink
    if sink is not None:
        return int(getattr(sink, "received", 0))
    content = request.content
    if isinstance(content, io.BytesIO):
        return content.getbuffer().nbytes
    return 0


class RequestAccounting:
    """
    The request metrics' side of `registry.http.request.RegistrySite`: ``started`` when a
    request goes to the application (its body is in), ``finished`` once per request, when its
    answer is complete or its client went away.  A request answered before it went to the
    application (an upload refused early) is counted when answered and was never in flight.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.counts = metrics.http
        self.duration = metrics.request_duration
        # Histogram children by (method, route), looked up once (the hot path).
        self._timers: dict[tuple[str, str], HistogramChild] = {}

    def started(self, request: RegistryRequest) -> None:
        kind = request.route_kind = route_kind(request.path)
        in_flight = self.counts.in_flight
        in_flight[kind] = in_flight.get(kind, 0) + 1

    def finished(self, request: RegistryRequest, status: int, elapsed: float) -> None:
        """Count ``request``, answered with ``status`` (499: its client went away first)."""
        counts = self.counts
        kind = request.route_kind
        if kind is None:  # answered before it reached the application
            kind = route_kind(request.path or request.uri.split(b"?", 1)[0])
        else:
            counts.in_flight[kind] -= 1
        method = METHOD_LABELS.get(request.method, "other")
        key = (method, kind, status)
        requests = counts.requests
        requests[key] = requests.get(key, 0) + 1
        received = _body_size(request)
        if received:
            counts.bytes_in[kind] = counts.bytes_in.get(kind, 0) + received
        sent = request.sentLength
        if sent:
            counts.bytes_out[kind] = counts.bytes_out.get(kind, 0) + sent
        timer = self._timers.get((method, kind))
        if timer is None:
            timer = self._timers[(method, kind)] = self.duration.labels(method, kind)
        timer.observe(elapsed)


def count_upload_sinks(factory: Any, metrics: Metrics) -> Any:
    """
    The Site's sink factory, counting in ``txregistry_uploads_open`` each upload body from its
    headers until the request is finished (or the client went away).
    """

    def counted(request: Any, method: bytes, uri: bytes, length: int | None) -> Any:
        sink = factory(request, method, uri, length)
        if sink is not None:
            metrics.uploads_open.inc()
            request.notifyFinish().addBoth(lambda _: metrics.uploads_open.dec())
        return sink

    return counted
