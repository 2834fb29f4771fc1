"""The fake upstream itself: what other tests rely on it to do (CDN rules, ranges, determinism,
the standalone process)."""

from __future__ import annotations

import hashlib
import json

import pytest_twisted
import treq

from registry.api.digests import Digest
from registry.proxy.upstream import UpstreamClient
from tests.fakes.content import CHUNK, Content, GeneratedBlob
from tests.fakes.upstream import FakeUpstream, spawn_fake_upstream
from tests.proxy.conftest import ClientFactory, reactor
from tests.proxy.helpers import HashingConsumer


def test_generated_blobs_are_deterministic_and_ranged() -> None:
    size = 2 * CHUNK + 12345
    one, two = GeneratedBlob("seed", size), GeneratedBlob("seed", size)
    assert one.digest == two.digest
    assert one.digest != GeneratedBlob("other", size).digest
    whole = one.bytes()
    assert len(whole) == size
    assert "sha256:" + hashlib.sha256(whole).hexdigest() == one.digest
    start, end = CHUNK - 10, 2 * CHUNK + 7
    assert b"".join(one.read(start, end)) == whole[start:end]
    again = Content().add_image("library/x", "1", [100, 200])
    assert again == Content().add_image("library/x", "1", [100, 200])


async def _signed_cdn_url(fake: FakeUpstream, digest: str) -> str:
    token_response = await treq.get(
        f"{fake.url}/token?service=fake-registry&scope=repository:library/alpine:pull"
    )
    token = (await token_response.json())["token"]
    redirect = await treq.get(
        f"{fake.url}/v2/library/alpine/blobs/{digest}",
        headers={"Authorization": f"Bearer {token}"},
        allow_redirects=False,
    )
    assert redirect.code == 307
    await redirect.content()
    location: str = redirect.headers.getRawHeaders("location")[0]
    assert location.startswith(fake.cdn_url)
    return location


@pytest_twisted.ensureDeferred
async def test_cdn_rules(fake: FakeUpstream) -> None:
    image = fake.content.add_image("library/alpine", "latest", [5000])
    digest = image.layers[0].digest
    url = await _signed_cdn_url(fake, digest)
    full = await treq.get(url)
    body = await full.content()
    assert full.code == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest

    ranged = await treq.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.code == 206
    assert await ranged.content() == body[100:200]
    assert ranged.headers.getRawHeaders("content-range") == ["bytes 100-199/5000"]
    suffix = await treq.get(url, headers={"Range": "bytes=-10"})
    assert await suffix.content() == body[-10:]
    beyond = await treq.get(url, headers={"Range": "bytes=6000-"})
    assert beyond.code == 416
    await beyond.content()

    with_auth = await treq.get(url, headers={"Authorization": "Bearer x"})
    assert with_auth.code == 400
    await with_auth.content()
    assert fake.cdn_auth_rejections == 1
    unsigned = await treq.get(url.split("?")[0])
    assert unsigned.code == 403
    await unsigned.content()


@pytest_twisted.ensureDeferred
async def test_blob_head_through_a_redirect(fake: FakeUpstream, make_client: ClientFactory) -> None:
    image = fake.content.add_image("library/alpine", "latest", [4321])
    fake.switches.redirect_blob_head = True
    client = make_client()
    assert await client.blob_head("library/alpine", image.layers[0].digest) == 4321
    assert fake.count("HEAD", "cdn") == 1
    assert fake.cdn_auth_rejections == 0


@pytest_twisted.ensureDeferred
async def test_standalone_process() -> None:
    """``python -m tests.fakes.upstream`` serves its image and obeys the control endpoints."""
    running = await spawn_fake_upstream(
        reactor, "--layer-size", str(3 * CHUNK + 1), "--layer-size", "10", "--ratelimit", "5"
    )
    client = UpstreamClient(reactor, running.url, timeout=5.0, docker_hub_library=True)
    try:
        info = running.info["image"]
        manifest = await client.manifest("alpine", "latest")
        assert manifest.digest == Digest.parse(info["digest"])
        layer = info["layers"][0]
        blob = await client.blob("alpine", layer["digest"])
        consumer = HashingConsumer()
        assert await blob.write_to(consumer) == layer["size"]
        assert consumer.digest == layer["digest"]

        stats = json.loads(await (await treq.get(running.url + "/_fake/stats")).content())
        assert stats["blob_gets"] == {layer["digest"]: 1}
        assert stats["ratelimit_remaining"] == 4
        changed = await treq.post(
            running.url + "/_fake/switches", data=json.dumps({"fail_status": 503}).encode()
        )
        assert json.loads(await changed.content())["fail_status"] == 503
    finally:
        await client.close()
        await running.stop()
