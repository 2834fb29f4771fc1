"""An upstream that refuses connections (its IP address is connected to directly, with no
name resolution: `registry.http.bounded_agent.tcp_endpoint`): each request is answered
503 UNAVAILABLE naming the refusal, and served again once the upstream is back."""

from __future__ import annotations

import errno
import json
import os

import pytest_twisted

from tests.e2e.client import header, sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import fetch


@pytest_twisted.ensureDeferred
async def test_a_refusing_upstream_is_503_unavailable(proxied: Proxied, fake: FakeUpstream) -> None:
    image = fake.content.add_image("library/busybox", "latest", [1000])
    layer = image.layers[0].digest
    registry = await proxied(hold_off="0")  # each request asks (tests/proxy/test_hold_off.py)
    assert fake.url.startswith("http://127.0.0.1:")
    await fake.go_down()
    refused = (
        f"no answer from {fake.url}: ConnectionRefusedError: "
        "Connection was refused by other side: "
        f"{errno.ECONNREFUSED}: {os.strerror(errno.ECONNREFUSED)}."
    )
    name = "docker.io/library/busybox"
    for path, detail in [
        ("busybox/manifests/latest", {"name": name, "reference": "latest"}),
        (f"busybox/blobs/{layer}", {"name": name, "digest": layer}),
        ("busybox/tags/list", {"name": name}),
    ]:
        response, body = await fetch(f"{registry.url}/v2/{path}")
        assert response.code == 503, body
        assert header(response, "content-type") == "application/json"
        expected = {
            "code": "UNAVAILABLE",
            "message": "upstream registry unavailable",
            "detail": {**detail, "upstream": refused},
        }
        assert body == json.dumps({"errors": [expected]}, separators=(",", ":")).encode()
    await fake.come_up()
    response, body = await fetch(f"{registry.url}/v2/busybox/manifests/latest")
    assert response.code == 200
    assert sha256(body) == image.digest
