"""
A large manifest's own page is parsed off the reactor thread: parsing a 4 MiB manifest whole
is a quarter of a second of pure Python, and on the reactor every request of every client
waited for each view of it (a reviewer's six clients reloading such a page took the API's
answers from 2 ms to a second).  A small one is parsed where it is, as before.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from registry.ui import _data
from tests.e2e.conftest import Starter, start_registry  # noqa: F401 - fixture
from tests.proxy.util import fetch
from tests.ui import content


def _image(client: content.Client, name: str, layers: int) -> tuple[str, int]:
    """An image of ``layers`` layer descriptors (one blob stored under every one of them);
    its digest and its manifest's size."""
    blob = content.layer("one")
    digest = client.push_blob(name, blob)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = {
        "schemaVersion": 2,
        "mediaType": content.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": client.push_blob(name, config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
             "size": len(blob), "annotations": {"n": str(i)}}
            for i in range(layers)
        ],
    }  # fmt: skip
    return client.push_manifest(name, "v1", manifest), len(json.dumps(manifest))


@pytest_twisted.ensureDeferred
async def test_a_large_manifests_page_is_parsed_off_the_reactor_thread(
    start_registry: Starter,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = await start_registry({})
    client = content.Client(registry.url)
    big, big_size = await deferToThread(_image, client, "team/big", 1500)
    small, small_size = await deferToThread(_image, client, "team/small", 2)
    assert small_size < _data.PARSE_IN_THREAD_FROM <= big_size
    parsed_on: dict[int, bool] = {}
    parse = _data.parse_stored

    def spy(body: bytes) -> Any:
        parsed_on[len(body)] = threading.current_thread() is threading.main_thread()
        return parse(body)

    monkeypatch.setattr(_data, "parse_stored", spy)
    for name, digest in (("team/big", big), ("team/small", small)):
        response, body = await fetch(f"{registry.url}/ui/r/{name}/-/manifest/{digest}")
        assert response.code == 200, body[:300]
    assert parsed_on == {big_size: False, small_size: True}
    response, body = await fetch(f"{registry.url}/ui/r/team/big/-/manifest/{big}")
    assert b"<caption>1500 layers, " in body  # the page shows the parsed manifest
