"""Smaller guarantees: in-memory storage, shared revalidation, rate-limit observation."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred

from tests.e2e.client import sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import fetch, metric, pull, wait_for


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
async def test_concurrent_requests_for_one_digest_or_tag_list_share_one_upstream_fetch(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Kubernetes nodes pull by digest: 20 of them asking at once for a manifest not cached
    (GET and HEAD alike) cost one upstream GET, which Docker Hub counts against the pull
    limit; 20 tag lists asked at once, one upstream list."""
    image = fake.content.add_image("library/alpine", "latest", [4096])
    for tag in ("1", "2", "3"):
        fake.content.add_image("library/alpine", tag, [100])
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/manifests/{image.digest}"
    held = fake.hold("GET", "manifest", ref=image.digest)
    asked = [ensureDeferred(fetch(url, "GET" if i % 2 else "HEAD")) for i in range(20)]
    await wait_for(lambda: held.arrived >= 1)
    held.release()
    for ok, (response, body) in await DeferredList(asked):
        assert ok and response.code == 200
        assert response.headers.getRawHeaders(b"docker-content-digest") == [image.digest.encode()]
        assert body == b"" or sha256(body) == image.digest
    assert fake.count("GET", "manifest", ref=image.digest) == 1
    assert fake.count("HEAD", "manifest", ref=image.digest) == 0

    url = f"{registry.url}/v2/alpine/tags/list"
    held = fake.hold("GET", "tags", name="library/alpine")
    asked = [ensureDeferred(fetch(url)) for _ in range(20)]
    await wait_for(lambda: held.arrived >= 1)
    # Tag lists are not kept: every request must be in before the list comes back.
    for _ in range(200):  # bounded: 20 requests reach the registry in milliseconds
        _, text = await fetch(f"{registry.url}/metrics")
        line = 'txregistry_http_requests_in_flight{route="tags"} '
        waiting = [
            float(x.removeprefix(line)) for x in text.decode().splitlines() if x.startswith(line)
        ]
        if waiting == [20.0]:
            break
    else:
        raise AssertionError("the tag lists never all arrived")
    held.release()
    for ok, (response, body) in await DeferredList(asked):
        assert ok and response.code == 200
        assert json.loads(body) == {"name": "alpine", "tags": ["1", "2", "3", "latest"]}
    assert fake.count("GET", "tags", name="library/alpine") == 1


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
