"""
Per-request metrics, kept out of the handlers: `MeasuredResource` wraps the application's root
resource and counts each request once it is finished (status, duration, bytes in and out),
and `count_upload_sinks` wraps the Site's body-sink factory to know which uploads are
streaming now.

Route kinds come from the path's shape alone (`route_kind`): no name validation, no storage,
nothing a client can turn into a new label value.
"""

from __future__ import annotations

import io
import time
from typing import Any

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from registry.ops.metrics import METHODS, Metrics


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
    sink = getattr(request, "sink", None)
    if sink is not None:
        return int(getattr(sink, "received", 0))
    content = getattr(request, "content", None)
    if isinstance(content, io.BytesIO):
        return content.getbuffer().nbytes
    return 0


@implementer(IResource)
class MeasuredResource:
    """
    The root resource, wrapped: every request rendered through it is counted when it
    finishes.  A leaf, like the Klein resource inside, so twisted.web hands it every path.
    """

    isLeaf = True

    def __init__(self, inner: IResource, metrics: Metrics) -> None:
        self.inner = inner
        self.counts = metrics.http
        self.duration = metrics.request_duration
        # Histogram children by (method, route), looked up once (the hot path).
        self._timers: dict[tuple[str, str], Any] = {}

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self  # never called for a leaf; part of IResource

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("MeasuredResource has no children")

    def render(self, request: Any) -> Any:
        kind = route_kind(request.path)
        method = request.method.decode("latin-1")
        if method not in METHODS:
            method = "other"
        started = getattr(request, "started", None) or time.monotonic()
        self.counts.started(kind)
        request.notifyFinish().addBoth(
            self._finished, request, method, kind, started, _body_size(request)
        )
        return self.inner.render(request)

    def _finished(
        self, result: object, request: Any, method: str, kind: str, started: float, received: int
    ) -> None:
        # A client gone before the answer: nginx's 499, not the status never sent.
        status = "499" if isinstance(result, Failure) else str(request.code)
        self.counts.finished(method, kind, status, received, int(request.sentLength))
        timer = self._timers.get((method, kind))
        if timer is None:
            timer = self._timers[(method, kind)] = self.duration.labels(method, kind)
        timer.observe(time.monotonic() - started)


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
