"""Manifests and blobs through the upstream client: digests, headers, the CDN redirect,
streaming with back-pressure, and cancellation."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from registry.api.digests import Digest
from registry.api.mediatypes import (
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    OCI_IMAGE_INDEX,
    SCHEMA1_TYPES,
)
from registry.api.mediatypes import DOCKER_MANIFEST_V2 as DOCKER_MANIFEST
from registry.proxy.errors import (
    UpstreamBadResponse,
    UpstreamNotFound,
    UpstreamUnavailable,
)
from tests.fakes.content import Image
from tests.fakes.upstream import FakeUpstream
from tests.proxy.conftest import ClientFactory, reactor
from tests.proxy.helpers import HashingConsumer, wait_until


@pytest_twisted.ensureDeferred
async def test_manifest_get_and_head(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """GET returns the verified body and counts against the rate limit; HEAD does neither."""
    client = make_client()
    got = await client.manifest("library/alpine", "latest")
    assert got.media_type == DOCKER_MANIFEST
    assert got.size == len(image.manifest)
    assert hashlib.sha256(got.body or b"").hexdigest() == Digest.parse(image.digest).hex
    assert client.rate_limit is not None
    assert (client.rate_limit.limit, client.rate_limit.remaining) == (100, 99)
    assert client.rate_limit.window == 21600

    head = await client.manifest("library/alpine", "latest", "HEAD")
    assert head.body is None
    assert head.digest == got.digest
    assert head.size == len(image.manifest)
    assert head.media_type == DOCKER_MANIFEST
    assert client.rate_limit.remaining == 99
    assert fake.switches.ratelimit_remaining == 99

    by_digest = await client.manifest("library/alpine", image.digest)
    assert by_digest.body == image.manifest
    assert client.rate_limit.remaining == 98
    sent_accept = fake.log[-1].accept or ""
    # The one Accept list of registry.api.mediatypes; no schema1, which would only fetch
    # something the cache then refuses to store.
    sent = [t.strip() for t in sent_accept.split(",")]
    assert sent == list(MANIFEST_ACCEPT)
    assert not set(sent) & SCHEMA1_TYPES


@pytest_twisted.ensureDeferred
async def test_multi_arch_lists(fake: FakeUpstream, make_client: ClientFactory) -> None:
    docker = fake.content.add_image(
        "library/multi", "docker", [10], platforms=["linux/amd64", "linux/arm64"]
    )
    oci = fake.content.add_image("library/multi", "oci", [10], platforms=["linux/amd64"], oci=True)
    client = make_client()
    got = await client.manifest("library/multi", "docker")
    assert got.media_type == DOCKER_MANIFEST_LIST
    assert got.digest == Digest.parse(docker.digest)
    child = await client.manifest("library/multi", docker.children[1].digest)
    assert child.body == docker.children[1].manifest
    got_oci = await client.manifest("library/multi", "oci")
    assert got_oci.media_type == OCI_IMAGE_INDEX
    assert got_oci.body == oci.manifest


@pytest_twisted.ensureDeferred
async def test_retag_is_seen_by_head(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    client = make_client()
    before = await client.manifest("library/alpine", "latest", "HEAD")
    newer = fake.content.add_image("library/alpine", "next", [77])
    fake.content.retag("library/alpine", "latest", newer.digest)
    after = await client.manifest("library/alpine", "latest", "HEAD")
    assert before.digest == Digest.parse(image.digest)
    assert after.digest == Digest.parse(newer.digest)


@pytest_twisted.ensureDeferred
async def test_not_found_codes(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    client = make_client()
    with pytest.raises(UpstreamNotFound) as info:
        await client.manifest("library/alpine", "nope")
    assert (info.value.status, info.value.code) == (404, "MANIFEST_UNKNOWN")
    with pytest.raises(UpstreamNotFound) as info:
        await client.manifest("library/missing", "latest")
    assert info.value.code == "NAME_UNKNOWN"
    with pytest.raises(UpstreamNotFound) as info:
        await client.manifest("library/alpine", "nope", "HEAD")
    assert (info.value.status, info.value.code) == (404, None)
    missing = "sha256:" + "0" * 64
    with pytest.raises(UpstreamNotFound) as info:
        await client.blob("library/alpine", missing)
    assert info.value.code == "BLOB_UNKNOWN"
    with pytest.raises(UpstreamNotFound):
        await client.blob_head("library/alpine", missing)


@pytest_twisted.ensureDeferred
async def test_blob_via_cdn_without_authorization(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """The registry answers 307 to another port; the client follows it itself and leaves the
    token behind (the fake CDN would answer 400 otherwise)."""
    client = make_client()
    layer = image.layers[1]
    blob = await client.blob("library/alpine", layer.digest)
    assert blob.length == layer.size
    consumer = HashingConsumer()
    size = await blob.write_to(consumer)
    assert size == layer.size == consumer.size
    assert consumer.digest == layer.digest
    assert fake.cdn_auth_rejections == 0
    registry_get = next(r for r in fake.log if r.kind == "blob")
    cdn_get = next(r for r in fake.log if r.kind == "cdn")
    assert (registry_get.authorization or "").startswith("Bearer ")
    assert cdn_get.authorization is None
    assert fake.count("GET", "cdn", ref=layer.digest) == 1
    assert await client.blob_head("library/alpine", layer.digest) == layer.size
    assert client.bytes_received >= layer.size


@pytest_twisted.ensureDeferred
async def test_blob_back_pressure(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """A consumer that pauses after every write still gets every byte, in order."""
    client = make_client(timeout=1.0)
    layer = image.layers[1]
    blob = await client.blob("library/alpine", layer.digest)
    consumer = HashingConsumer(pause_for=0.01)
    await blob.write_to(consumer)
    assert consumer.pauses >= 2
    assert consumer.digest == layer.digest


@pytest_twisted.ensureDeferred
async def test_blob_deliver_to_protocol(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """The Twisted-style API: ResponseDone at the end, the transport pausable."""
    client = make_client()
    layer = image.layers[1]

    class Sink(Protocol):
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.done: Deferred[list[Failure]] = Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.parts.append(data)
            self.transport.pauseProducing()  # type: ignore[union-attr]
            reactor.callLater(0, self.transport.resumeProducing)  # type: ignore[union-attr]

        def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
            self.done.callback([reason])

    sink = Sink()
    blob = await client.blob("library/alpine", layer.digest)
    blob.deliver(sink)
    [reason] = await sink.done
    assert reason.check(ResponseDone)
    assert "sha256:" + hashlib.sha256(b"".join(sink.parts)).hexdigest() == layer.digest


@pytest_twisted.ensureDeferred
async def test_small_blob_read(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    client = make_client()
    assert image.config is not None
    blob = await client.blob("library/alpine", image.config)
    config = await blob.read()
    assert "sha256:" + hashlib.sha256(config).hexdigest() == image.config


@pytest_twisted.ensureDeferred
async def test_corrupt_blob_is_rejected(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.corrupt_blobs = True
    client = make_client()
    blob = await client.blob("library/alpine", image.layers[1].digest)
    with pytest.raises(UpstreamBadResponse, match="hashes to"):
        await blob.write_to(HashingConsumer())
    # a consumer that hashes for itself may skip our check
    unverified = await client.blob("library/alpine", image.layers[1].digest)
    consumer = HashingConsumer()
    await unverified.write_to(consumer, verify=False)
    assert consumer.digest != image.layers[1].digest


@pytest_twisted.ensureDeferred
async def test_cut_blob_is_unavailable(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.cut_blob_after = 100_000
    client = make_client()
    blob = await client.blob("library/alpine", image.layers[1].digest)
    consumer = HashingConsumer()
    with pytest.raises(UpstreamUnavailable) as cut:
        await blob.write_to(consumer)
    assert consumer.size == 100_000
    # Words for a log line, not the repr of Twisted's list of failures.
    size = image.layers[1].size
    assert str(cut.value) == (
        f"connection lost after 100000 of {size} bytes (closed by the other side)"
    )


@pytest_twisted.ensureDeferred
async def test_stalled_blob_body_times_out(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.stall_blob_after = 50_000
    client = make_client(timeout=0.3)
    blob = await client.blob("library/alpine", image.layers[1].digest)
    with pytest.raises(UpstreamUnavailable, match="stalled"):
        await blob.write_to(HashingConsumer())
    await wait_until(lambda: fake.cdn_open_connections == 0)


@pytest_twisted.ensureDeferred
async def test_cancel_mid_blob_closes_the_connection(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """Cancelling the coroutine that streams a blob drops the upstream (CDN) connection."""
    big = fake.content.add_image("library/big", "1", [4 << 20])
    fake.switches.blob_rate = 400_000
    client = make_client()
    blob = await client.blob("library/big", big.layers[0].digest)
    consumer = HashingConsumer()
    streaming = ensureDeferred(blob.write_to(consumer))
    await wait_until(lambda: consumer.size > 0)
    assert fake.cdn_open_connections == 1
    streaming.cancel()
    with pytest.raises(CancelledError):
        await streaming
    await wait_until(lambda: fake.cdn_open_connections == 0, within=2.0)
    assert consumer.size < big.layers[0].size


@pytest_twisted.ensureDeferred
async def test_cancel_before_headers_closes_the_connection(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    client = make_client()
    await client.manifest("library/alpine", "latest", "HEAD")  # token and challenge in hand
    await client.close()  # no idle pooled connection left to confuse the count
    fake.switches.stall = True
    pending = ensureDeferred(client.manifest("library/alpine", "latest"))
    await wait_until(lambda: len(fake.stalled) == 1)
    assert fake.registry_open_connections == 1
    pending.cancel()
    with pytest.raises(CancelledError):
        await pending
    await wait_until(lambda: fake.registry_open_connections == 0, within=2.0)


@pytest_twisted.ensureDeferred
async def test_manifest_digest_checks(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """A body that does not hash to the announced digest, or to the digest asked for, is
    refused; without a digest header the body's own sha256 is the digest."""
    client = make_client()
    fake.switches.corrupt_manifests = True
    with pytest.raises(UpstreamBadResponse):
        await client.manifest("library/alpine", "latest")
    fake.switches.omit_manifest_digest = True
    with pytest.raises(UpstreamBadResponse):
        await client.manifest("library/alpine", image.digest)
    fake.switches.corrupt_manifests = False
    by_tag = await client.manifest("library/alpine", "latest")
    assert by_tag.digest == Digest.parse(image.digest)
    with pytest.raises(UpstreamBadResponse, match="without a digest"):
        await client.manifest("library/alpine", "latest", "HEAD")
    head = await client.manifest("library/alpine", image.digest, "HEAD")
    assert head.digest == Digest.parse(image.digest)


@pytest_twisted.ensureDeferred
async def test_blob_from_offset(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """Resuming a fill: the rest of the blob from an offset, through the CDN's Range support."""
    client = make_client()
    layer = image.layers[1]
    whole = await (await client.blob("library/alpine", layer.digest)).read()
    rest = await client.blob("library/alpine", layer.digest, offset=1000)
    assert (rest.offset, rest.length) == (1000, layer.size - 1000)
    assert await rest.read() == whole[1000:]
