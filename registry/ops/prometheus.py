"""
The part of a Prometheus client a registry process uses: a registry of collectors, counters
and gauges with labels, metric families built at scrape time, and the classic text format.

Why not prometheus_client: its package imports its HTTP exposition servers and push gateway
client at once (``http.server``, ``socketserver``, ``wsgiref``, ``gzip``, ``urllib.request``
and the standard library's ``ssl``), about 1 MiB resident in every worker, and ``ssl`` keeps
the workers of a plain-HTTP registry from leaving it out (`registry.lean_imports`).  What the
registry needs of it is small, and written here with the same names and the same output:

- `Family` is prometheus_client's ``Metric`` (``CounterMetricFamily`` and the others are its
  constructors here): ``name``, ``documentation``, ``type``, ``samples``; a counter's name is
  kept without ``_total``, its samples carry it;
- `CollectorRegistry.register` refuses a collector whose ``describe`` names clash with one
  registered before (``ValueError``), as prometheus_client's does;
- `generate_latest` writes what prometheus_client's ``generate_latest`` writes for the same
  families, byte for byte (tests/ops/test_prometheus.py compares them): families in
  registration order, label names sorted, ``_created`` samples after the family as a gauge of
  their own, values in Go's float formatting (`registry.ops.metrics_tree.format_value`).

Every update happens in the reactor thread, so nothing here takes a lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol

from registry.ops.metrics_tree import format_value

# The classic text format: understood by every Prometheus and by prometheus_client's parser.
CONTENT_TYPE_PLAIN_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"

# The samples each family type adds to its name (a clash on any of them is refused).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": (),
}


class Sample(NamedTuple):
    """One line of the exposition: ``name{labels} value``."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None


class Family:
    """A metric family and its samples, as a collector yields it at each scrape."""

    def __init__(
        self, name: str, documentation: str, kind: str, labels: Sequence[str] = ()
    ) -> None:
        if kind == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]
        self.name = name
        self.documentation = documentation
        self.type = kind
        self.labels = tuple(labels)
        self.samples: list[Sample] = []

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """A counter's or gauge's value for one label set, in ``self.labels``' order."""
        suffix = "_total" if self.type == "counter" else ""
        self.samples.append(Sample(self.name + suffix, self._labels(labels), float(value)))

    def add_histogram(
        self, labels: Sequence[str], buckets: Iterable[tuple[str, float]], total: float
    ) -> None:
        """A histogram's cumulative ``(le, count)`` buckets, up to ``+Inf``, and its sum."""
        values = self._labels(labels)
        count = 0.0
        for le, count in buckets:
            self.samples.append(Sample(self.name + "_bucket", {**values, "le": le}, count))
        self.samples.append(Sample(self.name + "_count", values, count))
        self.samples.append(Sample(self.name + "_sum", values, float(total)))

    def _labels(self, values: Sequence[str]) -> dict[str, str]:
        return dict(zip(self.labels, values, strict=True))


def CounterMetricFamily(
    name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
) -> Family:
    family = Family(name, documentation, "counter", labels)
    if value is not None:
        family.add_metric((), value)
    return family


def GaugeMetricFamily(
    name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
) -> Family:
    family = Family(name, documentation, "gauge", labels)
    if value is not None:
        family.add_metric((), value)
    return family


def HistogramMetricFamily(name: str, documentation: str, labels: Sequence[str] = ()) -> Family:
    return Family(name, documentation, "histogram", labels)


class Collector(Protocol):
    """Anything whose ``collect`` yields families at each scrape (``describe`` is optional)."""

    def collect(self) -> Iterable[Family]: ...


class CollectorRegistry:
    """The collectors of one process's metrics, in registration order."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._names: set[str] = set()

    def register(self, collector: Collector) -> None:
        """Add ``collector``; ValueError when a name its ``describe`` gives is taken already."""
        describe = getattr(collector, "describe", None)
        names: list[str] = []
        for family in describe() if describe is not None else ():
            names.append(family.name)
            names.extend(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        clashes = self._names.intersection(names)
        if clashes:
            raise ValueError(f"Duplicated timeseries in CollectorRegistry: {sorted(clashes)}")
        self._names.update(names)
        self._collectors.append(collector)

    def collect(self) -> Iterator[Family]:
        for collector in list(self._collectors):
            yield from collector.collect()


class _Child:
    """One label set's value of a `Counter` or `Gauge`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _Metric:
    """A counter or gauge family kept by the process, registered in ``registry``."""

    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        # An unlabelled metric is its own single child, present from the start.
        self._only = None if self.labelnames else self._children.setdefault((), _Child())
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Child:
        """The child for ``values`` (one per label name), made at its first use."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}")
            child = self._children[values] = _Child()
        return child

    def _unlabelled(self) -> _Child:
        if self._only is None:
            raise ValueError(f"{self.name}: labelled; call labels() first")
        return self._only

    def describe(self) -> Iterator[Family]:
        yield Family(self.name, self.documentation, self.kind, self.labelnames)

    def collect(self) -> Iterator[Family]:
        family = Family(self.name, self.documentation, self.kind, self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
            if self.kind == "counter":
                labels = dict(zip(self.labelnames, values, strict=True))
                family.samples.append(Sample(family.name + "_created", labels, child.created))
        yield family


class Counter(_Metric):
    """A value that only goes up (``name`` with or without ``_total``)."""

    kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self._unlabelled().inc(amount)


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _line(sample: Sample) -> str:
    labels = ""
    if sample.labels:
        pairs = (f'{key}="{_escape_label(sample.labels[key])}"' for key in sorted(sample.labels))
        labels = "{" + ",".join(pairs) + "}"
    stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
    return f"{sample.name}{labels} {format_value(sample.value)}{stamp}\n"


def generate_latest(registry: CollectorRegistry) -> bytes:
    """Every family of ``registry`` in the classic text format."""
    out: list[str] = []
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        documentation = _escape_help(family.documentation)
        out.append(f"# HELP {name} {documentation}\n# TYPE {name} {family.type}\n")
        created: list[str] = []
        for sample in family.samples:
            if sample.name == family.name + "_created":
                created.append(_line(sample))
            else:
                out.append(_line(sample))
        if created:
            name = family.name + "_created"
            out.append(f"# HELP {name} {documentation}\n# TYPE {name} gauge\n")
            out.extend(created)
    return "".join(out).encode("utf-8")
