"""
`registry.ops.prometheus` writes what prometheus_client writes for the same metrics, byte for
byte (``_created`` values aside: they are the time each series was made).
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

import prometheus_client
import prometheus_client.core
import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.ops import prometheus

LABEL_VALUES = st.text(alphabet=st.sampled_from('ab\\"\n\u00e9 {}='), max_size=6)
AMOUNTS = st.floats(min_value=0, max_value=1e12, allow_nan=False) | st.integers(0, 10**15)


def _families(lib: Any, value: float, label: str) -> Any:
    """A collector yielding counter and gauge families, as `registry.sync.metrics` does."""

    class Families:
        def collect(self) -> Any:
            counter = lib.CounterMetricFamily("x_copied", "Copied \\ things.\nTwo.", labels=["s"])
            counter.add_metric([label], value)
            counter.add_metric(["z"], 0)
            yield counter
            yield lib.GaugeMetricFamily("x_last_seconds", "Last.", value=value)
            gauge = lib.GaugeMetricFamily("x_running", "Running.", labels=["b", "a"])
            gauge.add_metric([label, "1"], value)
            yield gauge

    return Families()


def _exposition(lib: ModuleType, core: ModuleType, value: float, label: str) -> list[str]:
    registry = lib.CollectorRegistry()
    plain = lib.Counter("x_errors_total", "Errors.", ["driver", "operation"], registry=registry)
    plain.labels("s3", label).inc(value)
    plain.labels("fs", "stat").inc()
    lib.Counter("x_purged", "Purged.", registry=registry).inc(value)
    gauge = lib.Gauge("x_open", "Open.", registry=registry)
    gauge.inc(3)
    gauge.dec()
    lib.Gauge("x_set", "Set.", registry=registry).set(value)
    lib.Counter("x_unused_total", "Never.", ["a"], registry=registry)
    registry.register(_families(core, value, label))
    text = lib.generate_latest(registry).decode()
    return [re.sub(r"_created(.*) \S+$", r"_created\1 T", line) for line in text.splitlines()]


@given(value=AMOUNTS, label=LABEL_VALUES)
def test_writes_what_prometheus_client_writes(value: float, label: str) -> None:
    ours = _exposition(prometheus, prometheus, value, label)  # type: ignore[arg-type]
    theirs = _exposition(prometheus_client, prometheus_client.core, value, label)
    assert ours == theirs


def test_refuses_clashing_names() -> None:
    registry = prometheus.CollectorRegistry()
    prometheus.Counter("x_hits", "Hits.", registry=registry)
    with pytest.raises(ValueError):
        prometheus.Gauge("x_hits_total", "Again.", registry=registry)
    with pytest.raises(ValueError):
        prometheus.Gauge("x_hits_created", "Again.", registry=registry)
    prometheus.Gauge("x_hits_other", "Another.", registry=registry)


def test_counters_refuse_what_prometheus_client_refuses() -> None:
    counter = prometheus.Counter("x_things", "Things.", ["a"])
    with pytest.raises(ValueError):
        counter.inc()  # labelled: a child first
    with pytest.raises(ValueError):
        counter.labels("a", "b")
    with pytest.raises(ValueError):
        prometheus.Counter("x_other", "Other.").inc(-1)
    assert prometheus.CONTENT_TYPE_PLAIN_0_0_4 == prometheus_client.CONTENT_TYPE_PLAIN_0_0_4
