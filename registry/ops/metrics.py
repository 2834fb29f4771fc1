"""
A tiny metrics registry rendered in the Prometheus text exposition format (``GET /metrics``).

Counters and gauges with labels, plus collectors (callables run at render time) for values that
live elsewhere, such as an upstream's last ``ratelimit-remaining``.  Updating a metric is a dict
operation in the reactor thread: no locks, no background work, no dependency.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import attrs

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Mapping[str, str], float]


def _labels(values: Mapping[str, str]) -> Labels:
    return tuple(sorted(values.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _line(name: str, labels: Labels | Mapping[str, str], value: float) -> str:
    items = labels.items() if isinstance(labels, Mapping) else labels
    text = ",".join(f'{key}="{_escape(val)}"' for key, val in items)
    return f"{name}{{{text}}} {_format_value(value)}" if text else f"{name} {_format_value(value)}"


@attrs.define
class Metric:
    name: str
    help: str
    kind: str  # "counter" or "gauge"
    values: dict[Labels, float] = attrs.field(factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if self.kind == "counter" and amount < 0:
            raise ValueError("a counter only goes up")
        key = _labels(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        if self.kind == "counter":
            raise ValueError("set a gauge, not a counter")
        self.values[_labels(labels)] = value

    def get(self, **labels: str) -> float:
        return self.values.get(_labels(labels), 0.0)


Collector = Callable[[], Iterable[Sample]]


@attrs.define
class MetricsRegistry:
    """The registry's metrics; one instance per process, held by the RegistryContext."""

    metrics: dict[str, Metric] = attrs.field(factory=dict)
    collectors: list[tuple[str, str, str, Collector]] = attrs.field(factory=list)

    def _metric(self, name: str, help: str, kind: str) -> Metric:
        if _NAME_RE.fullmatch(name) is None:
            raise ValueError(f"bad metric name {name!r}")
        existing = self.metrics.get(name)
        if existing is not None:
            if existing.kind != kind:
                raise ValueError(f"{name} is already a {existing.kind}")
            return existing
        metric = Metric(name, help, kind)
        self.metrics[name] = metric
        return metric

    def counter(self, name: str, help: str) -> Metric:
        """A monotonically increasing value (its name should end in ``_total``)."""
        return self._metric(name, help, "counter")

    def gauge(self, name: str, help: str) -> Metric:
        return self._metric(name, help, "gauge")

    def collect(self, name: str, help: str, kind: str, collector: Collector) -> None:
        """Register ``collector``: called at each render, it yields ``(name, labels, value)``
        samples for the metric family ``name``."""
        self.collectors.append((name, help, kind, collector))

    def render(self) -> str:
        lines: list[str] = []
        for metric in sorted(self.metrics.values(), key=lambda m: m.name):
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for labels, value in sorted(metric.values.items()):
                lines.append(_line(metric.name, labels, value))
        for name, help, kind, collector in self.collectors:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            for sample_name, sample_labels, value in collector():
                lines.append(_line(sample_name, sample_labels, value))
        return "\n".join(lines) + "\n"


def metrics_of(extras: MutableMapping[str, Any]) -> MetricsRegistry:
    """The process's registry, kept in ``RegistryContext.extras["metrics"]`` (made on first
    use), so that any module can add metrics without the context knowing them."""
    registry = extras.get("metrics")
    if not isinstance(registry, MetricsRegistry):
        registry = MetricsRegistry()
        extras["metrics"] = registry
    return registry
