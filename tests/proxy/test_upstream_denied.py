"""
A repository the upstream's token service leaves out of the token (Docker Hub does so for
private and unknown repositories; the registry then answers 401 insufficient_scope): one
token request and one upstream request per pull, not two, and the puller gets the 404 a
missing repository gets, not a 502 about credentials.
"""

from __future__ import annotations

import json

import pytest_twisted

from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied, fake, proxied  # noqa: F401 - fixtures
from tests.proxy.util import fetch


@pytest_twisted.ensureDeferred
async def test_a_denied_repository_is_asked_once_and_answered_404(
    proxied: Proxied,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    fake.content.add_image("library/alpine", "latest", [100])
    fake.switches.denied = frozenset({"team/private"})
    registry = await proxied(default="false")
    before = len(fake.log)
    response, body = await fetch(f"{registry.url}/v2/docker.io/team/private/manifests/latest")
    assert response.code == 404, body
    error = json.loads(body)["errors"][0]
    assert error["code"] == "MANIFEST_UNKNOWN", error
    asked = [r.kind for r in fake.log[before:] if r.kind != "ping"]
    assert asked == ["token", "manifest"], asked
    # A repository open to the token still pulls.
    response, body = await fetch(f"{registry.url}/v2/docker.io/library/alpine/manifests/latest")
    assert response.code == 200, body


@pytest_twisted.ensureDeferred
async def test_a_repository_refused_after_caching_is_no_longer_served_by_tag(
    proxied: Proxied,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """A repository cached, then refused by the upstream (made private, deleted, access
    revoked: Docker Hub answers all alike): its tags answer 404 as a missing repository's,
    not the cached copy as if the upstream were only down."""
    fake.content.add_image("team/app", "latest", [100])
    registry = await proxied(default="false")
    manifest = f"{registry.url}/v2/docker.io/team/app/manifests/latest"
    tags = f"{registry.url}/v2/docker.io/team/app/tags/list"
    assert (await fetch(manifest))[0].code == 200
    assert (await fetch(tags))[0].code == 200
    fake.switches.denied = frozenset({"team/app"})
    fake.tokens.clear()  # the tokens issued before: a fresh one leaves the repository out
    response, body = await fetch(manifest)
    assert response.code == 404, body
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    response, body = await fetch(tags)
    assert response.code == 404, body
    assert json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
