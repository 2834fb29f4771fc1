"""The metrics pieces: route kinds from paths, collectors over other objects' counters, and the
timed storage driver."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from registry.ops.accounting import route_kind
from registry.ops.metrics import REQUEST_BUCKETS, ROUTE_KINDS, Metrics, PlainHistogram
from registry.ops.storage_metrics import MeasuredDriver
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageError
from registry.storage.memory import MemoryDriver

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v2", "base"),
        ("/v2/", "base"),
        ("/v2/_catalog", "catalog"),
        ("/v2/a/b/tags/list", "tags"),
        ("/v2/blobs/manifests/tags/list", "tags"),
        ("/v2/a/manifests/latest", "manifest"),
        ("/v2/manifests/blobs/manifests/" + DIGEST, "manifest"),
        ("/v2/a/blobs/" + DIGEST, "blob"),
        ("/v2/a/blobs/uploads/", "upload"),
        ("/v2/a/blobs/uploads", "upload"),
        ("/v2/a/blobs/uploads/0f3c-uuid", "upload"),
        ("/v2/uploads/blobs/uploads/x", "upload"),
        ("/v2/a/referrers/" + DIGEST, "referrers"),
        ("/v2/a/unknown/thing", "other"),
        ("/health", "health"),
        ("/health/ready", "health"),
        ("/debug/health", "health"),
        ("/metrics", "metrics"),
        ("/", "other"),
        ("/favicon.ico", "other"),
    ],
)
def test_route_kind(path: str, kind: str) -> None:
    assert route_kind(path.encode()) == kind


@given(st.binary(max_size=200))
def test_route_kind_is_always_one_of_the_fixed_set(path: bytes) -> None:
    assert route_kind(b"/v2/" + path) in ROUTE_KINDS
    assert route_kind(path) in ROUTE_KINDS


# The API's path shapes as registry.http.routes matches them, as a reference.
_REFERENCE = [
    ("tags", re.compile(rb".+/tags/list/?")),
    ("upload", re.compile(rb".+/blobs/uploads(/[^/]*)?")),
    ("manifest", re.compile(rb".+/manifests/[^/]+")),
    ("blob", re.compile(rb".+/blobs/[^/]+")),
    ("referrers", re.compile(rb".+/referrers/[^/]+")),
]
_WORDS = st.sampled_from([b"a", b"", b"blobs", b"uploads", b"manifests", b"tags", b"list",
                          b"referrers", b"_catalog", b"x-1"])  # fmt: skip


@given(st.lists(_WORDS, min_size=1, max_size=6))
def test_route_kind_agrees_with_the_routes_patterns(words: list[bytes]) -> None:
    rest = b"/".join(words)
    if rest in (b"", b"/"):
        expected = "base"
    elif rest in (b"_catalog", b"_catalog/"):
        expected = "catalog"
    else:
        expected = next((kind for kind, p in _REFERENCE if p.fullmatch(rest)), "other")
    assert route_kind(b"/v2/" + rest) == expected, rest


def test_collected_families_render_and_parse() -> None:
    metrics = Metrics()
    hits = {"hub": 3, "quay": 0}
    metrics.collect(
        "x_hits_total",
        "Hits.",
        "counter",
        lambda: [("x_hits_total", {"upstream": k}, v) for k, v in hits.items()],
    )
    metrics.collect("x_remaining", "Left.", "gauge", lambda: [])  # nothing known yet
    text = metrics.render().decode()
    assert 'x_hits_total{upstream="hub"} 3.0\n' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["x_hits"].type == "counter"
    assert families["x_remaining"].samples == []
    hits["hub"] = 5
    assert 'x_hits_total{upstream="hub"} 5.0\n' in metrics.render().decode()
    with pytest.raises(ValueError):
        metrics.collect("x_hits_total", "Again.", "counter", lambda: [])
    with pytest.raises(ValueError):
        metrics.collect("x_other", "?", "histogram", lambda: [])


@given(st.lists(st.sampled_from([0.0, 1e-9, 0.001, 0.0011, 0.05, 0.3, 2.5, 60.0, 61.0])))
def test_plain_histogram_exposes_what_prometheus_client_does(values: list[float]) -> None:
    """The same observations (bucket bounds themselves included: ``le`` is inclusive) give the
    same exposition as prometheus_client's Histogram, ``_created`` series included."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_seconds", "X.", ["a", "b"], buckets=REQUEST_BUCKETS, registry=theirs)
    plain = PlainHistogram("x_seconds", "X.", ["a", "b"], REQUEST_BUCKETS)
    ours.register(plain)
    for value in values:
        reference.labels("k", "v").observe(value)
        plain.labels("k", "v").observe(value)

    def exposed(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return [line.split(" ")[0] if "_created" in line else line for line in lines]

    assert exposed(ours) == exposed(theirs)
    with pytest.raises(ValueError):
        plain.labels("k")


def test_two_contexts_do_not_share_metrics() -> None:
    one, two = Metrics(), Metrics()
    one.uploads_purged.inc(2)
    assert b"txregistry_uploads_purged_total 2.0" in one.render()
    assert b"txregistry_uploads_purged_total 0.0" in two.render()


def test_measured_driver_times_calls_and_counts_failures() -> None:
    metrics = Metrics()
    inner = MemoryDriver()
    driver = MeasuredDriver(inner, metrics)
    verifyObject(IStorageDriver, driver)
    assert driver.name == "inmemory"
    Deferred.fromCoroutine(driver.put_content("a/b", b"x"))
    got: list[bytes] = []
    Deferred.fromCoroutine(driver.get_content("a/b")).addCallback(got.append)
    assert got == [b"x"]
    missing: list[object] = []
    Deferred.fromCoroutine(driver.get_content("a/none")).addErrback(missing.append)

    async def broken(path: str) -> list[str]:
        raise StorageError("I/O error")

    inner.list = broken  # type: ignore[method-assign]
    bad: list[object] = []
    Deferred.fromCoroutine(driver.list("a")).addErrback(bad.append)
    assert missing and bad
    families = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.render().decode())
        for s in f.samples
    }
    count = "txregistry_storage_operation_duration_seconds_count"
    assert families[(count, (("driver", "inmemory"), ("operation", "get_content")))] == 2
    assert families[(count, (("driver", "inmemory"), ("operation", "put_content")))] == 1
    errors = "txregistry_storage_errors_total"
    # A missing path is an answer; only real failures count.
    assert families[(errors, (("driver", "inmemory"), ("operation", "get_content")))] == 0
    assert families[(errors, (("driver", "inmemory"), ("operation", "list")))] == 1
    assert isinstance(getattr(missing[0], "value", None), PathNotFoundError)
