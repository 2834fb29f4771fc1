"""
One scrape for a tree of worker processes (``[http] workers``): every worker's metrics,
merged into the values of the whole registry.

Each worker renders its own metrics (`Metrics.render`); the supervisor parses the texts and
adds them up sample by sample (same name and labels), so ``txregistry_http_requests_total``
is what the registry answered, whichever worker answered it.  Exceptions:

- ``*_created`` samples (when a series started) take the earliest;
- families in `SHARED_FAMILIES` describe the storage every worker sees alike (the last
  garbage collection's report), so they take the largest value instead of N times it.

Besides the sums, a few series describe the tree itself: `worker_families`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# Families read from shared storage: each worker reports the same value.
SHARED_FAMILIES = ("txregistry_gc_",)
REQUESTS = "txregistry_http_requests_total"


@attrs.frozen
class WorkerScrape:
    """One worker's answer to a scrape."""

    worker: int
    pid: int
    text: str


def _combine(family: str, sample: str, old: float, new: float) -> float:
    if sample.endswith("_created"):
        return min(old, new)
    if family.startswith(SHARED_FAMILIES):
        return max(old, new)
    return old + new


def merge(texts: Iterable[str]) -> list[Metric]:
    """The families of every text, each sample summed over the texts (see the module)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = samples.get(key)
                samples[key] = (
                    sample.value
                    if old is None
                    else _combine(family.name, sample.name, old, sample.value)
                )
    for name, merged in families.items():
        merged.samples = [
            Sample(sample_name, dict(labels), value)
            for (sample_name, labels), value in values[name].items()
        ]
    return list(families.values())


def worker_families(scrapes: Sequence[WorkerScrape], expected: int, restarts: int) -> list[Metric]:
    """The tree's own series: workers wanted and answering, restarts, requests per worker."""
    workers = Metric("txregistry_workers", "Worker processes configured ([http] workers).", "gauge")
    workers.add_sample("txregistry_workers", {}, float(expected))
    answering = Metric(
        "txregistry_workers_scraped", "Worker processes whose metrics this scrape holds.", "gauge"
    )
    answering.add_sample("txregistry_workers_scraped", {}, float(len(scrapes)))
    replaced = Metric(
        "txregistry_worker_restarts", "Workers started again after one exited.", "counter"
    )
    replaced.add_sample("txregistry_worker_restarts_total", {}, float(restarts))
    per_worker = Metric(
        "txregistry_worker_http_requests",
        "HTTP requests answered by each worker process since it started.",
        "counter",
    )
    for scrape in scrapes:
        total = 0.0
        for family in text_string_to_metric_families(scrape.text):
            total += sum(s.value for s in family.samples if s.name == REQUESTS)
        per_worker.add_sample(
            "txregistry_worker_http_requests_total",
            {"worker": str(scrape.worker), "pid": str(scrape.pid)},
            total,
        )
    return [workers, answering, replaced, per_worker]


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: list[Metric]) -> bytes:
    """The text exposition of ``families`` (the format `Metrics.render` writes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


def tree_text(scrapes: Sequence[WorkerScrape], expected: int, restarts: int) -> bytes:
    """The whole tree's scrape: the merged workers' families, then the tree's own."""
    families = merge(scrape.text for scrape in scrapes)
    return render(families + worker_families(scrapes, expected, restarts))
