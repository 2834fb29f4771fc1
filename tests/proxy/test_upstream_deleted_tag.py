"""A tag the upstream deleted is forgotten by the cache: an outage afterwards does not bring
it back (stale-if-error serves only tags the upstream still had when it last answered)."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from registry.api.digests import Digest
from registry.storage import layout
from tests.e2e.client import sha256
from tests.e2e.test_notifications import captured_logs  # noqa: F401 - fixture
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import fetch, pull, storage_root

LAYERS = [4096, 30_000]
MISSING_V3 = {
    "errors": [
        {
            "code": "MANIFEST_UNKNOWN",
            "message": "manifest unknown to registry",
            "detail": {
                "name": "docker.io/team/app",
                "reference": "v3",
                "upstream": "manifest team/app:v3: MANIFEST_UNKNOWN manifest v3 unknown",
            },
        }
    ]
}


async def _tags(url: str) -> tuple[int, Any]:
    response, body = await fetch(f"{url}/v2/team/app/tags/list")
    return response.code, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_a_tag_deleted_upstream_stays_gone_when_the_upstream_goes_down(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    fake.content.add_image("team/app", "v2", LAYERS)
    v3 = fake.content.add_image("team/app", "v3", [5000], seed="three")
    registry = await proxied(timeout="1s", hold_off="0")
    url = registry.url
    await pull(registry, "team/app", "v2")
    assert (await pull(registry, "team/app", "v3"))["digest"] == v3.digest
    assert await _tags(url) == (200, {"name": "team/app", "tags": ["v2", "v3"]})

    fake.content.remove_tag("team/app", "v3")
    response, missing = await fetch(f"{url}/v2/team/app/manifests/v3")
    assert response.code == 404
    assert json.loads(missing) == MISSING_V3
    assert await _tags(url) == (200, {"name": "team/app", "tags": ["v2"]})
    # The tag's link is gone from storage, as a registry:2 tag delete removes it; the
    # manifest's revision stays (eviction or a gc decide about it).
    root = storage_root(registry)
    assert not (root / layout.tag_dir("docker.io/team/app", "v3")).exists()
    assert (root / layout.tag_dir("docker.io/team/app", "v2")).exists()
    assert (root / layout.revision_link("docker.io/team/app", Digest.parse(v3.digest))).exists()

    await fake.go_down()
    # Still the upstream's last answer, byte for byte, not the deleted tag served stale.
    response, body = await fetch(f"{url}/v2/team/app/manifests/v3")
    assert response.code == 404
    assert body == missing
    response, body = await fetch(f"{url}/v2/team/app/manifests/v3", method="HEAD")
    assert response.code == 404
    # The tag list's fallback (the tags cached here) does not list it either.
    assert await _tags(url) == (200, {"name": "team/app", "tags": ["v2"]})
    # The tag the upstream still had is served stale as before.
    response, body = await fetch(f"{url}/v2/team/app/manifests/v2")
    assert response.code == 200
    assert sha256(body) == fake.content.repos["team/app"].tags["v2"]

    # Back up, and the tag pushed again upstream: cached again, and stale-served again.
    await fake.come_up()
    fake.content.retag("team/app", "v3", v3.digest)
    response, body = await fetch(f"{url}/v2/team/app/manifests/v3")
    assert response.code == 200
    assert sha256(body) == v3.digest
    await fake.go_down()
    response, body = await fetch(f"{url}/v2/team/app/manifests/v3")
    assert response.code == 200
    assert sha256(body) == v3.digest
    assert await _tags(url) == (200, {"name": "team/app", "tags": ["v2", "v3"]})


@pytest_twisted.ensureDeferred
async def test_a_404_no_registry_sends_keeps_the_tag(
    proxied: Proxied,
    fake: FakeUpstream,
    captured_logs: list[str],  # noqa: F811
) -> None:
    """A 404 page in front of the upstream (a proxy in maintenance, a CDN, a registry hiding
    what it refuses) says nothing about the tag: it is served stale and kept, not removed."""
    image = fake.content.add_image("team/app", "v2", LAYERS)
    registry = await proxied(timeout="1s", tag_freshness="0")
    url = registry.url
    await pull(registry, "team/app", "v2")
    fake.switches.html_404_manifests = True
    for method in ("GET", "HEAD"):
        response, body = await fetch(f"{url}/v2/team/app/manifests/v2", method=method)
        assert response.code == 200, body
        assert response.headers.getRawHeaders("Docker-Content-Digest") == [image.digest]
    assert await _tags(url) == (200, {"name": "team/app", "tags": ["v2"]})
    root = storage_root(registry)
    assert (root / layout.tag_dir("docker.io/team/app", "v2")).exists()
    log = "\n".join(captured_logs)
    assert "serving cached docker.io/team/app:v2" in log and "the tag is kept" in log, log
    assert "removed the cached tag" not in log
