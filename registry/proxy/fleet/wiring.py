"""
Putting the fleet (or the single-instance marker) into a running registry.

`FleetSetup.for_config` is called by `install_proxies` when ``[proxy:NAME]`` sections exist:

- with ``[redis] addr``: the Redis connection, the fill leases, the peer client and, with
  ``[fleet] listen``, the peer listener; the start-up check pings Redis (unreachable: exit 1
  with one line) and binds the listener;
- without: the instance marker; the start-up check refuses a second instance on the storage.

The caches' own start (clearing leftover fills, loading state) waits for that check
(``ready``), so a refused instance never touches the running one's files.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from registry.api.digests import Digest
from registry.config import Config, FleetConfig
from registry.http.tls import (
    TLSSettings,
    normalize_description,
    server_endpoint,
    split_description,
)
from registry.proxy.fill import Fill
from registry.proxy.fleet import Fleet, instance_name
from registry.proxy.fleet._redis import FleetRedis, RedisUnavailable, log_redis
from registry.proxy.fleet.lease import FillLeases
from registry.proxy.fleet.marker import STALE_AFTER, InstanceMarker
from registry.proxy.fleet.peer import PeerClient, PeerResource, PeerSite, PeerTLS
from registry.server.exit import StartupError
from registry.server.probe import storage_description
from registry.storage.driver import IStorageDriver

log = Logger()

# How often each instance sends its index changes and in-use marks to Redis.
PUSH_INTERVAL = 1.0
# Seconds a starting instance asks its Redis whether the fleet's live instances are in it
# (`FleetSetup._same_redis_as_the_fleet`): a few pushes of theirs, after a Redis restart.
SAME_REDIS_WAIT = 5


class _Stopper(Service):
    """Runs a cleanup at stop (the marker's release, the peer listener)."""

    def __init__(self, stop: Any) -> None:
        self._stop = stop

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())


def check_tls(fleet: FleetConfig) -> None:
    """Refuse a peer TLS set-up that cannot work, with one line."""
    if fleet.tls_keyfile and not fleet.tls_certfile:
        raise StartupError("configuration error: [fleet] tls_keyfile: needs tls_certfile")
    if fleet.tls_certfile and not fleet.tls_cafile:
        raise StartupError(
            "configuration error: [fleet] tls_certfile: needs tls_cafile (the CA that signs "
            "the instances' certificates, which also checks theirs)"
        )
    for key in ("tls_cafile", "tls_certfile", "tls_keyfile"):
        path = getattr(fleet, key)
        if path and not os.access(path, os.R_OK):
            raise StartupError(f"configuration error: [fleet] {key}: cannot read {path}")
    if fleet.tls_cafile or fleet.tls_certfile:
        try:
            peer_tls(fleet).policy()  # the files parse: a PEM CA bundle, a certificate
        except Exception as exc:  # cryptography's and pyOpenSSL's errors alike: one line
            raise StartupError(f"configuration error: [fleet] TLS files: {exc}") from None


def peer_tls(fleet: FleetConfig) -> PeerTLS:
    """How this instance talks to the others' peer listeners.  Deny by default: once this
    fleet uses TLS (an https advertise, or a CA or a certificate configured), a plain-http
    peer URL is refused rather than sent the secret in clear."""
    listens_tls = bool(fleet.listen) and (
        split_description(normalize_description(fleet.listen))[0] == "ssl"
    )
    required = (
        listens_tls
        or fleet.advertise.lower().startswith("https://")
        or bool(fleet.tls_cafile or fleet.tls_certfile)
    )
    return PeerTLS(fleet.tls_cafile, fleet.tls_certfile, fleet.tls_keyfile, required)


def listener_tls(fleet: FleetConfig) -> TLSSettings | None:
    """With a client certificate configured, the peer listener asks for the others' too
    (mutual TLS), signed by ``tls_cafile``."""
    if not fleet.tls_certfile:
        return None
    return TLSSettings(clientcas=fleet.tls_cafile, clientauth="required")


@attrs.define(eq=False)
class FleetSetup:
    config: Config
    reactor: Any
    driver: IStorageDriver
    fleet: Fleet | None = None
    marker: InstanceMarker | None = None
    ready: Deferred[None] = attrs.field(factory=Deferred)
    lookup: Any = None  # (cache name, digest) -> the Fill in flight here
    _port: Any = None
    _drivers: dict[str, Any] = attrs.field(factory=dict)
    _beating: Any = None
    _parent: Any = None

    @classmethod
    def for_config(cls, config: Config, reactor: Any, driver: IStorageDriver) -> FleetSetup:
        setup = cls(config, reactor, driver)
        if config.redis.addr:
            redis = FleetRedis(config.redis, reactor)
            name = instance_name(config.fleet.instance)
            leases = FillLeases(redis, reactor, name, config.fleet.advertise, config.fleet.lease)
            peers = PeerClient(
                reactor,
                config.fleet.secret,
                idle=max(config.fleet.lease, 5.0),
                tls=peer_tls(config.fleet),
            )
            setup.fleet = Fleet(redis, leases, peers, name, reactor)
            if driver.name != "inmemory":
                where = storage_description(config.storage)
                setup.marker = InstanceMarker(driver, where, fleet=name)
        elif driver.name != "inmemory":
            setup.marker = InstanceMarker(driver, storage_description(config.storage))
        return setup

    def install(self, parent: MultiService, caches: list[Any]) -> None:
        """Services (threads, timers, cleanup) under ``parent``."""
        if self.fleet is not None:
            self.fleet.redis.setServiceParent(parent)  # type: ignore[no-untyped-call]

            rebuilding: set[str] = set()

            def rebuild(cache: Any) -> None:
                """Re-register ``cache`` from storage in the background (the pushes go on)."""
                rebuilding.add(cache.name)

                def failed(f: Any) -> None:
                    # The epoch key lapses (rebuild_ttl): a later push, here or elsewhere,
                    # tries again.
                    cache.ledger.lost = False
                    log_redis(
                        log,
                        f.value,
                        "proxy {upstream}: registering the cache from storage in Redis failed: {e}",
                        upstream=cache.name,
                        e=f.getErrorMessage(),
                    )

                d = Deferred.fromCoroutine(cache.reregister())
                d.addErrback(failed)
                d.addBoth(lambda _: rebuilding.discard(cache.name))

            def push() -> Deferred[None]:
                async def run() -> None:
                    if not self.ready.called:
                        return
                    for cache in caches:
                        if cache.ledger is not None:
                            index = cache.fleet_index()
                            await cache.ledger.push(index, cache.now(), beat=True)
                            if cache.ledger.lost and cache.name not in rebuilding:
                                rebuild(cache)
                            # What /metrics and the UI report: the fleet's total, whichever
                            # instance stored it (at most a push interval old).
                            index.size = await cache.ledger.size()
                            if cache.counters is not None:
                                await cache.counters.report_fills(cache.active_fills, time.time())

                d = Deferred.fromCoroutine(run())
                d.addErrback(
                    lambda f: log_redis(
                        log,
                        f.value,
                        "sending the cache index to Redis failed: {e}",
                        e=f.getErrorMessage(),
                    )
                )
                return d

            TimerService(PUSH_INTERVAL, push).setServiceParent(parent)
            by_name = {cache.name: cache for cache in caches}

            def lookup(cache: str, digest: Digest) -> Fill | None:
                found = by_name.get(cache)
                return None if found is None else found.inflight_fill(digest)

            self.lookup = lookup
            self._drivers = by_name
        if self.marker is not None:
            marker = self.marker
            beating = marker.service()

            async def release() -> None:
                with contextlib.suppress(Exception):
                    await marker.release()

            _Stopper(release).setServiceParent(parent)  # type: ignore[no-untyped-call]
            self._beating = beating
        if self.fleet is not None:
            fleet = self.fleet

            async def close() -> None:
                fleet.leases.stop()
                await fleet.peers.close()
                if self._port is not None:
                    await self._port.stopListening()

            _Stopper(close).setServiceParent(parent)  # type: ignore[no-untyped-call]
        self._parent = parent

    async def check(self) -> None:
        """The start-up check; StartupError with one line when this instance may not serve."""
        if self.fleet is not None:
            check_tls(self.config.fleet)
            cafile = self.config.redis.tls_cafile
            if self.config.redis.tls and cafile and not os.access(cafile, os.R_OK):
                # (Else the connection's error names neither the key nor the file.)
                raise StartupError(f"configuration error: [redis] tls_cafile: cannot read {cafile}")
            addr = self.config.redis.addr
            try:
                await self.fleet.redis.ping()
            except RedisUnavailable as exc:
                raise StartupError(f"cannot reach Redis at {addr}: {exc}") from None
            await self._listen()
            log.info(
                "proxy fleet: instance {instance}, Redis at {addr}, fills served at {url}",
                instance=self.fleet.instance,
                addr=addr,
                url=self.fleet.leases.url or "(none: [fleet] listen is empty)",
            )
        if self.marker is not None:
            if self.fleet is not None:
                await self._same_redis_as_the_fleet(self.marker)
            await self.marker.claim()
            self._beating.setServiceParent(self._parent)
        self.ready.callback(None)

    async def _same_redis_as_the_fleet(self, marker: InstanceMarker) -> None:
        """
        StartupError unless the live instances the storage lists (the fleet marker) are alive
        in this instance's Redis too.  An instance given another Redis, or another ``db`` of
        the same one, would be a second fleet on one cache: its own size total under
        ``max_size``, and at start it would take the others, unknown to its Redis, for dead and
        remove their fills in flight.  A Redis restarted empty knows the live instances again
        within a push (every second), so it is asked for a few seconds before refusing.
        """
        assert self.fleet is not None
        others = sorted(
            {str(e["instance"]) for e in await marker.live_fleet() if e.get("instance")}
        )
        ledgers = [c.ledger for c in self._drivers.values() if c.ledger is not None]
        if not others or not ledgers:
            return
        for attempt in range(SAME_REDIS_WAIT):
            try:
                for ledger in ledgers:
                    if await ledger.alive(others):
                        return
            except RedisUnavailable as exc:
                raise StartupError(
                    f"cannot reach Redis at {self.config.redis.addr}: {exc}"
                ) from None
            if attempt + 1 < SAME_REDIS_WAIT:
                await deferLater(self.reactor, 1.0, lambda: None)
        redis = self.config.redis
        raise StartupError(
            f"fleet instance{'s' if len(others) > 1 else ''} {', '.join(others[:5])} "
            f"serve{'' if len(others) > 1 else 's'} the pull-through cache in "
            f"{marker.where} but {'are' if len(others) > 1 else 'is'} not in Redis at "
            f"{redis.addr} db {redis.db}: every instance of a fleet needs the same [redis] "
            f"addr and db (an instance that died counts as live for {STALE_AFTER:.0f}s after "
            "its last heartbeat: if it is gone, start again then); docs/proxy.md"
        )

    async def _listen(self) -> None:
        fleet = self.fleet
        assert fleet is not None
        description = self.config.fleet.listen
        if not description:
            return
        if not self.config.fleet.secret:
            raise StartupError("configuration error: [fleet] secret: required with listen")
        normalized = normalize_description(description)
        secure = split_description(normalized)[0] == "ssl"
        if secure and fleet.leases.url and not fleet.leases.url.lower().startswith("https://"):
            raise StartupError(
                "configuration error: [fleet] advertise: listen is an ssl: endpoint, so the "
                "other instances must reach it at an https:// URL"
            )
        try:
            endpoint = server_endpoint(self.reactor, normalized, listener_tls(self.config.fleet))
        except (ValueError, OSError) as exc:
            raise StartupError(f"configuration error: [fleet] listen: {exc}") from None
        caches = self._drivers

        def driver_for(cache: str) -> IStorageDriver:
            return caches[cache].driver if cache in caches else self.driver

        resource = PeerResource(self.config.fleet.secret, self.lookup, driver_for)
        site = PeerSite(resource)  # type: ignore[no-untyped-call]
        try:
            self._port = await endpoint.listen(site)
        except Exception as exc:
            raise StartupError(f"cannot listen on {description} ([fleet] listen): {exc}") from None
        if not fleet.leases.url:
            host = self._port.getHost()
            if host.host in ("0.0.0.0", "::", ""):
                raise StartupError(
                    "configuration error: [fleet] advertise: required when listen has no "
                    "interface (the other instances need an address to reach this one)"
                )
            shown = f"[{host.host}]" if ":" in host.host else host.host
            fleet.leases.url = f"{'https' if secure else 'http'}://{shown}:{host.port}"
