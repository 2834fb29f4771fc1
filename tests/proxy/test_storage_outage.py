"""The cache's storage out of service (S3 answering 500 to every request, a real SeaweedFS
behind a front that refuses them): pulls are served from the upstream, cached content and
new content alike, whole and checked, instead of 503; one warning says the storage cannot be
read and one line says when it can again; then the cache serves and keeps as before."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted

from registry.proxy import outage as outage_module
from registry.storage.s3 import _client as s3_client
from tests.e2e.client import get, sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.test_fill_storage_failure import Logs
from tests.proxy.util import pull, wait_for
from tests.storage.s3front import RecordingFront, Seen, s3_front  # noqa: F401 - the fixture
from tests.storage.s3server import S3Server

MiB = 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_a_cache_whose_s3_is_out_of_service_serves_pulls_from_the_upstream(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(s3_client, "RETRY_DELAYS", (0.05, 0.05, 0.05))
    kept = fake.content.add_image("library/kept", "latest", [MiB])
    new = fake.content.add_image("library/new", "latest", [2 * MiB])
    section = s3_server.storage_section(f"/outage/{uuid.uuid4().hex}")
    section["regionendpoint"] = s3_front.endpoint
    registry = await proxied({"storage": section})
    layer = kept.layers[0].digest
    await pull(registry, "library/kept", "latest")
    hex_ = layer.split(":", 1)[1]
    await wait_for(lambda: bool(s3_front.on_key(f"blobs/sha256/{hex_[:2]}/{hex_}/data")))
    response, body = await get(f"{registry.url}/v2/library/kept/blobs/{layer}")
    assert (response.code, sha256(body)) == (200, layer)
    assert fake.count("GET", "cdn", ref=layer) == 1  # cached

    outage = s3_front.fault(lambda seen: True, "answer_up", after=0, count=100_000)
    # After the first failed lookup, pulls skip the storage (a hanging S3 would make each
    # wait for its timeouts); a probe of its own lists the cache's folder every 0.2 s.
    monkeypatch.setattr(outage_module, "RETRY", 0.2)
    with Logs() as logs:
        # What the cache holds, and what it does not: both from the upstream.
        assert (await pull(registry, "library/kept", "latest"))["digest"] == kept.digest
        asked = len(s3_front.seen)
        assert (await pull(registry, "library/new", "latest"))["digest"] == new.digest
        response, body = await get(f"{registry.url}/v2/library/new/manifests/{new.digest}")
        assert (response.code, sha256(body)) == (200, new.digest)
        response, body = await get(
            f"{registry.url}/v2/library/kept/blobs/{layer}", headers={"Range": "bytes=10-19"}
        )
        assert response.code == 206, body
        assert body == b"".join(fake.content.blobs[layer].read(10, 20))
        # S3 was asked by the probe only: no lookup, no fill, no manifest write.
        probe = "/docker/registry/v2/txregistry/proxy/hub/"
        others = [x for x in s3_front.seen[asked:] if not is_listing(x, probe)]
        assert others == [], others
        logs.assert_clean()
        unreadable = logs.saying("cannot be read")
        assert len(unreadable) == 1, unreadable  # the outage is one event, not one per request
        level, text = unreadable[0]
        assert level == "warn"
        assert text.startswith("proxy hub: the cache's storage cannot be read: "), text
        assert text.endswith(
            "; serving pulls from the upstream without keeping them until it can (a line says when)"
        ), text
    assert outage.count < 100_000  # S3 was asked, and refused
    assert fake.count("GET", "cdn", ref=layer) == 3

    # Back in service: the probe finds it, one line says so, and the cache serves and keeps
    # again.
    with Logs() as logs:
        outage.count = 0
        await wait_for(lambda: bool(logs.saying("can be read again")))
        await pull(registry, "library/kept", "latest")
        assert [level for level, _ in logs.saying("can be read again")] == ["info"]
        logs.assert_clean()
    assert fake.count("GET", "cdn", ref=layer) == 3  # from the cache
    await pull(registry, "library/new", "latest")
    fetched = fake.count("GET", "cdn", ref=new.layers[0].digest)
    await pull(registry, "library/new", "latest")
    assert fake.count("GET", "cdn", ref=new.layers[0].digest) == fetched


def is_listing(seen: Seen, prefix: str) -> bool:
    """A ListObjectsV2 of a prefix ending with ``prefix``."""
    return (
        seen.method == "GET"
        and "list-type" in seen.query
        and seen.query.get("prefix", [""])[0].endswith(prefix)
    )
