"""
The registry's Prometheus metrics, on a `CollectorRegistry` of its own (one per
`RegistryContext`, not a global default, so that tests and several registries in one process
do not share or clash over counters).  `registry.ops.prometheus` is the metrics library (why
not prometheus_client: its docstring).

Other components add their metrics to ``ctx.metrics.registry`` with that library's API
(``Counter(..., registry=ctx.metrics.registry)``, prometheus_client's names), or register a
collector for values that live in their own objects (`Metrics.register`, `Metrics.collect`).
docs/monitoring.md lists every metric.

Label values are never chosen by clients: routes are a fixed set of kinds (`ROUTE_KINDS`),
methods outside the API's become ``other``, statuses are the server's own.  A repository name
as a label would let any client grow the scrape without bound.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

import attrs

from registry.ops.gc_report import GCReport
from registry.ops.metrics_tree import format_value
from registry.ops.prometheus import (
    CONTENT_TYPE_PLAIN_0_0_4,
    Collector,
    CollectorRegistry,
    Counter,
    CounterMetricFamily,
    Family,
    Gauge,
    GaugeMetricFamily,
    HistogramMetricFamily,
    generate_latest,
)
from registry.ops.prometheus import Sample as PromSample

# The classic text format: understood by every Prometheus and by prometheus_client's parser.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

ROUTE_KINDS = (
    "base",
    "blob",
    "upload",
    "manifest",
    "tags",
    "catalog",
    "referrers",
    "health",
    "metrics",
    "other",
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A request's method as its label value, read from the bytes twisted.web parsed (one dict
# lookup per request instead of a decode and a set test).
METHOD_LABELS = {method.encode(): method for method in METHODS}

# From a cached manifest HEAD (~1 ms) to a multi-GiB blob transfer (minutes).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STORAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)

# (sample name, labels, value), as `Metrics.collect`'s callables yield them.
Sample = tuple[str, Mapping[str, str], float]
SampleSource = Callable[[], Iterable[Sample]]


class SampleCollector:
    """
    One metric family whose values are read at scrape time from objects that own them (the
    proxy's per-upstream counters): a collector over a callable.
    """

    def __init__(self, name: str, help: str, kind: str, source: SampleSource) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"{name}: kind must be counter or gauge, not {kind!r}")
        self.name = name
        self.help = help
        self.kind = kind
        self.source = source

    def _family(self, labels: Iterable[str]) -> Family:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=list(labels))
        return GaugeMetricFamily(self.name, self.help, labels=list(labels))

    def describe(self) -> Iterator[Family]:
        """Names only, so that the registry refuses a second family of the same name."""
        yield self._family(())

    def collect(self) -> Iterator[Family]:
        samples = list(self.source())
        keys = sorted(samples[0][1]) if samples else []
        family = self._family(keys)
        for _name, labels, value in samples:
            family.add_metric([labels[key] for key in keys], value)
        yield family


class HistogramChild:
    """
    One label set's buckets, updated in the reactor thread: a list increment and a float
    addition per observation, where a prometheus_client child takes a lock per bucket and
    one for the sum.
    """

    __slots__ = ("bounds", "counts", "created", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # Not cumulative: the observations in (bounds[i-1], bounds[i]], then above the last.
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class PlainHistogram:
    """
    A histogram family kept as `HistogramChild` objects and turned into a metric family at
    scrape time (a collector), with the samples prometheus_client's
    own `Histogram` exposes: ``_bucket`` (cumulative, ``le`` up to ``+Inf``), ``_count``,
    ``_sum`` and ``_created`` per label set.  ``labels(...)`` answers the same child every time;
    callers on a hot path keep it.
    """

    def __init__(
        self, name: str, help: str, labelnames: Iterable[str], buckets: Iterable[float]
    ) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(float(bound) for bound in buckets))
        self._le = [format_value(b) for b in self.bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}")
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def describe(self) -> Iterator[Family]:
        yield HistogramMetricFamily(self.name, self.help, labels=self.labelnames)

    def collect(self) -> Iterator[Family]:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labelnames)
        for values, child in sorted(self._children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._le, child.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_histogram(values, buckets, child.total)
            labels = dict(zip(self.labelnames, values, strict=True))
            family.samples.append(PromSample(self.name + "_created", labels, child.created))
        yield family


@attrs.define(eq=False)
class RequestCounts:
    """
    The per-request counters, as plain dicts updated in the reactor thread and turned into
    metric families at scrape time: a dict increment costs a tenth of a prometheus_client
    child's locked one, and these change on every request (measured: docs/monitoring.md).
    """

    # (method, route, status) -> requests answered; the status as an int until scraped.
    requests: dict[tuple[str, str, int], int] = attrs.field(factory=dict)
    bytes_in: dict[str, int] = attrs.field(factory=dict)
    bytes_out: dict[str, int] = attrs.field(factory=dict)
    in_flight: dict[str, int] = attrs.field(factory=dict)

    def _families(self) -> list[Family]:
        return [
            CounterMetricFamily(
                "txregistry_http_requests_total",
                "HTTP requests answered, by method, route kind and status.",
                labels=["method", "route", "status"],
            ),
            CounterMetricFamily(
                "txregistry_http_request_body_bytes_total",
                "Request body bytes received (blob uploads included), by route kind.",
                labels=["route"],
            ),
            CounterMetricFamily(
                "txregistry_http_response_body_bytes_total",
                "Response body bytes sent, by route kind.",
                labels=["route"],
            ),
            GaugeMetricFamily(
                "txregistry_http_requests_in_flight",
                "Requests being handled now (after their body arrived), by route kind.",
                labels=["route"],
            ),
        ]

    def describe(self) -> Iterator[Family]:
        return iter(self._families())

    def collect(self) -> Iterator[Family]:
        requests, received, sent, in_flight = self._families()
        for (method, route, status), count in sorted(self.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        for family, values in ((received, self.bytes_in), (sent, self.bytes_out)):
            for route, amount in sorted(values.items()):
                family.add_metric([route], amount)
        for route, count in sorted(self.in_flight.items()):
            in_flight.add_metric([route], count)
        return iter([requests, received, sent, in_flight])


@attrs.define(eq=False)
class Metrics:
    """
    The process's metrics.  The request, storage and upload metrics are fields (updated by
    `registry.ops.accounting` and `registry.ops.storage_metrics`); anything else is added to
    ``registry``.
    """

    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry)
    # With several worker processes: the whole tree's scrape (registry.server.workers),
    # which /metrics answers instead of this process's own.
    tree: Callable[[], Awaitable[bytes]] | None = None
    http: RequestCounts = attrs.field(init=False)
    request_duration: PlainHistogram = attrs.field(init=False)
    storage_duration: PlainHistogram = attrs.field(init=False)
    storage_errors: Counter = attrs.field(init=False)
    uploads_open: Gauge = attrs.field(init=False)
    uploads_purged: Counter = attrs.field(init=False)
    # The last ``txregistry gc`` run's report; refreshed from storage by the /metrics route.
    gc: GCReport = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.http = RequestCounts()
        r.register(self.http)
        self.request_duration = PlainHistogram(
            "txregistry_http_request_duration_seconds",
            "Time from the request's first byte to the response's last, by method and route.",
            ["method", "route"],
            REQUEST_BUCKETS,
        )
        r.register(self.request_duration)
        self.storage_duration = PlainHistogram(
            "txregistry_storage_operation_duration_seconds",
            "Storage driver calls, by driver and operation (reader/writer: until opened).",
            ["driver", "operation"],
            STORAGE_BUCKETS,
        )
        r.register(self.storage_duration)
        self.storage_errors = Counter(
            "txregistry_storage_errors_total",
            "Storage driver calls that failed (a missing path is not a failure).",
            ["driver", "operation"],
            registry=r,
        )
        self.uploads_open = Gauge(
            "txregistry_uploads_open",
            "Upload requests whose body is streaming into storage now.",
            registry=r,
        )
        self.uploads_purged = Counter(
            "txregistry_uploads_purged_total",
            "Abandoned uploads removed by the periodic purge.",
            registry=r,
        )
        self.gc = GCReport()
        r.register(self.gc)

    def register(self, collector: Collector) -> None:
        """Add a collector (its ``describe`` names are checked for clashes)."""
        self.registry.register(collector)

    def collect(self, name: str, help: str, kind: str, source: SampleSource) -> None:
        """
        Add the family ``name`` (``counter`` or ``gauge``) whose samples ``source`` yields as
        ``(name, labels, value)`` at each scrape; every sample has the same label names.
        """
        self.register(SampleCollector(name, help, kind, source))

    def render(self) -> bytes:
        """The text exposition of every metric (cheap: a few hundred lines)."""
        return generate_latest(self.registry)
