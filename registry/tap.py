"""
``twistd registry``: command-line options and the service tree.

`Options` only parses (the config file is read and validated here so that a bad value stops
start-up with one line naming the key); `makeService` builds everything from the resulting
`Config`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from registry.app import make_site
from registry.auth.interfaces import IAccessController
from registry.auth.wiring import AuthSettings, make_access_controller
from registry.config import Config, ConfigError, load
from registry.handlers.context import RegistryContext
from registry.handlers.monitoring import make_debug_site
from registry.http.tls import TLSSettings, server_endpoint, warn_if_plain_public
from registry.memory import HeapTrimmer, limit_malloc_arenas
from registry.ops.health import HealthCheck, upstream_probe
from registry.ops.purge import purge_uploads
from registry.proxy.config import parse_proxies
from registry.proxy.routing import ProxyRouter
from registry.proxy.service import install_proxies
from registry.storage.factory import build_driver
from registry.storage.hash_offload import HashThreads

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run txregistry, an OCI Distribution registry. Listening addresses are Twisted endpoint "
        "strings (tcp:5000, ssl:5443:privateKey=key.pem:certKey=cert.pem); see tap.cfg for "
        "every configuration key."
    )
    optParameters = [
        ["config", "c", None, "Configuration file in the tap.cfg format."],
        ["storage", "s", None, "Filesystem storage root (sets [storage] rootdirectory)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["port"] = []
        self.config: Config | None = None

    def opt_port(self, description: str) -> None:
        """Listen on this endpoint string (repeatable). Default: tcp:5000 or [http] port."""
        self["port"].append(description)

    opt_p = opt_port

    def postOptions(self) -> None:
        overrides: dict[tuple[str, str], str] = {}
        if self["storage"]:
            overrides[("storage", "driver")] = "filesystem"
            overrides[("storage", "rootdirectory")] = self["storage"]
        if self["port"]:
            overrides[("http", "port")] = " ".join(self["port"])
        try:
            self.config = load(self["config"], os.environ, overrides)
            parse_proxies(self.config)  # [proxy:NAME] sections are validated here too
        except ConfigError as exc:
            raise usage.UsageError(f"configuration error: {exc}") from None


class ThreadPoolService(Service):
    """Owns the thread pool for blocking work (directory walks, fsync, file reads)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.pool.stop()
        return None


def auth_settings(config: Config) -> AuthSettings:
    def optional(value: str) -> str | None:
        return value or None

    return AuthSettings(
        policy=optional(config.auth.policy),
        anonymous_pull=config.auth.anonymous_pull,
        client_certificate_users=config.auth.client_certificate_users,
        max_failures=config.auth.max_failures,
        failure_window=config.auth.failure_window,
        cooldown=config.auth.cooldown,
        htpasswd_path=optional(config.auth_htpasswd.path),
        htpasswd_realm=config.auth_htpasswd.realm,
        htpasswd_cache_seconds=config.auth_htpasswd.cache_seconds,
        token_realm=optional(config.auth_token.realm),
        token_service=optional(config.auth_token.service),
        token_issuer=optional(config.auth_token.issuer),
        token_rootcertbundle=optional(config.auth_token.rootcertbundle),
        token_jwks=optional(config.auth_token.jwks),
    )


def _listeners(
    config: Config, reactor: Any, auth_enabled: bool
) -> list[StreamServerEndpointService]:
    """One endpoint service per ``--port``; the site is attached by the caller."""
    tls = TLSSettings(
        clientcas=config.http.clientcas or None,
        clientauth=config.http.clientauth,
        http2=config.http.http2,
    )
    services = []
    for description in config.http.port:
        warning = warn_if_plain_public(description, auth_enabled)
        if warning:
            log.warn("{warning}", warning=warning)
        endpoint = server_endpoint(reactor, description, tls)
        services.append(StreamServerEndpointService(endpoint, None))
    return services


def add_monitoring(
    config: Config, ctx: RegistryContext, router: ProxyRouter | None, reactor: Any, root: Any
) -> None:
    """
    Health checks of the upstreams (``[health] upstreams``), and the ``[debug] addr`` listener
    that serves metrics and health apart from the registry's port.
    """
    if router is not None and config.health.upstreams:
        for cache in router.caches:
            ctx.health.add(HealthCheck(f"upstream:{cache.name}", upstream_probe(cache.client.ping)))
    if config.debug.addr:
        try:
            endpoint = serverFromString(reactor, config.debug.addr)
        except (ValueError, KeyError) as exc:
            raise SystemExit(f"configuration error: [debug] addr: {exc}") from None
        service = StreamServerEndpointService(endpoint, make_debug_site(ctx))
        service.setServiceParent(root)
        log.info("metrics and health on {addr}", addr=config.debug.addr)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config = options.config
    assert config is not None
    limit_malloc_arenas()  # before any worker thread exists: see registry/memory.py
    root = MultiService()
    pool = ThreadPool(minthreads=2, maxthreads=16, name="registry-io")
    ThreadPoolService(pool).setServiceParent(root)  # type: ignore[no-untyped-call]
    settings = auth_settings(config)
    try:
        access: IAccessController = make_access_controller(
            settings,
            reactor,  # type: ignore[arg-type]
            reactor,
            pool,
        )
        listeners = _listeners(config, reactor, settings.enabled)
        driver = build_driver(config, reactor, pool)
    except (ValueError, OSError, ConfigError) as exc:
        # One line naming the problem, not a traceback: these are configuration mistakes.
        raise SystemExit(f"configuration error: {exc}") from None
    # Upload hashing gets threads of its own, one per core: it is CPU work, and long hashing
    # slices must not delay the storage pool's file reads.
    hash_pool = ThreadPool(minthreads=1, maxthreads=os.cpu_count() or 2, name="registry-hash")
    ThreadPoolService(hash_pool).setServiceParent(root)  # type: ignore[no-untyped-call]
    ctx = RegistryContext.build(
        config, driver, reactor, access, hash_threads=HashThreads(reactor, hash_pool)
    )
    # Pull-through caches ([proxy:NAME]): swaps in routing stores, adds their service.
    router = install_proxies(ctx, config, reactor, root)
    add_monitoring(config, ctx, router, reactor, root)
    site = make_site(ctx, after_request=HeapTrimmer(reactor, pool).transferred)

    def index_catalog() -> None:
        # A registry:2 data directory served for the first time has no catalog index yet:
        # build it now rather than inside the first catalog request.
        d = Deferred.fromCoroutine(ctx.catalog.ensure_index())
        d.addErrback(lambda f: log.failure("building the catalog index failed", f))

    reactor.callWhenRunning(index_catalog)
    for listener in listeners:
        listener.factory = site
        listener.setServiceParent(root)
    if config.uploads.purge_enabled:

        def purge() -> Deferred[Any]:
            d = Deferred.fromCoroutine(
                purge_uploads(ctx.driver, config.uploads.purge_age, time.time())
            )
            d.addCallback(ctx.metrics.uploads_purged.inc)
            d.addErrback(lambda f: log.failure("upload purge failed", f))
            return d

        TimerService(config.uploads.purge_interval, purge).setServiceParent(root)
    log.info(
        "txregistry listening on {ports}, {driver} storage",
        ports=", ".join(config.http.port),
        driver=config.storage.driver,
    )
    return root
