"""Merging the workers' scrapes (`registry.ops.metrics_tree`): sums, except what describes
shared storage (the largest) and when series started (the earliest)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from registry.ops.metrics import Metrics
from registry.ops.metrics_tree import TreeMemory, WorkerScrape, format_value, tree_text


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_add_up_per_label_set() -> None:
    one, two = Metrics(), Metrics()
    one.http.requests[("GET", "manifest", 200)] = 3
    two.http.requests[("GET", "manifest", 200)] = 4
    two.http.requests[("HEAD", "blob", 404)] = 1
    one.request_duration.labels("GET", "manifest").observe(0.002)
    two.request_duration.labels("GET", "manifest").observe(0.2)
    one.uploads_open.set(2)
    two.uploads_open.set(1)
    merged = values(
        tree_text(
            [
                WorkerScrape(0, 100, one.render().decode()),
                WorkerScrape(1, 101, two.render().decode()),
            ],
            expected=2,
            restarts=1,
        )
    )
    manifest = (("method", "GET"), ("route", "manifest"), ("status", "200"))
    assert merged[("txregistry_http_requests_total", manifest)] == 7
    blob = (("method", "HEAD"), ("route", "blob"), ("status", "404"))
    assert merged[("txregistry_http_requests_total", blob)] == 1
    get = (("method", "GET"), ("route", "manifest"))
    assert merged[("txregistry_http_request_duration_seconds_count", get)] == 2
    assert (
        merged[("txregistry_http_request_duration_seconds_bucket", (("le", "0.0025"), *get))] == 1
    )
    assert merged[("txregistry_http_request_duration_seconds_bucket", (("le", "+Inf"), *get))] == 2
    assert merged[("txregistry_uploads_open", ())] == 3
    assert merged[("txregistry_worker_http_requests_total", (("pid", "100"), ("worker", "0")))] == 3
    assert merged[("txregistry_worker_http_requests_total", (("pid", "101"), ("worker", "1")))] == 5
    assert merged[("txregistry_workers", ())] == 2
    assert merged[("txregistry_workers_scraped", ())] == 2
    assert merged[("txregistry_worker_restarts_total", ())] == 1


def test_shared_storage_gauges_are_not_multiplied() -> None:
    text = "# TYPE txregistry_gc_last_run_blobs_deleted gauge\ntxregistry_gc_last_run_blobs_deleted 5\n"
    created = "# TYPE x_created gauge\nx_created 200\n"
    merged = values(
        tree_text(
            [
                WorkerScrape(0, 1, text + created),
                WorkerScrape(1, 2, text + created.replace("200", "100")),
            ],
            expected=2,
            restarts=0,
        )
    )
    assert merged[("txregistry_gc_last_run_blobs_deleted", ())] == 5
    assert merged[("x_created", ())] == 100


def test_label_values_with_spaces_braces_and_quotes_add_up() -> None:
    """Series are told apart by their label text, however odd the values."""
    text = (
        "# HELP x_total Things.\n# TYPE x_total counter\n"
        'x_total{path="a b}",quote="say \\"hi\\""} 2.0\n'
        'x_total{path="a b",quote="say \\"hi\\""} 1.0\n'
    )
    merged = values(tree_text([WorkerScrape(0, 1, text), WorkerScrape(1, 2, text)], 2, 0))
    assert merged[("x_total", (("path", "a b}"), ("quote", 'say "hi"')))] == 4
    assert merged[("x_total", (("path", "a b"), ("quote", 'say "hi"')))] == 2


@pytest.mark.parametrize(
    "value", [0.0, 1.0, 0.0025, 2.5, 123456.0, 1234567.0, 1e21, 12345678901.5, -3.0, math.inf]
)
def test_values_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert format_value(value) == floatToGoString(value)


def test_an_exited_workers_counts_stay_and_its_gauges_go() -> None:
    """`TreeMemory`: a worker that exited leaves its counters and histograms (not its gauges)
    in every later scrape; one that does not answer adds its last answer, gauges included."""
    one, two = Metrics(), Metrics()
    one.http.requests[("GET", "manifest", 200)] = 3
    two.http.requests[("GET", "manifest", 200)] = 4
    two.request_duration.labels("GET", "manifest").observe(0.2)
    one.uploads_open.set(2)
    two.uploads_open.set(1)
    memory = TreeMemory()
    first = WorkerScrape(0, 100, one.render().decode())
    second = WorkerScrape(1, 101, two.render().decode())
    memory.text([first, second], [], expected=2, restarts=0)
    requests = (
        "txregistry_http_requests_total",
        (("method", "GET"), ("route", "manifest"), ("status", "200")),
    )
    count = (
        "txregistry_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "manifest")),
    )
    silent = memory.last(1, 101)
    assert silent == second
    stuck = values(memory.text([first], [silent], expected=2, restarts=0))
    assert stuck[requests] == 7 and stuck[count] == 1
    assert stuck[("txregistry_uploads_open", ())] == 3
    assert stuck[("txregistry_workers_scraped", ())] == 1
    memory.retire(1, 101)
    assert memory.last(1, 101) is None
    gone = values(memory.text([first], [], expected=2, restarts=0))
    assert gone[requests] == 7 and gone[count] == 1
    assert gone[("txregistry_uploads_open", ())] == 2
    one.http.requests[("GET", "manifest", 200)] = 5
    later = values(memory.text([WorkerScrape(0, 100, one.render().decode())], [], 2, 1))
    assert later[requests] == 9
