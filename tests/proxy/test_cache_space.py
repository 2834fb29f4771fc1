"""
``max_size`` under parallel fills (registry.proxy.space): a fill reserves its blob's size and
evicts for it before it stores a byte, so parallel cold pulls of distinct layers never take
the cache over its bound; a fill that gets no room within ``space_wait``, or a blob larger than
``max_size``, is served without being kept.  One instance on the filesystem, the fake upstream.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet.defer import Deferred

from registry.api.digests import Digest
from registry.proxy.cache import ProxyCache
from registry.proxy.fill import Fill
from registry.proxy.service import ProxyService
from registry.storage.blobs import BlobStore
from tests.e2e.client import sha256
from tests.e2e.harness import InProcessRegistry
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import blob_data_path, fetch, metric, storage_root, wait_for

LAYER = 200_000
HELD_AT = LAYER - 1000


def proxy_cache(registry: InProcessRegistry) -> ProxyCache:
    """The registry's one pull-through cache (found in its service tree)."""
    stack: list[Any] = [registry.service]
    for _step in range(1000):
        if not stack:
            break
        service = stack.pop()
        if isinstance(service, ProxyService):
            return service.caches[0]
        stack.extend(getattr(service, "services", []))
    raise AssertionError("no ProxyService")


def folder_bytes(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # evicted or moved meanwhile
                total += os.stat(os.path.join(parent, name)).st_size
    return total


class Storage:
    """What the cache's storage holds: blob data, and the fills' files in flight."""

    def __init__(self, root: Path) -> None:
        self.v2 = root / "docker/registry/v2"

    @property
    def blobs(self) -> int:
        return folder_bytes(self.v2 / "blobs")

    @property
    def in_flight(self) -> int:
        return folder_bytes(self.v2 / "txregistry/proxy/hub/fills")


class CommitWatch:
    """The cache's storage driver, sampling the stored blob bytes right after every fill's
    commit (its move into the blob's path): the only moment the stored total grows."""

    def __init__(self, inner: Any, storage: Storage) -> None:
        self._inner = inner
        self._storage = storage
        self.samples: list[int] = []

    async def move(self, source: str, dest: str) -> None:
        await self._inner.move(source, dest)
        self.samples.append(self._storage.blobs)

    async def put_content(self, path: str, data: bytes) -> None:
        await self._inner.put_content(path, data)
        if path.endswith("/data"):  # a manifest's (or config's) data, stored whole
            self.samples.append(self._storage.blobs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def watch_commits(registry: InProcessRegistry) -> tuple[ProxyCache, Storage, CommitWatch]:
    cache = proxy_cache(registry)
    storage = Storage(storage_root(registry))
    watch = CommitWatch(cache.driver, storage)
    cache.driver = watch
    return cache, storage, watch


def blob_url(registry: InProcessRegistry, digest: str) -> str:
    return f"{registry.url}/v2/library/alpine/blobs/{digest}"


async def get_blob(url: str) -> tuple[int, str]:
    response, body = await fetch(url)
    return response.code, sha256(body)


class Pull:
    """A blob GET started now and read in the background: ``answered`` once the response's
    headers came (the fill got room, or was told to serve without keeping)."""

    def __init__(self, url: str) -> None:
        self.answered = False
        self.done: Deferred[tuple[int, str]] = Deferred.fromCoroutine(self._run(url))

    async def _run(self, url: str) -> tuple[int, str]:
        response = await treq.get(url, unbuffered=True)
        self.answered = True
        body = await treq.content(response)
        return response.code, sha256(body)


def opened_fills(cache: ProxyCache, digests: list[str]) -> list[Fill]:
    fills = [cache.inflight_fill(Digest.parse(d)) for d in digests]
    return [fill for fill in fills if fill is not None and fill.opened]


@pytest_twisted.ensureDeferred
async def test_parallel_cold_fills_stay_under_max_size(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """max_size holds three layers and holds them; four distinct cold layers are pulled at
    once.  Room is made before each fill stores a byte: three fills start (evicting the three
    cached layers), the fourth waits until one committed and was read; the stored blobs never
    pass max_size at any commit, nor, with the files in flight, max_size plus one layer."""
    limit = 3 * LAYER
    image = fake.content.add_image("library/alpine", "latest", [LAYER] * 7)
    digests = [layer.digest for layer in image.layers]
    cached, cold = digests[:3], digests[3:]
    registry = await proxied(max_size=str(limit), space_wait="60s", timeout="30s")
    cache, storage, watch = watch_commits(registry)
    for digest in cached:
        assert await get_blob(blob_url(registry, digest)) == (200, digest)
    assert storage.blobs == limit

    holds = [fake.hold_body(digest, HELD_AT) for digest in cold]
    pulls = [Pull(blob_url(registry, digest)) for digest in cold]

    def started_and_held() -> bool:
        fills = opened_fills(cache, cold)
        return len(fills) >= 3 and all(fill.stored >= HELD_AT for fill in fills)

    await wait_for(started_and_held, within=30)
    # Every fill that started is at its held point: what the cache's storage holds now.
    assert storage.blobs + storage.in_flight <= limit + LAYER, (
        storage.blobs,
        storage.in_flight,
    )
    for hold in holds:
        hold.release()
    for pull, digest in zip(pulls, cold, strict=True):
        assert await pull.done == (200, digest)
    await wait_for(lambda: not cache.active_fills, within=30)
    assert watch.samples, "no commit seen"
    assert max(watch.samples) <= limit, watch.samples
    assert storage.blobs <= limit
    assert storage.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_a_fill_without_room_in_space_wait_is_served_not_kept(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Two fills in flight hold all of max_size; a third gets no room within space_wait: its
    client still gets the whole blob, which is not kept (nothing evicted for it, its file
    removed, a log line and a counter say so); the two others are cached."""
    limit = 2 * LAYER
    image = fake.content.add_image("library/alpine", "latest", [LAYER] * 3)
    first, second, third = (layer.digest for layer in image.layers)
    registry = await proxied(max_size=str(limit), space_wait="0.5s", timeout="30s")
    cache, storage, watch = watch_commits(registry)
    root = storage_root(registry)
    holds = [fake.hold_body(digest, HELD_AT) for digest in (first, second)]
    held = [Pull(blob_url(registry, digest)) for digest in (first, second)]
    await wait_for(lambda: len(opened_fills(cache, [first, second])) == 2, within=30)

    assert await get_blob(blob_url(registry, third)) == (200, third)
    assert not blob_data_path(root, third).exists()
    await wait_for(lambda: storage.in_flight <= 2 * LAYER, within=10)
    _response, body = await fetch(f"{registry.url}/metrics")
    assert metric(body.decode(), "txregistry_proxy_unkept_fills_total") == 1

    for hold in holds:
        hold.release()
    for pull, digest in zip(held, (first, second), strict=True):
        assert await pull.done == (200, digest)
    await wait_for(lambda: not cache.active_fills, within=30)
    assert blob_data_path(root, first).exists()
    assert blob_data_path(root, second).exists()
    assert max(watch.samples) <= limit
    await wait_for(lambda: storage.in_flight == 0, within=10)


@pytest_twisted.ensureDeferred
async def test_a_blob_larger_than_max_size_is_served_not_kept(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """A layer larger than max_size is streamed to its client and not kept: keeping it would
    first evict everything else for a blob the next fill would evict in turn."""
    limit = 2 * LAYER
    image = fake.content.add_image("library/alpine", "latest", [LAYER, LAYER, 3 * LAYER])
    small_a, small_b, huge = (layer.digest for layer in image.layers)
    registry = await proxied(max_size=str(limit))
    _cache, storage, watch = watch_commits(registry)
    root = storage_root(registry)
    for digest in (small_a, small_b):
        assert await get_blob(blob_url(registry, digest)) == (200, digest)
    assert await get_blob(blob_url(registry, huge)) == (200, huge)
    assert await get_blob(blob_url(registry, huge)) == (200, huge)  # fetched again
    assert not blob_data_path(root, huge).exists()
    assert blob_data_path(root, small_a).exists()
    assert blob_data_path(root, small_b).exists()
    await wait_for(lambda: storage.in_flight == 0, within=10)
    assert fake.count("GET", "cdn", ref=huge) == 2
    _response, body = await fetch(f"{registry.url}/metrics")
    assert metric(body.decode(), "txregistry_proxy_unkept_fills_total") == 2
    assert max(watch.samples) <= limit


@pytest_twisted.ensureDeferred
async def test_a_manifest_is_stored_once_room_is_made_for_it(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Two cached layers fill max_size; the image's manifest pulled next reserves its size
    and evicts for it as a fill does, before its data is written: the stored bytes never pass
    max_size, and the manifest is served and cached."""
    limit = 2 * LAYER
    image = fake.content.add_image("library/alpine", "latest", [LAYER, LAYER])
    registry = await proxied(max_size=str(limit))
    cache, storage, watch = watch_commits(registry)
    cache.blobs = BlobStore(watch)
    for layer in image.layers:
        assert await get_blob(blob_url(registry, layer.digest)) == (200, layer.digest)
    assert storage.blobs == limit
    response, body = await fetch(f"{registry.url}/v2/library/alpine/manifests/{image.digest}")
    assert (response.code, body) == (200, image.manifest)
    assert blob_data_path(storage_root(registry), image.digest).exists()
    assert max(watch.samples) <= limit, watch.samples
