"""Distinct repository names pulled through one cache keep its in-memory tables at their caps:
the index's entries stay on disk (registry.proxy.stored), only a capped table in memory."""

from __future__ import annotations

import pytest_twisted

from registry.proxy.cache import Limits, ProxyCache
from registry.proxy.config import ProxyConfig
from registry.proxy.stored import StoredIndex
from registry.proxy.upstream import UpstreamClient
from registry.storage.blobs import BlobStore
from registry.storage.memory import MemoryDriver
from registry.storage.tags import TagStore
from tests.fakes.upstream import FakeUpstream
from tests.proxy.util import reactor

NAMES = 40
CAP = 4


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
    cache = ProxyCache(
        config=ProxyConfig(name="hub", remoteurl=fake.url, default=True),
        client=client,
        driver=driver,
        blobs=BlobStore(driver),
        tags=TagStore(driver),
        reactor=reactor,
        limits=Limits(inflight=CAP, remembered=CAP),
        index=index,
    )
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
