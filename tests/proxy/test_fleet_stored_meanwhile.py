"""
A fill lease can be free because its holder has just stored the blob and let the lease go:
an instance that looked in storage before that, and took the lease after, reads what is stored
instead of fetching the blob from the upstream a second time (`StoredMeanwhile`).

Two fleet instances in one process, on one storage and a real Redis; the order of the race
is fixed by letting instance A's whole fill run between B's look and B's lease.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from registry.api.digests import Digest
from registry.config import RedisConfig
from registry.proxy.cache import ProxyCache
from registry.proxy.fleet import Fleet, FleetRedis
from registry.proxy.fleet.lease import FillLeases
from registry.proxy.fleet.peer import PeerClient
from registry.proxy.upstream import UpstreamClient
from registry.storage.memory import MemoryDriver
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import HashingConsumer
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.util import hub_cache, reactor

NAME = "library/raced"
LAYER = 3 * 1024 * 1024


def instance(
    fake: FakeUpstream, redis: FleetRedis, driver: MemoryDriver, name: str
) -> tuple[ProxyCache, UpstreamClient]:
    leases = FillLeases(redis, reactor, name, "", 5.0)
    fleet = Fleet(redis, leases, PeerClient(reactor, "secret", 5.0), name, reactor)
    client = UpstreamClient(reactor, fake.url, timeout=5)
    return hub_cache(fake.url, client, driver, fleet=fleet), client


async def pull(cache: ProxyCache, digest: Digest) -> str:
    producer = await cache.blob_open(NAME, NAME, digest, 0, None)
    consumer = HashingConsumer()
    await producer.startProducing(consumer)
    return consumer.digest


@pytest_twisted.ensureDeferred
async def test_a_lease_freed_by_a_stored_blob_reads_storage(
    fake: FakeUpstream,
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = fake.content.add_image(NAME, "latest", [LAYER])
    layer = image.layers[0]
    digest = Digest.parse(layer.digest)
    redis = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    redis.startService()
    driver = MemoryDriver()  # the storage the fleet shares
    a, a_client = instance(fake, redis, driver, "a")
    b, b_client = instance(fake, redis, driver, "b")
    assert b.fleet is not None
    b_leases = b.fleet.leases
    acquire = FillLeases.acquire
    a_done: list[str] = []

    async def after_a_filled(self: FillLeases, *args: Any) -> Any:
        if self is b_leases:
            # B has looked (nothing stored) and goes for the lease: A fills, stores, lets go.
            filled = Deferred.fromCoroutine(pull(a, digest)).addTimeout(20, reactor)
            a_done.append(await filled)
        return await acquire(self, *args)

    monkeypatch.setattr(FillLeases, "acquire", after_a_filled)
    try:
        got = await Deferred.fromCoroutine(pull(b, digest)).addTimeout(30, reactor)
        assert a_done == [layer.digest], "A's fill did not run inside B's lease request"
        assert got == layer.digest
        assert fake.count("GET", "cdn", ref=layer.digest) == 1, fake.stats()
    finally:
        await a_client.close()
        await b_client.close()
        redis.stopService()
