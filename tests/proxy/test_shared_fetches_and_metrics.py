"""Smaller guarantees: in-memory storage, shared revalidation, rate-limit observation."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred

from tests.e2e.client import sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import fetch, metric, pull


@pytest_twisted.ensureDeferred
async def test_cache_works_over_the_in_memory_driver(proxied: Proxied, fake: FakeUpstream) -> None:
    """The in-memory writer publishes a file only on commit: readers wait for the fill."""
    image = fake.content.add_image("library/alpine", "latest", [4096, 2_000_000])
    registry = await proxied({"storage": {"driver": "inmemory"}})
    layer = image.layers[1]
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    results = await DeferredList([ensureDeferred(fetch(url)) for _ in range(5)])
    for ok, (response, data) in results:
        assert ok
        assert response.code == 200
        assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 1
    manifest = await pull(registry, "alpine", "latest")
    assert manifest["digest"] == image.digest


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_for_one_tag_share_one_upstream_fetch(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    image = fake.content.add_image("library/alpine", "latest", [4096])
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/manifests/latest"
    results = await DeferredList([ensureDeferred(fetch(url)) for _ in range(10)])
    for ok, (response, body) in results:
        assert ok
        assert response.code == 200
        assert sha256(body) == image.digest
    assert fake.count("GET", "manifest") == 1


@pytest_twisted.ensureDeferred
async def test_metrics_report_the_upstream_rate_limit(proxied: Proxied, fake: FakeUpstream) -> None:
    fake.content.add_image("library/alpine", "latest", [4096])
    fake.switches.ratelimit_remaining = 42
    registry = await proxied()
    await pull(registry, "alpine", "latest")
    response, body = await fetch(f"{registry.url}/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    text = body.decode()
    assert metric(text, "txregistry_proxy_ratelimit_remaining") <= 42
    assert metric(text, "txregistry_proxy_misses_total") == 3  # manifest, config, layer
    assert metric(text, "txregistry_proxy_upstream_bytes_total") > 4096
    await pull(registry, "alpine", "latest")
    response, body = await fetch(f"{registry.url}/metrics")
    text = body.decode()
    assert metric(text, "txregistry_proxy_hits_total") == 3
    assert metric(text, "txregistry_proxy_served_bytes_total") >= 4096
