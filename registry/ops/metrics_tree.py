"""
One scrape for a tree of worker processes (``[http] workers``): every worker's metrics,
merged into the values of the whole registry.

Each worker renders its own metrics (`Metrics.render`, Prometheus's text format); the
supervisor reads the texts and adds them up sample by sample (same name and labels), so
``txregistry_http_requests_total`` is what the registry answered, whichever worker answered
it.  Exceptions:

- ``*_created`` samples (when a series started) take the earliest;
- families in `SHARED_FAMILIES` describe the storage every worker sees alike (the last
  garbage collection's report), so they take the largest value instead of N times it.

Besides the sums, a few series describe the tree itself: `worker_lines`.

This runs in the supervisor, which imports no metrics library (it would cost it more memory
than everything else it holds): the texts are read line by line.  Every worker writes the
same families with labels in the same order and escaping (prometheus_client sorts label
names), so a sample line's name and label text, kept verbatim, identify a series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

# Families read from shared storage: each worker reports the same value.
SHARED_FAMILIES = ("txregistry_gc_",)
REQUESTS = "txregistry_http_requests_total"


class WorkerScrape(NamedTuple):
    """One worker's answer to a scrape."""

    worker: int
    pid: int
    text: str


class Sample(NamedTuple):
    name: str
    labels: str  # the text between the braces, verbatim ("" without labels)
    value: float


def parse_sample(line: str) -> Sample | None:
    """``name{labels} value [timestamp]``; None for a line that is not one."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        end = line.rfind("}")
        if end < brace:
            return None
        name, labels, rest = line[:brace], line[brace + 1 : end], line[end + 1 :]
    else:
        if space == -1:
            return None
        name, labels, rest = line[:space], "", line[space:]
    fields = rest.split()
    if not fields:
        return None
    try:
        return Sample(name, labels, float(fields[0]))
    except ValueError:
        return None


def format_value(value: float) -> str:
    """As prometheus_client writes a value (Go's float formatting)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _combine(sample: str, old: float, new: float) -> float:
    if sample.endswith("_created"):
        return min(old, new)
    if sample.startswith(SHARED_FAMILIES):
        return max(old, new)
    return old + new


class _Family:
    def __init__(self) -> None:
        self.header: list[str] = []  # its HELP and TYPE lines
        self.samples: dict[tuple[str, str], float] = {}


def merge(texts: Iterable[str]) -> list[str]:
    """The lines of every text's families, each sample combined over the texts."""
    families: dict[str, _Family] = {}
    for text in texts:
        current: _Family | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = families.get(parts[2])
                    if family is None:
                        family = families[parts[2]] = _Family()
                    current = family
                    if not any(h.split(None, 2)[1] == parts[1] for h in family.header):
                        family.header.append(line)
                continue
            sample = parse_sample(line)
            if sample is None:
                continue
            if current is None:
                current = families.setdefault(sample.name, _Family())
            key = (sample.name, sample.labels)
            old = current.samples.get(key)
            current.samples[key] = (
                sample.value if old is None else _combine(sample.name, old, sample.value)
            )
    lines = []
    for family in families.values():
        lines += family.header
        for (name, labels), value in family.samples.items():
            lines.append(_line(name, labels, value))
    return lines


def _line(name: str, labels: str, value: float) -> str:
    return (
        f"{name}{{{labels}}} {format_value(value)}" if labels else f"{name} {format_value(value)}"
    )


def _family(name: str, kind: str, documentation: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {documentation}", f"# TYPE {name} {kind}", *samples]


def requests_answered(text: str) -> float:
    """The sum of a worker's ``txregistry_http_requests_total`` samples."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(REQUESTS):
            sample = parse_sample(line)
            if sample is not None and sample.name == REQUESTS:
                total += sample.value
    return total


def worker_lines(scrapes: Sequence[WorkerScrape], expected: int, restarts: int) -> list[str]:
    """The tree's own series: workers wanted and answering, restarts, requests per worker."""
    per_worker = [
        _line(
            "txregistry_worker_http_requests_total",
            f'pid="{scrape.pid}",worker="{scrape.worker}"',
            requests_answered(scrape.text),
        )
        for scrape in scrapes
    ]
    return [
        *_family(
            "txregistry_workers",
            "gauge",
            "Worker processes configured ([http] workers).",
            [_line("txregistry_workers", "", float(expected))],
        ),
        *_family(
            "txregistry_workers_scraped",
            "gauge",
            "Worker processes whose metrics this scrape holds.",
            [_line("txregistry_workers_scraped", "", float(len(scrapes)))],
        ),
        *_family(
            "txregistry_worker_restarts_total",
            "counter",
            "Workers started again after one exited.",
            [_line("txregistry_worker_restarts_total", "", float(restarts))],
        ),
        *_family(
            "txregistry_worker_http_requests_total",
            "counter",
            "HTTP requests answered by each worker process since it started.",
            per_worker,
        ),
    ]


def tree_text(scrapes: Sequence[WorkerScrape], expected: int, restarts: int) -> bytes:
    """The whole tree's scrape: the merged workers' families, then the tree's own."""
    lines = merge(scrape.text for scrape in scrapes)
    lines += worker_lines(scrapes, expected, restarts)
    return ("\n".join(lines) + "\n").encode()
