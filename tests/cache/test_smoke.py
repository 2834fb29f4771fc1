from __future__ import annotations

import pytest_twisted
import treq

from tests.e2e.client import sha256
from tests.fakes.upstream import FakeUpstream


@pytest_twisted.ensureDeferred
async def test_smoke(proxied, fake: FakeUpstream) -> None:
    image = fake.content.add_image("library/alpine", "latest", [4096, 300_000])
    registry = await proxied()
    r = await treq.get(f"{registry.url}/v2/alpine/manifests/latest")
    body = await r.content()
    assert r.code == 200, body
    assert sha256(body) == image.digest
    for layer in image.layers:
        r = await treq.get(f"{registry.url}/v2/docker.io/library/alpine/blobs/{layer.digest}")
        data = await r.content()
        assert r.code == 200, data[:300]
        assert sha256(data) == layer.digest
    for layer in image.layers:
        r = await treq.get(f"{registry.url}/v2/library/alpine/blobs/{layer.digest}")
        data = await r.content()
        assert sha256(data) == layer.digest
        assert fake.count("GET", "cdn", ref=layer.digest) == 1
    r = await treq.get(f"{registry.url}/metrics")
    print((await r.content()).decode())
