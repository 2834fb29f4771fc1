"""Distinct repository names pulled through one cache keep its in-memory tables at their caps:
the index's entries stay on disk (registry.proxy.stored) or, in a fleet, in Redis
(registry.proxy.fleet.ledger), only a capped table in memory."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import pytest_twisted

from registry.config import RedisConfig
from registry.proxy import cache as cache_module
from registry.proxy.cache import Limits, ProxyCache
from registry.proxy.fleet import Fleet, FleetRedis
from registry.proxy.fleet.lease import FillLeases
from registry.proxy.fleet.peer import PeerClient
from registry.proxy.stored import StoredIndex
from registry.proxy.upstream import UpstreamClient
from registry.storage.memory import MemoryDriver
from tests.fakes.upstream import FakeUpstream
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.util import hub_cache, reactor

NAMES = 40
CAP = 4


def capped_cache(
    fake: FakeUpstream, client: UpstreamClient, driver: MemoryDriver, **state: Any
) -> ProxyCache:
    """A cache of ``fake`` whose in-flight and remembered tables hold `CAP` entries each;
    ``state`` is its index (one instance) or its fleet."""
    return hub_cache(fake.url, client, driver, limits=Limits(inflight=CAP, remembered=CAP), **state)


@pytest_twisted.ensureDeferred
async def test_many_names_keep_every_table_at_its_cap(fake: FakeUpstream) -> None:
    """40 names, each one manifest pulled twice, through a cache whose tables hold 4 entries:
    the index's hot table, its pending uses and every table of recent answers stay at 4, while
    the index on disk holds every manifest (its size counts them all, the first is known)."""
    for n in range(NAMES):
        fake.content.add_image(f"team/app{n}", "latest", [100])
    driver = MemoryDriver()
    client = UpstreamClient(reactor, fake.url, timeout=5, max_tokens=CAP)
    index = StoredIndex(reactor, "hub", hot_entries=CAP, touch_batch=CAP)
    cache = capped_cache(fake, client, driver, index=index)
    await cache.load_state()
    total = 0
    digests: list[str] = []
    try:
        for n in range(NAMES):
            name = f"team/app{n}"
            first = await cache.manifest_get(name, name, "latest")
            again = await cache.manifest_get(name, name, "latest")  # a hit: recorded as a use
            assert again.body == first.body
            total += len(first.body)
            digests.append(str(first.digest))
            sizes = cache.table_sizes()
            assert all(size <= CAP for size in sizes.values()), sizes
        sizes = cache.table_sizes()
        assert sizes["index_hot"] == CAP
        assert sizes["checked"] == CAP
        assert index.size == total
        # The first name left the hot table long ago: its entry is found on disk.
        assert await index.touch_manifest("team/app0", digests[0], 1e9)
        assert not await index.touch_manifest("team/app0", digests[1], 1e9)
    finally:
        await client.close()
        await index.close()


@pytest_twisted.ensureDeferred
async def test_a_fleet_instance_keeps_its_tables_at_their_caps_and_evicts_a_page_at_a_time(
    fake: FakeUpstream,
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fleet instance (real Redis): 40 names, each a manifest and its two blobs, keep the
    instance's tables at 4 entries while Redis counts every byte.  Eviction down to half of
    that, reading the LRU order 4 entries at a time, goes oldest name first and never takes a
    blob whose manifest stays (references are counted in Redis)."""
    monkeypatch.setattr(cache_module, "FLEET_PAGE", CAP)
    redis = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    redis.startService()
    leases = FillLeases(redis, reactor, "a", "", 5.0)
    fleet = Fleet(redis, leases, PeerClient(reactor, "secret", 5.0), "a", reactor)
    driver = MemoryDriver()
    client = UpstreamClient(reactor, fake.url, timeout=5, max_tokens=CAP)
    cache = capped_cache(fake, client, driver, fleet=fleet)
    ledger = cache.ledger
    assert ledger is not None
    pieces: list[list[str]] = []
    manifests: list[str] = []
    total = 0
    try:
        for n in range(NAMES):
            name = f"team/app{n}"
            fake.content.add_image(name, "latest", [100 + n])
            first = await cache.manifest_get(name, name, "latest")
            document = json.loads(first.body)
            blobs = [document["config"], *document["layers"]]
            for blob in blobs:  # as a fill's commit records it
                await cache.index.add_blob(name, blob["digest"], blob["size"], cache.now())
            await cache.manifest_get(name, name, "latest")  # a hit: its blobs are older
            pieces.append([blob["digest"] for blob in blobs])
            manifests.append(str(first.digest))
            total += len(first.body) + sum(blob["size"] for blob in blobs)
            await ledger.push(cache.fleet_index(), cache.now())
            sizes = cache.table_sizes()
            assert all(size <= CAP for size in sizes.values()), sizes
        assert cache.table_sizes()["fleet_hot_manifests"] == CAP
        assert await ledger.size() == total
        cache.config = attrs.evolve(cache.config, max_size=total // 2)
        assert await cache.evict() > 0
        assert total // 2 - 2000 < await ledger.size() <= total // 2
        kept = [n for n in range(NAMES) if await ledger.has_manifest(f"team/app{n}", manifests[n])]
        assert kept == list(range(NAMES - len(kept), NAMES)), kept  # the newest names
        for n in kept:  # a manifest kept keeps its blobs
            assert all([await ledger.blob_size(digest) is not None for digest in pieces[n]])
        for n in range(kept[0] - 1):  # the walk started over past each manifest it evicted
            assert all([await ledger.blob_size(digest) is None for digest in pieces[n]])
    finally:
        await client.close()
        redis.stopService()
