"""
What a fleet instance trusts of a fill lease it finds in Redis, and of the peer it names.

A lease names a peer URL, and anyone able to write to Redis can plant one.  The instance sends
the fleet secret only to a URL that the lease's instance, alive, advertises for itself; a part
of a blob (a Range) is never taken from a peer, whose bytes would reach the client unhashed;
and a peer's answer other than a stream is never read whole.

Instances in this process, on an in-memory storage and a real Redis; the "peer" is a fake
listener in this reactor that records what it is asked and serves its own bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from registry.api.digests import Digest
from registry.config import RedisConfig
from registry.proxy.cache import ProxyCache
from registry.proxy.fleet import Fleet, FleetRedis
from registry.proxy.fleet.lease import FillLeases, lease_key
from registry.proxy.fleet.peer import PeerClient, PeerUnavailable
from registry.proxy.upstream import UpstreamClient
from registry.storage.memory import MemoryDriver
from tests.auth.conftest import LogCapture
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import HashingConsumer
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.registries import Proxied
from tests.proxy.util import hub_cache, reactor

NAME = "library/planted"
LAYER = 512 * 1024
SECRET = "fleet-secret-of-this-test"


class EvilPeer(Resource):
    """Answers every fill request with ``A`` bytes and the size it is told, and records the
    requests (their Authorization header included)."""

    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.size = size
        self.asked: list[tuple[bytes, bytes]] = []

    def render_GET(self, request: Any) -> bytes:
        self.asked.append((request.uri, request.getHeader(b"authorization") or b""))
        length = int(request.args.get(b"length", [b"-1"])[0])
        offset = int(request.args.get(b"offset", [b"0"])[0])
        if length < 0:
            length = self.size - offset
        request.setHeader(b"x-blob-size", str(self.size).encode())
        return b"A" * length


@implementer(IPushProducer)
class EndlessBody:
    """A 404 whose body never ends (64 KiB a write while the connection takes them)."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.sent = 0
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.stopped = True

    def _pump(self) -> None:
        if not self.paused and not self.stopped:
            self.request.write(b"no such fill in flight\n" + b"x" * 65536)
            self.sent += 65536
            reactor.callLater(0, self._pump)


class Endless404(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.bodies: list[EndlessBody] = []
        self.closed: Deferred[None] = Deferred()

    def render_GET(self, request: Any) -> int:
        request.setResponseCode(404)
        body = EndlessBody(request)
        self.bodies.append(body)
        request.registerProducer(body, True)
        request.notifyFinish().addBoth(lambda _: self.closed.callback(None))
        body.resumeProducing()
        return NOT_DONE_YET


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[FleetRedis]:  # noqa: F811
    client = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    client.startService()
    yield client
    client.stopService()


async def listening(resource: Resource) -> tuple[str, Any]:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    site = Site(resource)
    site.noisy = False
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    return f"http://127.0.0.1:{port.getHost().port}", port


@pytest_twisted.async_yield_fixture
async def instance(
    fake: FakeUpstream, redis: FleetRedis
) -> AsyncIterator[tuple[ProxyCache, PeerClient]]:
    """Instance ``b``, with a short lease (a planted one lapses within a second or two)."""
    leases = FillLeases(redis, reactor, "b", "", 1.0)
    peers = PeerClient(reactor, SECRET, 5.0)
    client = UpstreamClient(reactor, fake.url, timeout=5)
    cache = hub_cache(
        fake.url, client, MemoryDriver(), fleet=Fleet(redis, leases, peers, "b", reactor)
    )
    yield cache, peers
    leases.stop()
    await peers.close()
    await client.close()


def plant(redis_server: RedisServer, digest: str, instance: str, url: str) -> None:  # noqa: F811
    lease = json.dumps({"instance": instance, "through": NAME, "url": url})
    redis_server.command("SET", lease_key("hub", Digest.parse(digest)), lease, "PX", "1500")


async def read(cache: ProxyCache, digest: str, offset: int, length: int | None) -> bytes:
    producer = await cache.blob_open(NAME, NAME, Digest.parse(digest), offset, length)
    got: list[bytes] = []

    class Collect(HashingConsumer):
        def write(self, data: bytes) -> None:
            got.append(data)

    await Deferred.fromCoroutine(_produce(producer, Collect())).addTimeout(30, reactor)
    return b"".join(got)


async def _produce(producer: Any, consumer: Any) -> None:
    await producer.startProducing(consumer)


@pytest.mark.parametrize("advertised", [None, "http://127.0.0.1:9"])
@pytest_twisted.ensureDeferred
async def test_a_lease_naming_a_url_its_instance_does_not_advertise_gets_no_secret(
    fake: FakeUpstream,
    redis_server: RedisServer,  # noqa: F811
    instance: tuple[ProxyCache, PeerClient],
    advertised: str | None,
) -> None:
    """A lease planted in Redis naming the evil listener, for an instance that is not alive
    or that advertises another URL: the listener is never contacted (so never sent the
    secret); the client waits, this instance fills the blob once the lease lapses, and the
    client gets the upstream's bytes."""
    cache, _peers = instance
    layer = fake.content.add_image(NAME, "latest", [LAYER]).layers[0]
    evil = EvilPeer(LAYER)
    url, port = await listening(evil)
    try:
        if advertised is not None:
            redis_server.command("SET", "txregistry:alive:hub:cache-x", advertised, "PX", "30000")
        plant(redis_server, layer.digest, "cache-x", url)
        body = await read(cache, layer.digest, 0, None)
        assert evil.asked == []
        assert len(body) == LAYER
        assert body == b"".join(fake.content.blobs[layer.digest].read(0, LAYER))
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_range_is_never_served_from_a_peer(
    fake: FakeUpstream,
    redis_server: RedisServer,  # noqa: F811
    instance: tuple[ProxyCache, PeerClient],
) -> None:
    """Even a peer that passes the advertise check (a Redis writer who also planted the
    alive key) does not serve a Range: those bytes would reach the client unhashed.  The
    request waits for the verified blob and gets the upstream's bytes."""
    cache, _peers = instance
    layer = fake.content.add_image(NAME, "latest", [LAYER]).layers[0]
    evil = EvilPeer(LAYER)
    url, port = await listening(evil)
    try:
        redis_server.command("SET", "txregistry:alive:hub:cache-x", url, "PX", "30000")
        plant(redis_server, layer.digest, "cache-x", url)
        body = await read(cache, layer.digest, 100, 100)
        assert evil.asked == []
        assert body == b"".join(fake.content.blobs[layer.digest].read(100, 200))
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_peer_answer_that_is_not_a_stream_is_not_read_whole() -> None:
    """A "peer" answering 404 with a body that never ends: the instance reads its first line
    for the log, closes the connection, and the open fails at once (it used to read the
    whole body into memory)."""
    resource = Endless404()
    url, port = await listening(resource)
    peers = PeerClient(reactor, SECRET, 5.0)
    digest = Digest.parse("sha256:" + "ab" * 32)
    try:
        opening = Deferred.fromCoroutine(peers.open(url, "hub", digest, 0, -1))
        with pytest.raises(PeerUnavailable, match="answered 404: no such fill in flight"):
            await opening.addTimeout(10, reactor)
        await resource.closed.addTimeout(10, reactor)  # the instance hung up
        assert resource.bodies[0].sent < 64 * 1024 * 1024
    finally:
        await peers.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_peer_serving_other_bytes_is_one_warning_line(
    fake: FakeUpstream,
    redis_server: RedisServer,  # noqa: F811
    proxied: Proxied,
) -> None:
    """A whole GET streamed from a peer whose bytes hash to another digest (it passes the
    advertise check: a Redis writer planted the alive key too) is cut short, and the
    instance says so in one warning line naming the digest and the peer, not a critical
    traceback (the log watch fails this test on one)."""
    layer = fake.content.add_image(NAME, "latest", [LAYER]).layers[0]
    evil = EvilPeer(LAYER)
    url, port = await listening(evil)
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        registry = await proxied(
            {
                "redis": {"addr": redis_server.addr},
                "fleet": {"instance": "b", "secret": SECRET, "lease": "1s"},
            }
        )
        redis_server.command("SET", "txregistry:alive:hub:cache-x", url, "PX", "30000")
        lease = json.dumps({"instance": "cache-x", "through": NAME, "url": url})
        redis_server.command(
            "SET", lease_key("hub", Digest.parse(layer.digest)), lease, "PX", "30000"
        )
        response = await treq.get(f"{registry.url}/v2/{NAME}/blobs/{layer.digest}")
        assert response.code == 200
        with pytest.raises(ResponseFailed):
            await response.content()
        assert len(evil.asked) == 1
        cut = [e for e in capture.events if "body cut short" in formatEvent(e)]
        assert len(cut) == 1, capture.text()
        line = formatEvent(cut[0])
        assert cut[0]["log_level"] == LogLevel.warn
        assert layer.digest in line and f"peer {url}" in line, line
        assert "\n" not in line
    finally:
        globalLogPublisher.removeObserver(capture)
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stream_to_the_blobs_end_is_opened_once() -> None:
    """A peer stream opened without a length (to the blob's end, as the first source of a
    whole read is) relays the whole body: it used to refuse the first bytes ("body longer
    than -1 bytes"), and every peer stream was opened twice."""
    peer = EvilPeer(LAYER)
    url, port = await listening(peer)
    peers = PeerClient(reactor, SECRET, 5.0)
    try:
        size, producer = await peers.open(url, "hub", Digest.parse("sha256:" + "cd" * 32), 0, -1)
        assert size == LAYER
        consumer = HashingConsumer()
        await Deferred.fromCoroutine(_produce(producer, consumer)).addTimeout(10, reactor)
        assert consumer.size == LAYER
        assert len(peer.asked) == 1
    finally:
        await peers.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_dead_holder_is_said_unavailable_once(
    fake: FakeUpstream,
    redis_server: RedisServer,  # noqa: F811
    instance: tuple[ProxyCache, PeerClient],
) -> None:
    """A holder that died (its port refuses connections) while its lease runs: the client
    waits, asking at every poll, and the log says "peer stream unavailable" once, not once
    per poll; the lease lapses and this instance fills the blob."""
    cache, _peers = instance
    layer = fake.content.add_image(NAME, "latest", [LAYER]).layers[0]
    url, port = await listening(Resource())
    await port.stopListening()  # nothing listens there any more
    redis_server.command("SET", "txregistry:alive:hub:cache-x", url, "PX", "30000")
    plant(redis_server, layer.digest, "cache-x", url)
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        body = await read(cache, layer.digest, 0, None)
    finally:
        globalLogPublisher.removeObserver(capture)
    assert len(body) == LAYER
    said = [m for m in capture.messages() if "peer stream unavailable" in m]
    assert len(said) == 1, said
