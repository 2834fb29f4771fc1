"""
Wiring the pull-through caches into a running registry: `install_proxies` is what
``makeService`` calls when ``[proxy:NAME]`` sections exist.

It builds one `UpstreamClient` and one `ProxyCache` per upstream, wraps the local stores in the
routing ones the context is then built with (handlers do not change), registers the metrics,
and adds a `ProxyService`
that loads each cache's eviction state (and its counters' totals, `registry.proxy.totals`) at
start, writes them back periodically and at stop, runs eviction, and logs a one-line summary
per upstream.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.api.digests import Digest
from registry.config import Config
from registry.failures import log_failure
from registry.handlers.context import LocalStores, Stores
from registry.ops.metrics import Metrics, Sample
from registry.proxy import spool as spool_files
from registry.proxy.cache import Limits, ProxyCache
from registry.proxy.config import ProxyConfig, parse_proxies
from registry.proxy.fleet._redis import RedisUnavailable, log_redis
from registry.proxy.fleet.wiring import FleetSetup
from registry.proxy.index import ICacheIndex, MemoryIndex
from registry.proxy.routing import (
    ProxyRouter,
    RoutingBlobStore,
    RoutingManifestStore,
    RoutingReferrers,
    RoutingTagStore,
    RoutingUploadStore,
)
from registry.proxy.stored import StoredIndex
from registry.proxy.upstream import UpstreamClient
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageError

log = Logger()


class ProxyService(MultiService):
    """Start-up and periodic work of the caches; see the module docstring."""

    def __init__(
        self,
        caches: list[ProxyCache],
        ready: Deferred[None] | None = None,
        swept: Deferred[Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.caches = caches
        # Fired by the start-up check of the fleet (registry.proxy.fleet.wiring): nothing is
        # cleared or loaded before this instance may serve the storage.
        self._ready = ready
        # Fires once the fill spool's leftovers were tidied (`fill_spool`).
        self._swept = swept
        self._started: Deferred[Any] | None = None
        self._stopped = False  # stopService ran: the caches' indexes are closed or closing
        # The periodic writes (upstream, what) that last failed on a full disk: said once, not
        # at every interval while the disk stays full, and said again when one works.
        self._full: set[tuple[str, str]] = set()
        # Periodic writes under way (each fires when its write ends): the stop waits for
        # them before its own flush and the close (a flush still copying the index when it
        # closed had its thread pool stopped under it, and was left suspended for good).
        # Not the writes still waiting for the caches to load: a start that fails never
        # loads them, and its stop must not wait.
        self._writing: set[Deferred[None]] = set()
        for cache in caches:
            config = cache.config
            TimerService(
                config.flush_interval, self._guard, cache.flush_state, "flush", cache.name
            ).setServiceParent(self)
            TimerService(
                config.evict_interval, self._guard, cache.evict, "eviction", cache.name
            ).setServiceParent(self)
            TimerService(config.log_interval, self._log_summary, cache).setServiceParent(self)
            TimerService(
                config.flush_interval,
                self._guard,
                self._flush_totals(cache),
                "counters flush",
                cache.name,
            ).setServiceParent(self)

    def startService(self) -> None:
        # Load the eviction state before the timers first fire (TimerService runs at once).
        for cache in self.caches:
            cache.tidying_starts()
        self._started = DeferredList(
            [Deferred.fromCoroutine(self._prepare(cache)) for cache in self.caches]
        )
        super().startService()  # type: ignore[no-untyped-call]

    async def _prepare(self, cache: ProxyCache) -> None:
        try:
            if self._ready is not None:
                await self._ready
            await cache.clean_fills()
            if self._swept is not None:
                waiter: Deferred[None] = Deferred()

                def passed(result: object) -> object:
                    waiter.callback(None)
                    return result

                self._swept.addBoth(passed)
                await waiter
        finally:
            cache.tidying_done()
        # The counters first: one small file, read before the index (streamed from storage
        # into its database), so the UI's figures are there as soon as the instance serves.
        try:
            await cache.totals.load(cache, time.time())
        except Exception:  # the figures then count from this start; serving goes on
            log_failure(
                log,
                Failure(),
                "proxy {upstream}: reading the saved counters failed",
                upstream=cache.name,
            )
        await cache.load_state()
        # What is cached is known now: the kept bytes of interrupted fills beyond the room
        # max_size leaves (or too old) go.
        await cache.prune_partials_logged()

    @staticmethod
    def _flush_totals(cache: ProxyCache) -> Callable[[], Awaitable[None]]:
        async def flush() -> None:
            await cache.totals.flush(cache)

        return flush

    def _guard(self, call: Any, what: str, upstream: str) -> Deferred[Any]:
        async def run() -> None:
            if self._started is not None:
                await self._started
            if self._stopped:
                return  # stopped while the caches loaded: the stop flushes, then closes
            writing: Deferred[None] = Deferred()
            self._writing.add(writing)
            try:
                await call()
            finally:
                self._writing.discard(writing)
                writing.callback(None)
            if (upstream, what) in self._full:
                self._full.discard((upstream, what))
                log.info("proxy {upstream}: {what} works again", upstream=upstream, what=what)

        def failed(f: Failure) -> None:
            if f.check(RedisUnavailable):  # one line: Redis away is no defect
                log_redis(log, f.value, "proxy {what} failed: {e}", what=what, e=str(f.value))
            elif f.check(StorageError):  # a full disk, S3 down: one line, not one per interval
                if (upstream, what) not in self._full:
                    self._full.add((upstream, what))
                    log.warn(
                        "proxy {upstream}: {what} failed: {e} (tried again every interval;"
                        " a line says when it works)",
                        upstream=upstream,
                        what=what,
                        e=str(f.value),
                    )
            else:
                log_failure(log, f, "proxy {what} failed", what=what)

        d = Deferred.fromCoroutine(run())
        d.addErrback(failed)
        return d

    def _log_summary(self, cache: ProxyCache) -> Deferred[None]:
        async def run() -> None:
            # The first line (at start) once the cache's size is known: read back from
            # storage, or the fleet's total from Redis.
            if self._started is not None:
                await self._started
            log.info("{summary}", summary=cache.summary())

        return Deferred.fromCoroutine(run())

    def stopService(self) -> Deferred[Any]:
        self._stopped = True
        super().stopService()  # type: ignore[no-untyped-call]

        async def stop() -> None:
            if self._writing:
                await DeferredList(list(self._writing))
            for cache in self.caches:
                cache.reads.stop()
                try:
                    await cache.stop_counting()
                    await cache.flush_state(final=True)
                except RedisUnavailable as exc:
                    log_redis(
                        log,
                        exc,
                        "proxy {upstream}: sending the cache index to Redis failed: {e}",
                        upstream=cache.name,
                        e=str(exc),
                    )
                except Exception:
                    log_failure(
                        log,
                        Failure(),
                        "proxy {upstream}: writing the cache state failed",
                        upstream=cache.name,
                    )
                try:
                    await cache.totals.flush(cache)
                except Exception:
                    log_failure(
                        log,
                        Failure(),
                        "proxy {upstream}: writing the counters failed",
                        upstream=cache.name,
                    )
                await cache.client.close()
                try:
                    await cache.index.close()
                except Exception:
                    log.failure("proxy {upstream}: closing the index failed", upstream=cache.name)

        return Deferred.fromCoroutine(stop())


def _samples(caches: list[ProxyCache], name: str, value: Any) -> Iterator[Sample]:
    for cache in caches:
        result = value(cache)
        if result is not None:
            yield (name, {"upstream": cache.name}, float(result))


def _collector(caches: list[ProxyCache], name: str, value: Any) -> Any:
    def collect() -> Iterator[Sample]:
        return _samples(caches, name, value)

    return collect


def register_metrics(metrics: Metrics, caches: list[ProxyCache]) -> None:
    families: list[tuple[str, str, str, Any]] = [
        (
            "txregistry_proxy_hits_total",
            "Requests served from the cache.",
            "counter",
            lambda c: c.stats.hits,
        ),
        (
            "txregistry_proxy_misses_total",
            "Requests that had to fetch from upstream.",
            "counter",
            lambda c: c.stats.misses,
        ),
        (
            "txregistry_proxy_upstream_bytes_total",
            "Bytes received from the upstream.",
            "counter",
            lambda c: c.client.bytes_received,
        ),
        (
            "txregistry_proxy_served_bytes_total",
            "Blob bytes served from the cache.",
            "counter",
            lambda c: c.stats.served_bytes,
        ),
        (
            "txregistry_proxy_upstream_errors_total",
            "Failed upstream exchanges.",
            "counter",
            lambda c: c.stats.upstream_errors,
        ),
        (
            "txregistry_proxy_stale_served_total",
            "Cached tags served because upstream failed.",
            "counter",
            lambda c: c.stats.stale_served,
        ),
        (
            "txregistry_proxy_evictions_total",
            "Cache entries evicted.",
            "counter",
            lambda c: c.stats.evictions,
        ),
        (
            "txregistry_proxy_evicted_bytes_total",
            "Bytes evicted.",
            "counter",
            lambda c: c.stats.evicted_bytes,
        ),
        (
            "txregistry_proxy_corrupt_blobs_total",
            "Cached blobs found corrupt and dropped.",
            "counter",
            lambda c: c.stats.corrupt_blobs,
        ),
        (
            "txregistry_proxy_unkept_fills_total",
            "Blobs served but not kept: larger than max_size, no room made in space_wait, or "
            "the storage failed.",
            "counter",
            lambda c: c.stats.unkept_fills,
        ),
        (
            "txregistry_proxy_fill_resumes_total",
            "Range GETs asking the upstream for the rest of a blob body cut mid-way.",
            "counter",
            lambda c: c.stats.fill_resumes,
        ),
        (
            "txregistry_proxy_fill_restart_resumes_total",
            "Fills that began from the bytes an interrupted fill (a restart, a crash) kept, "
            "asking the upstream only for the rest.",
            "counter",
            lambda c: c.stats.restart_resumes,
        ),
        (
            "txregistry_proxy_reserved_bytes",
            "Room reserved under max_size by this instance's fills in flight.",
            "gauge",
            lambda c: c.space.total,
        ),
        (
            "txregistry_proxy_upstream_requests_total",
            "Requests sent to the upstream.",
            "counter",
            lambda c: c.client.requests,
        ),
        (
            "txregistry_proxy_cache_bytes",
            "Bytes held by the cache.",
            "gauge",
            lambda c: c.index.size,
        ),
        (
            "txregistry_proxy_active_fills",
            "Blob fills in progress.",
            "gauge",
            lambda c: c.active_fills,
        ),
        (
            "txregistry_proxy_ratelimit_remaining",
            "Last ratelimit-remaining the upstream sent.",
            "gauge",
            lambda c: c.client.rate_limit.remaining if c.client.rate_limit else None,
        ),
        (
            "txregistry_proxy_upstream_out",
            "1 while the upstream is held off after failing (hold_off), else 0.",
            "gauge",
            lambda c: 0 if c.client.health.held_until is None else 1,
        ),
        (
            "txregistry_proxy_upstream_rate_limited",
            "1 while a 429 holds some kind of upstream call back, else 0.",
            "gauge",
            lambda c: 0 if c.client.health.rate_limits() is None else 1,
        ),
    ]
    for name, help, kind, value in families:
        metrics.collect(name, help, kind, _collector(caches, name, value))


def build_client(config: ProxyConfig, reactor: Any) -> UpstreamClient:
    return UpstreamClient(
        reactor,
        config.remoteurl,
        name=config.name,
        hold_off=config.hold_off,
        username=config.username,
        password=config.password,
        ca_bundle=config.cabundle,
        timeout=config.timeout,
        docker_hub_library=config.library,
    )


def fill_spool(
    config: Config, reactor: Any, swept: Deferred[Any] | None = None
) -> IStorageDriver | None:
    """A local folder for fills when the storage's partial files cannot be read while they
    are written (S3): ``[storage] spooldirectory``, or a temporary folder of this process.
    ``swept`` fires once what dead processes left there was tidied."""
    if config.storage.driver != "s3":
        if swept is not None:
            swept.callback(None)
        return None
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from registry.storage.filesystem import FilesystemDriver

    folder = spool_files.spool_folder(config.storage.spooldirectory)
    pool = ThreadPool(minthreads=1, maxthreads=4, name="registry-fill-spool")
    reactor.callWhenRunning(pool.start)
    # What processes killed mid-fill left behind (registry.proxy.spool); their fills' bytes
    # are kept here to resume from unless no cache keeps any (`partial_age = 0`).
    keep = any(proxy.partial_age > 0 for proxy in parse_proxies(config))

    def sweep() -> None:
        done = deferToThreadPool(
            reactor,
            pool,
            spool_files.sweep,
            config.storage.spooldirectory,
            folder if keep else None,
        )
        done.addErrback(lambda f: log_failure(log, f, "tidying the fill spool failed"))
        if swept is not None:
            done.chainDeferred(swept)

    reactor.callWhenRunning(sweep)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    return FilesystemDriver(folder, reactor, pool)


def install_proxies(
    local: LocalStores,
    driver: IStorageDriver,
    config: Config,
    reactor: Any,
    parent: MultiService,
    metrics: Metrics,
    checks: list[Callable[[], Awaitable[None]]] | None = None,
) -> Stores:
    """The stores handlers should use: wrappers around ``local`` that route proxied
    repositories to their upstreams, or ``local`` itself when no upstream is configured."""
    proxies = parse_proxies(config)
    if not proxies:
        return Stores.of(local)
    peers: list[ProxyCache] = []
    router = ProxyRouter(peers)
    setup = FleetSetup.for_config(config, reactor, driver)
    if checks is not None:
        checks.append(setup.check)
    else:  # embedded without start-up checks: nothing to wait for
        setup.ready.callback(None)
    # Fills wait for the spool's tidying as for the storage's (`ProxyCache.tidying_done`).
    swept: Deferred[Any] = Deferred()
    spool = fill_spool(config, reactor, swept)

    async def hosted_uses(digest: Digest) -> bool:
        names, _ = await local.catalog.list_repositories()
        for name in names:
            if router.route(name) is not None:
                continue
            for path in (layout.layer_link(name, digest), layout.revision_link(name, digest)):
                try:
                    await driver.stat(path)
                    return True
                except PathNotFoundError:
                    continue
        return False

    def index_for(proxy: ProxyConfig) -> ICacheIndex:
        # A fleet keeps its index in Redis (ProxyCache sets up its FleetIndex); one instance
        # on disk.
        if setup.fleet is not None:
            return MemoryIndex()
        return StoredIndex(reactor, proxy.name)

    for proxy in proxies:
        peers.append(
            ProxyCache(
                config=proxy,
                client=build_client(proxy, reactor),
                driver=driver,
                blobs=local.blobs,
                tags=local.tags,
                reactor=reactor,
                catalog=local.catalog,
                hosted_uses=hosted_uses,
                peers=peers,
                fleet=setup.fleet,
                spool=spool,
                # The pool uploads hash on: verified cache reads hash there too.
                hash_threads=local.uploads.hash_threads,
                limits=Limits(inflight=proxy.max_inflight),
                index=index_for(proxy),
            )
        )
    register_metrics(metrics, peers)
    setup.install(parent, peers)
    ProxyService(peers, setup.ready, swept).setServiceParent(parent)  # type: ignore[no-untyped-call]
    for cache in peers:
        log.info(
            "proxy {upstream}: {url} for {names}",
            upstream=cache.name,
            url=cache.config.remoteurl,
            names=" and ".join(
                ([f"{cache.config.prefix}/*"] if cache.config.prefix else [])
                + (["unprefixed names (default)"] if cache.config.default else [])
            ),
        )
    return Stores(
        blobs=RoutingBlobStore(local.blobs, router),
        uploads=RoutingUploadStore(local.uploads, router),
        manifests=RoutingManifestStore(local.manifests, router),
        tags=RoutingTagStore(local.tags, router),
        referrers=RoutingReferrers(local.referrers, router),
        catalog=local.catalog,
        rewriter=router,
    )
