"""
One scrape for a tree of worker processes (``[http] workers``): every worker's metrics,
merged into the values of the whole registry.

Each worker renders its own metrics (`Metrics.render`, Prometheus's text format); the
supervisor reads the texts and adds them up sample by sample (same name and labels), so
``txregistry_http_requests_total`` is what the registry answered, whichever worker answered
it.  Exceptions:

- ``*_created`` samples (when a series started) take the earliest;
- families in `SHARED_FAMILIES` describe the storage every worker sees alike (the last
  garbage collection's report), or what one worker reports from state kept in storage (the
  syncs, `registry.sync.metrics`: after that worker is replaced, its retired counts and its
  successor's, read back from the same saved state, would add up), so they take the largest
  value instead of N times it.  A timestamp is never summed.

Besides the sums, a few series describe the tree itself: `worker_lines`.

Counters never go backwards for the tree (Prometheus would read that as a reset):
`TreeMemory` keeps each worker's last scrape.  A worker that does not answer a scrape
(stopped, or busy past the scrape's timeout) contributes what it answered last; a worker that
exits leaves its counters, histograms and summaries in a retired baseline that every later
scrape adds (its gauges, which describe what it held, such as open uploads, go with it).

This runs in the supervisor, which imports no metrics library (it would cost it more memory
than everything else it holds): the texts are read line by line.  Every worker writes the
same families with labels in the same order and escaping (prometheus_client sorts label
names), so a sample line's name and label text, kept verbatim, identify a series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

# Families read from shared storage: each worker (or each successive worker) reports the
# same value.
SHARED_FAMILIES = ("txregistry_gc_", "txregistry_sync_")
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


# Families whose samples only go up while their process lives.
COUNTING_TYPES = ("counter", "histogram", "summary")


def counting_text(text: str) -> str:
    """The families of ``text`` that only go up (`COUNTING_TYPES`), header lines included."""
    kept: list[str] = []
    keep = False
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                keep = parts[3].strip() in COUNTING_TYPES
                if keep:
                    kept.append(line)
            elif len(parts) >= 3 and parts[1] == "HELP":
                keep = False  # until its TYPE line says
                kept.append(line)
            continue
        if keep and line.strip():
            kept.append(line)
    # A HELP line whose family turned out not to count goes too.
    out: list[str] = []
    for index, line in enumerate(kept):
        if line.startswith("# HELP"):
            name = line.split(None, 3)[2]
            following = kept[index + 1] if index + 1 < len(kept) else ""
            if not following.startswith(f"# TYPE {name} "):
                continue
        out.append(line)
    return "\n".join(out)


class TreeMemory:
    """
    What the supervisor remembers between scrapes: each worker's last answer, and the
    counting families of the workers that exited (the retired baseline).
    """

    def __init__(self) -> None:
        self._last: dict[int, WorkerScrape] = {}
        self._retired = ""

    def answered(self, scrape: WorkerScrape) -> None:
        self._last[scrape.worker] = scrape

    def last(self, worker: int, pid: int) -> WorkerScrape | None:
        """What worker ``worker`` (process ``pid``) answered last, if it ever did."""
        scrape = self._last.get(worker)
        return scrape if scrape is not None and scrape.pid == pid else None

    def retire(self, worker: int, pid: int) -> None:
        """Worker ``worker`` (process ``pid``) exited: its counts join the baseline."""
        scrape = self.last(worker, pid)
        if scrape is None:
            return
        del self._last[worker]
        self._retired = "\n".join(merge([self._retired, counting_text(scrape.text)]))

    def text(
        self,
        answers: Sequence[WorkerScrape],
        silent: Sequence[WorkerScrape],
        expected: int,
        restarts: int,
    ) -> bytes:
        """The tree's scrape from the workers that answered, the last answers of those that
        did not (``silent``), and the retired baseline."""
        for scrape in answers:
            self.answered(scrape)
        return tree_text(answers, expected, restarts, silent=silent, retired=self._retired)


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


def worker_lines(
    scrapes: Sequence[WorkerScrape],
    expected: int,
    restarts: int,
    silent: Sequence[WorkerScrape] = (),
) -> list[str]:
    """
    The tree's own series: workers wanted and answering, restarts, requests per worker (a
    worker that did not answer: what it answered last, in ``silent``).
    """
    per_worker = [
        _line(
            "txregistry_worker_http_requests_total",
            f'pid="{scrape.pid}",worker="{scrape.worker}"',
            requests_answered(scrape.text),
        )
        for scrape in sorted([*scrapes, *silent], key=lambda scrape: scrape.worker)
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
            "Worker processes that answered this scrape.",
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


def tree_text(
    scrapes: Sequence[WorkerScrape],
    expected: int,
    restarts: int,
    silent: Sequence[WorkerScrape] = (),
    retired: str = "",
) -> bytes:
    """
    The whole tree's scrape: the merged workers' families (``scrapes``, the answers; ``silent``,
    the last answers of workers that did not answer; ``retired``, the counting families of
    workers that exited), then the tree's own.
    """
    texts = [scrape.text for scrape in [*scrapes, *silent]]
    if retired:
        texts.append(retired)
    lines = merge(texts)
    lines += worker_lines(scrapes, expected, restarts, silent)
    return ("\n".join(lines) + "\n").encode()
