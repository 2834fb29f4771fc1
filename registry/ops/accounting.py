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
import re
import time
from typing import Any

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from registry.ops.metrics import METHODS, Metrics

# Right-hand ends of /v2/<name>/... paths; the name itself may hold any of these words.
_V2_KINDS: list[tuple[str, re.Pattern[bytes]]] = [
    ("tags", re.compile(rb".+/tags/list/?")),
    ("upload", re.compile(rb".+/blobs/uploads(/[^/]*)?")),
    ("manifest", re.compile(rb".+/manifests/[^/]+")),
    ("blob", re.compile(rb".+/blobs/[^/]+")),
    ("referrers", re.compile(rb".+/referrers/[^/]+")),
]


def route_kind(path: bytes) -> str:
    """One of `registry.ops.metrics.ROUTE_KINDS` for a request path (without the query)."""
    if path in (b"/v2", b"/v2/"):
        return "base"
    if path.startswith(b"/v2/"):
        rest = path[4:]
        if rest in (b"_catalog", b"_catalog/"):
            return "catalog"
        for kind, pattern in _V2_KINDS:
            if pattern.fullmatch(rest):
                return kind
        return "other"
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
        self.metrics = metrics
        # Children of the labelled metrics, looked up once per label set (the hot path).
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

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
        received = _body_size(request)
        in_flight = self._child(self.metrics.in_flight, kind)
        in_flight.inc()

        def finished(result: object) -> None:
            in_flight.dec()
            # A client gone before the answer: nginx's 499, not the status never sent.
            status = "499" if isinstance(result, Failure) else str(request.code)
            self._child(self.metrics.requests, method, kind, status).inc()
            self._child(self.metrics.request_duration, method, kind).observe(
                time.monotonic() - started
            )
            if received:
                self._child(self.metrics.bytes_in, kind).inc(received)
            sent = int(getattr(request, "sentLength", 0))
            if sent:
                self._child(self.metrics.bytes_out, kind).inc(sent)

        request.notifyFinish().addBoth(finished)
        return self.inner.render(request)


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
