"""Bounds and persistence: LRU eviction that keeps shared layers, a cache surviving restarts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from registry.proxy.cache import ProxyCache
from registry.proxy.config import parse_proxy
from registry.proxy.stored import StoredIndex
from registry.proxy.upstream import UpstreamClient
from registry.storage.blobs import BlobStore
from registry.storage.driver import StorageError
from registry.storage.filesystem import FilesystemDriver
from registry.storage.tags import TagStore
from tests.e2e.client import error_codes
from tests.e2e.harness import RegistryProcess
from tests.fakes.content import GeneratedBlob
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied, proxy_section
from tests.proxy.util import (
    blob_data_path,
    build_image,
    fetch,
    metric,
    pull,
    reactor,
    storage_root,
    wait_for,
)

SIZE = 150_000


@pytest_twisted.ensureDeferred
async def test_lru_eviction_keeps_a_layer_shared_with_a_cached_image(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    shared, only_a, only_b = (GeneratedBlob(seed, SIZE) for seed in ("shared", "a", "b"))
    image_a = build_image(fake.content, "library/app", "a", [shared, only_a])
    image_b = build_image(fake.content, "library/app", "b", [shared, only_b])
    registry = await proxied(max_size="350KB")
    root = storage_root(registry)
    await pull(registry, "app", "a")
    await pull(registry, "app", "b")
    # Over the bound: image a (least recently used) goes, with the layer only it used and its
    # config; the shared layer stays because image b still references it.
    await wait_for(lambda: not blob_data_path(root, only_a.digest).exists())
    assert not blob_data_path(root, image_a.config or "").exists()
    assert blob_data_path(root, shared.digest).exists()
    assert blob_data_path(root, only_b.digest).exists()
    response, body = await fetch(f"{registry.url}/metrics")
    text = body.decode()
    # The manifest of a, its config and its own layer.
    assert metric(text, "txregistry_proxy_evictions_total") == 3
    assert metric(text, "txregistry_proxy_cache_bytes") <= 350_000
    await fake.go_down()
    manifest = await pull(registry, "app", "b")  # everything of b is still here
    assert manifest["digest"] == image_b.digest
    response, _ = await fetch(f"{registry.url}/v2/app/manifests/a")
    assert response.code == 503
    assert await error_codes(response) == ["UNAVAILABLE"]
    response, body = await fetch(f"{registry.url}/v2/app/tags/list")
    assert json.loads(body)["tags"] == ["b"]


@pytest_twisted.ensureDeferred
async def test_ttl_evicts_unused_content(proxied: Proxied, fake: FakeUpstream) -> None:
    fake.content.add_image("library/alpine", "latest", [1000, 2000])
    registry = await proxied(ttl="1s", evict_interval="0.3s")
    root = storage_root(registry)
    manifest = await pull(registry, "alpine", "latest")
    layer = manifest["layers"][0]["digest"]
    assert blob_data_path(root, layer).exists()
    await wait_for(lambda: not blob_data_path(root, layer).exists(), within=10)


async def wait_for_check(url: str, name: str, within: float = 30.0) -> None:
    """Until ``/health/ready`` reports the check ``name`` ok (the others may fail: the
    upstream is down here)."""
    answers: list[dict[str, Any]] = []

    async def ok() -> bool:
        _response, body = await fetch(f"{url}/health/ready")
        answers.append(json.loads(body))
        return bool(answers[-1]["checks"][name]["status"] == "ok")

    deadline = reactor.seconds() + within
    while not await ok():
        assert reactor.seconds() < deadline, answers[-1]
        await deferLater(reactor, 0.1, lambda: None)


def _metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return str(response.read().decode())


@pytest_twisted.ensureDeferred
async def test_cache_and_eviction_state_survive_a_restart(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    image = fake.content.add_image("library/alpine", "latest", [4096, 300_000])
    sections: dict[str, Any] = {"proxy:hub": proxy_section(fake.url, flush_interval="1s")}
    process = RegistryProcess(tmp_path, sections)
    process.start()
    try:
        manifest = await pull(process.url, "alpine", "latest")
        assert manifest["digest"] == image.digest
        before = metric(_metrics(process.url), "txregistry_proxy_cache_bytes")
        assert before > 300_000
        process.stop()
        state = tmp_path / "data/docker/registry/v2/txregistry/proxy/hub/index.sqlite3"
        assert state.exists()
        await fake.go_down()
        offset = len(process.log_text())
        process.start()
        # Ready (for this cache's part) once its index is read back from storage.
        await wait_for_check(process.url, "cache:hub")
        assert metric(_metrics(process.url), "txregistry_proxy_cache_bytes") == before
        # The summary logged at start counts what was read back.
        summary = re.search(r"proxy hub: hits=.*", process.log_text()[offset:])
        assert summary is not None and f" cache_bytes={int(before)} " in summary[0], summary
        manifest = await pull(process.url, "alpine", "latest")  # stale tag, cached blobs
        assert manifest["digest"] == image.digest
        manifest = await pull(process.url, "docker.io/library/alpine", image.digest)
    finally:
        process.stop()
    log = process.log_text()
    assert "serving cached docker.io/library/alpine:latest" in log
    assert "proxy hub: hits=" in log  # the periodic summary line (also logged at start)


@pytest_twisted.ensureDeferred
async def test_a_restart_recovers_the_index_and_evicts_in_lru_order(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Images a then b cached, the process restarted: the index comes back from its snapshot
    in storage (``index.sqlite3``), so the pull of c that goes over ``max_size`` evicts a (the
    least recently used, known only from before the restart) and keeps the layer a shares
    with b, which b still references."""
    shared, only_a, only_b, only_c = (GeneratedBlob(s, SIZE) for s in ("sh", "oa", "ob", "oc"))
    image_a = build_image(fake.content, "library/app", "a", [shared, only_a])
    build_image(fake.content, "library/app", "b", [shared, only_b])
    build_image(fake.content, "library/app", "c", [only_c])
    sections: dict[str, Any] = {"proxy:hub": proxy_section(fake.url, max_size="550KB")}
    process = RegistryProcess(tmp_path, sections)
    process.start()
    try:
        await pull(process.url, "app", "a")
        await pull(process.url, "app", "b")
        process.stop()
        v2 = tmp_path / "data/docker/registry/v2"
        assert (v2 / "txregistry/proxy/hub/index.sqlite3").stat().st_size > 0
        assert not (v2 / "txregistry/proxy/hub/state.json").exists()
        root = tmp_path / "data"
        process.start()
        await pull(process.url, "app", "c")
        await wait_for(lambda: not blob_data_path(root, only_a.digest).exists())
        assert not blob_data_path(root, image_a.config or "").exists()
        for kept in (shared, only_b, only_c):
            assert blob_data_path(root, kept.digest).exists()
        text = _metrics(process.url)
        assert metric(text, "txregistry_proxy_evictions_total") == 3
        assert metric(text, "txregistry_proxy_cache_bytes") <= 550_000
    finally:
        process.stop()


@pytest_twisted.ensureDeferred
async def test_a_cached_blob_found_without_data_leaves_the_cache_size(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """A cached layer's data removed behind the cache's back: the read that finds it missing
    drops its entry, and ``txregistry_proxy_cache_bytes`` no longer counts its bytes."""
    image = fake.content.add_image("library/alpine", "latest", [4096, 200_000])
    registry = await proxied()
    root = storage_root(registry)
    await pull(registry, "alpine", "latest")
    _, body = await fetch(f"{registry.url}/metrics")
    before = metric(body.decode(), "txregistry_proxy_cache_bytes")
    layer = image.layers[1]
    shutil.rmtree(blob_data_path(root, layer.digest).parent)
    await fake.go_down()
    response, _ = await fetch(f"{registry.url}/v2/alpine/blobs/{layer.digest}")
    assert response.code == 503
    _, body = await fetch(f"{registry.url}/metrics")
    assert metric(body.decode(), "txregistry_proxy_cache_bytes") == before - layer.size


@pytest_twisted.ensureDeferred
async def test_a_restart_without_a_saved_index_counts_the_cache_again(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """The index's snapshot was never written (a full disk at the last stop, a crash before
    the first flush): at the next start what the storage holds is counted again, so that
    ``max_size`` and eviction see it, instead of a cache of 0 bytes that holds its space."""
    image = fake.content.add_image("library/alpine", "latest", [4096, 300_000])
    sections: dict[str, Any] = {"proxy:hub": proxy_section(fake.url)}
    process = RegistryProcess(tmp_path, sections)
    process.start()
    try:
        manifest = await pull(process.url, "alpine", "latest")
        assert manifest["digest"] == image.digest
        before = metric(_metrics(process.url), "txregistry_proxy_cache_bytes")
        assert before > 300_000
        process.stop()
        state = tmp_path / "data/docker/registry/v2/txregistry/proxy/hub/index.sqlite3"
        state.unlink()
        offset = len(process.log_text())
        process.start()
        await wait_for_check(process.url, "cache:hub")
        await wait_for(
            lambda: metric(_metrics(process.url), "txregistry_proxy_cache_bytes") == before
        )
        said = re.findall(r"\[registry\.proxy\.cache#warn\] (.*)", process.log_text()[offset:])
        assert said == [
            "proxy hub: the saved index was missing or empty: counted 3 blobs and 1"
            f" manifests found in storage again ({int(before)} bytes cached)"
        ], said
    finally:
        process.stop()


@pytest_twisted.ensureDeferred
async def test_a_restart_after_kill_9_counts_what_the_saved_index_lacked(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Image a cached and saved at a clean stop; image b cached after the last save, then
    ``kill -9``: the next start finds the ``index.open`` marker the killed process left, and
    counts b into the index it read back.  Without that, b held its space for good: pulling
    c stayed under ``max_size`` on paper while the storage held a, b and c.  The count keeps
    the saved order, so c's pull evicts a (used before b), not b."""
    only_a, only_b, only_c = (GeneratedBlob(s, SIZE) for s in ("ka", "kb", "kc"))
    image_a = build_image(fake.content, "library/app", "a", [only_a])
    image_b = build_image(fake.content, "library/app", "b", [only_b])
    build_image(fake.content, "library/app", "c", [only_c])
    section = proxy_section(fake.url, max_size="400KB", flush_interval="1h")
    process = RegistryProcess(tmp_path, {"proxy:hub": section})
    hub = tmp_path / "data/docker/registry/v2/txregistry/proxy/hub"
    root = tmp_path / "data"
    process.start()
    try:
        await pull(process.url, "app", "a")
        with_a = metric(_metrics(process.url), "txregistry_proxy_cache_bytes")
        assert (hub / "index.open").exists()
        process.stop()  # a clean stop saves the index whole, and says so
        assert not (hub / "index.open").exists()
        offset = len(process.log_text())
        process.start()
        await pull(process.url, "app", "b")
        with_b = metric(_metrics(process.url), "txregistry_proxy_cache_bytes")
        assert with_b > with_a
        assert "counting what the storage holds" not in process.log_text()[offset:]
        process.kill()  # b is not in the saved index (flush_interval 1h)
        offset = len(process.log_text())
        process.start()
        await wait_for_check(process.url, "cache:hub")
        await wait_for(lambda: "found in storage again" in process.log_text()[offset:])
        said = re.findall(r"\[registry\.proxy\.cache#warn\] (.*)", process.log_text()[offset:])
        # b's layer and config; its manifest too, unless the save that follows the start's
        # loading ran after the manifest of b was fetched (and before its blobs were).
        assert len(said) == 1 and re.fullmatch(
            r"proxy hub: the saved index lacked what was cached after it was saved: counted 2"
            rf" blobs and [01] manifests found in storage again \({int(with_b)} bytes cached\)",
            said[0],
        ), said
        assert metric(_metrics(process.url), "txregistry_proxy_cache_bytes") == with_b
        await pull(process.url, "app", "c")
        await wait_for(lambda: not blob_data_path(root, only_a.digest).exists())
        assert not blob_data_path(root, image_a.config or "").exists()
        assert blob_data_path(root, only_b.digest).exists()
        assert blob_data_path(root, image_b.config or "").exists()
        assert blob_data_path(root, only_c.digest).exists()
        assert metric(_metrics(process.url), "txregistry_proxy_cache_bytes") <= 400_000
        process.stop()
        assert not (hub / "index.open").exists()  # counted whole, then saved at the stop
    finally:
        process.stop()


async def _cached_without_index(proxied: Proxied, fake: FakeUpstream) -> tuple[Path, Path, float]:
    """An image pulled through a cache that then stopped, its saved index removed: the
    storage root, where the index is saved, and the bytes the cache held."""
    fake.content.add_image("library/alpine", "latest", [4096, 300_000])
    first = await proxied()
    root = storage_root(first)
    await pull(first, "alpine", "latest")
    _, body = await fetch(f"{first.url}/metrics")
    before = metric(body.decode(), "txregistry_proxy_cache_bytes")
    await first.stop()
    snapshot = root / "docker/registry/v2/txregistry/proxy/hub/index.sqlite3"
    snapshot.unlink()
    return root, snapshot, before


def _solo_cache(fake: FakeUpstream, driver: Any) -> tuple[ProxyCache, UpstreamClient]:
    """The cache those tests pulled through, built in this process on ``driver`` with its
    index saved in storage, as a single instance keeps it."""
    client = UpstreamClient(reactor, fake.url)
    cache = ProxyCache(
        config=parse_proxy("hub", proxy_section(fake.url)),
        client=client,
        driver=driver,
        blobs=BlobStore(driver),
        tags=TagStore(driver),
        reactor=reactor,
        index=StoredIndex(reactor, "hub"),
    )
    return cache, client


class _HeldWalk:
    """A storage driver whose listings of ``_layers`` folders wait until `release`: a
    count of the cache interrupted half way, on demand."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self.released: Deferred[None] = Deferred()
        self.held = 0

    async def list(self, path: str) -> Any:
        if path.endswith("/_layers"):
            self.held += 1
            if not self.released.called:
                await self.released
        return await self._driver.list(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


@pytest_twisted.ensureDeferred
async def test_an_unfinished_count_is_never_saved_as_the_index(
    proxied: Proxied, fake: FakeUpstream, thread_pool: Any
) -> None:
    """A stop (or a flush) while the cache is being counted again must not save the half
    counted index: the next start would take it as whole and never count the rest.  And
    the cache is not loaded (readiness) until the count is done."""
    root, snapshot, before = await _cached_without_index(proxied, fake)
    driver = _HeldWalk(FilesystemDriver(str(root), reactor, thread_pool))
    cache, client = _solo_cache(fake, driver)
    try:
        loading = Deferred.fromCoroutine(cache.load_state())
        await wait_for(lambda: driver.held > 0)
        assert not cache.state_loaded  # readiness says "loading" meanwhile
        await cache.flush_state()  # a periodic flush, or the one at a stop
        assert not snapshot.exists()
        driver.released.callback(None)
        await loading
        assert cache.state_loaded
        assert cache.index.size == before
        await cache.flush_state()
        assert snapshot.exists()
    finally:
        await cache.index.close()
        await client.close()


class _FailingWalk(_HeldWalk):
    """Listings of ``_layers`` folders fail while ``failing``: a storage failing under the
    count."""

    def __init__(self, driver: Any) -> None:
        super().__init__(driver)
        self.failing = True

    async def list(self, path: str) -> Any:
        if path.endswith("/_layers") and self.failing:
            raise StorageError(f"S3 gave no answer listing {path}")
        return await self._driver.list(path)


@pytest_twisted.ensureDeferred
async def test_a_count_that_failed_is_done_again_before_the_index_is_saved(
    proxied: Proxied, fake: FakeUpstream, thread_pool: Any
) -> None:
    root, snapshot, before = await _cached_without_index(proxied, fake)
    driver = _FailingWalk(FilesystemDriver(str(root), reactor, thread_pool))
    cache, client = _solo_cache(fake, driver)
    try:
        await cache.load_state()  # the count fails: serving goes on with what was counted
        assert cache.state_loaded
        with pytest.raises(StorageError):
            await cache.flush_state()  # counts again first, which fails again: nothing saved
        assert not snapshot.exists()
        driver.failing = False
        await cache.flush_state()
        assert cache.index.size == before
        assert snapshot.exists()
    finally:
        await cache.index.close()
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_stop_during_the_count_after_an_unclean_stop_leaves_the_marker(
    proxied: Proxied, fake: FakeUpstream, thread_pool: Any
) -> None:
    """The count after an unclean stop runs beside serving (readiness does not wait for it);
    a stop before it ends saves the index as it is and leaves ``index.open``, so the next
    start counts again; a count that ended lets the stop remove it."""
    fake.content.add_image("library/alpine", "latest", [4096, 300_000])
    first = await proxied()
    root = storage_root(first)
    await pull(first, "alpine", "latest")
    await first.stop()
    hub = root / "docker/registry/v2/txregistry/proxy/hub"
    marker = hub / "index.open"
    assert (hub / "index.sqlite3").exists() and not marker.exists()
    marker.write_text("{}")  # as a process killed after its last save leaves it
    driver = _HeldWalk(FilesystemDriver(str(root), reactor, thread_pool))
    cache, client = _solo_cache(fake, driver)
    try:
        await cache.load_state()
        assert cache.state_loaded  # serving, with the index read back
        await wait_for(lambda: driver.held > 0)
        stopping = Deferred.fromCoroutine(cache.stop_counting())
        driver.released.callback(None)
        await stopping
        await cache.flush_state(final=True)
        assert marker.exists()
    finally:
        await cache.index.close()
        await client.close()
    cache, client = _solo_cache(fake, FilesystemDriver(str(root), reactor, thread_pool))
    try:
        await cache.load_state()
        await wait_for(lambda: not cache.counting)
        await cache.flush_state(final=True)
        assert not marker.exists()
    finally:
        await cache.index.close()
        await client.close()


class _CountedStats:
    """A storage driver that counts the stats of blob data (what `BlobStore.exists` asks:
    on S3, a HEAD each)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self.blob_stats = 0

    async def stat(self, path: str) -> Any:
        if path.endswith("/data") and "/blobs/" in path:
            self.blob_stats += 1
        return await self._driver.stat(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


@pytest_twisted.ensureDeferred
async def test_the_count_after_an_unclean_stop_asks_the_storage_only_what_the_index_lacks(
    proxied: Proxied, fake: FakeUpstream, thread_pool: Any
) -> None:
    """Every unclean restart counts the cache again: blobs the saved index has are not looked
    up in the storage (on S3 a HEAD each, for the whole cache)."""
    fake.content.add_image("library/alpine", "latest", [4096, 300_000])
    first = await proxied()
    root = storage_root(first)
    await pull(first, "alpine", "latest")
    await first.stop()
    hub = root / "docker/registry/v2/txregistry/proxy/hub"
    (hub / "index.open").write_text("{}")  # as a process killed after its last save leaves it
    driver = _CountedStats(FilesystemDriver(str(root), reactor, thread_pool))
    cache, client = _solo_cache(fake, driver)
    try:
        await cache.load_state()
        await wait_for(lambda: not cache.counting)
        assert driver.blob_stats == 0
        assert cache.index.size > 300_000
    finally:
        await cache.index.close()
        await client.close()
