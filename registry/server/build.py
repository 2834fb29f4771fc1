"""
The service tree of a serving process (a single-process registry, or one worker): storage,
auth, the site, monitoring, the listeners.

Imported by `registry.tap.makeService` only once it has decided that this process serves (a
supervisor of workers never imports it) and which libraries it keeps out
(`registry.lean_imports`): the imports below bring in the reactor and the whole web stack.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

import twisted
from registry.app import make_site
from registry.auth.interfaces import IAccessController
from registry.auth.wiring import AuthSettings, make_access_controller
from registry.config import Config, ConfigError
from registry.failures import log_failure
from registry.handlers.context import LocalStores, RegistryContext, Stores
from registry.handlers.monitoring import local_metrics
from registry.http import sendfile, twisted_internals
from registry.http.tls import (
    is_tls_description,
    normalize_description,
    server_endpoint,
)
from registry.lean_imports import uses_http_client
from registry.malloc_tuning import HeapTrimmer, limit_malloc_arenas, release_startup_memory
from registry.ops.health import (
    HealthCheck,
    HealthChecker,
    ProbeFileCleanup,
    loaded_probe,
    sweep_probe_files_logged,
    upstream_probe,
)
from registry.ops.metrics import Metrics
from registry.ops.notifications import Notifier, add_notifications
from registry.ops.notifications.metrics import register_notification_metrics
from registry.ops.purge import purge_uploads
from registry.proxy.config import parse_proxies
from registry.server import daemon_status
from registry.server.balance import AcceptBoard, balanced_port_factory
from registry.server.clock_guard import guard_clock
from registry.server.drain import ConnectionTracker
from registry.server.exit import StartupError, exit_now
from registry.server.listeners import Listeners, ListeningService
from registry.server.periodic import PeriodicService
from registry.server.probe import describe, probe_storage, storage_description
from registry.server.service import OrderedMultiService, RegistryService
from registry.server.workers import (
    AdoptedEndpoint,
    WorkerLink,
    WorkerSpec,
    die_with_supervisor,
    failures_per_worker,
    leave_interrupts_to_supervisor,
    workers_probe,
)
from registry.storage.driver import StorageFull
from registry.storage.factory import build_driver
from registry.storage.hash_offload import HashThreads
from registry.storage.reserve import keep_reserve
from registry.sync.metrics import register_sync_metrics
from registry.tap import configuration_error, has_syncs, listening_endpoints

if TYPE_CHECKING:
    # The pull-through cache (treq, its stores) is imported only when [proxy:NAME] is set.
    from registry.proxy.routing import ProxyRouter

log = Logger()


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
        # Each worker counts what it sees: its share of the budget (registry.server.workers).
        max_failures=failures_per_worker(config.auth.max_failures, config.http.workers),
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
        client_certificates_possible=config.http.clientauth != "none"
        and any(is_tls_description(d) for d in config.http.port),
    )


def _serving(
    config: Config,
    reactor: Any,
    tracker: ConnectionTracker,
    endpoints: list[tuple[str, Any]],
    site: Any,
    driver: Any,
    flush: Any,
    checks: list[Callable[[], Awaitable[None]]] | None = None,
    link: WorkerLink | None = None,
    notifier: Notifier | None = None,
    board: AcceptBoard | None = None,
    health: HealthChecker | None = None,
) -> RegistryService:
    """
    The root service: binds ``endpoints``, probes ``driver``, announces, drains on stop (see
    `registry.server.service`) the connections ``tracker`` sees.
    """
    if board is not None:  # the workers take turns accepting by their open connections
        tracker.watch(board.connections_changed)
    site.requestFactory = tracker.wrap_request_factory(site.requestFactory)
    listeners = Listeners(reactor, endpoints, tracker.wrap_factory(site))
    where = storage_description(config.storage)

    async def probe() -> None:
        try:
            try:
                await probe_storage(driver, readonly=config.maintenance.readonly)
            except StorageFull as exc:
                # A restart on a full disk (a reboot, a deploy) still serves pulls, as a
                # registry whose disk fills while it runs does; writes answer 503 with the
                # reason, and the storage readiness check fails, until there is room.
                log.warn(
                    "storage {where} is full ({error}): serving pulls; pushes answer 503"
                    " until there is room (txregistry gc frees it: docs/operations.md)",
                    where=where,
                    error=describe(exc),
                )
                await probe_storage(driver, readonly=True)
        except Exception as exc:
            raise StartupError(f"cannot use storage {where}: {describe(exc)}") from exc
        # One process of the registry (the single one, or worker 0) cleans up after killed
        # ones, once per start: bounded work, and one line at most.
        if not config.maintenance.readonly and (link is None or link.spec.worker == 0):
            await sweep_probe_files_logged(driver)
        for check in checks or ():  # each raises StartupError with its one line
            await check()

    def announce() -> None:
        # Accepting from here on: events name the bound port, not a configured 0.
        first = listeners.ports[0].getHost() if listeners.ports else None
        if notifier is not None and isinstance(getattr(first, "port", None), int):
            notifier.listening_on(first.port)  # type: ignore[union-attr]
        if link is not None:  # the supervisor announces the registry once every worker serves
            log.info(
                "worker {worker} serving {addresses}",
                worker=link.spec.worker,
                addresses=", ".join(listeners.addresses()),
            )
            link.ready()
            return
        log.info(
            "txregistry listening on {ports} ({addresses}), {driver} storage",
            ports=", ".join(listeners.descriptions),
            addresses=", ".join(listeners.addresses()),
            driver=config.storage.driver,
        )
        daemon_status.started()

    return RegistryService(
        reactor,
        listeners,
        tracker,
        probe=probe,
        announce=announce,
        drain_timeout=config.http.draintimeout,
        flush=flush,
        health=health,
        # A worker leaves SIGINT and SIGQUIT to its supervisor; a single process has its own.
        interrupts=link is None,
    )


def add_monitoring(
    config: Config,
    ctx: RegistryContext,
    router: ProxyRouter | None,
    reactor: Any,
    root: Any,
    spec: WorkerSpec | None = None,
) -> None:
    """
    Health checks of the upstreams (``[health] upstreams``), and the ``[debug] addr`` listener
    that serves metrics and health apart from the registry's port.
    """
    if router is not None:
        for cache in router.caches:
            loaded = loaded_probe(functools.partial(getattr, cache, "state_loaded"), "the index")
            ctx.health.add(HealthCheck(f"cache:{cache.name}", loaded))
    if router is not None and config.health.upstreams != "off":
        # By default an upstream's outage is degraded: every instance of a mirror shares its
        # upstream, and failing readiness took them all out of the pool at once, while each
        # could serve what it holds.
        degrades = (
            "cached content is served; what is not cached answers 503"
            if config.health.upstreams == "degraded"
            else None
        )
        for cache in router.caches:
            probe = upstream_probe(cache.client.ping, cache.client.health.rate_limits)
            ctx.health.add(HealthCheck(f"upstream:{cache.name}", probe, failure_degrades=degrades))
    if config.debug.addr:
        try:
            endpoint = server_endpoint(reactor, normalize_description(config.debug.addr))
        except ValueError as exc:
            exit_now(f"configuration error: [debug] addr: {exc}")
        if spec is not None and spec.debug is not None:  # bound by the supervisor
            endpoint = AdoptedEndpoint(reactor, spec.debug, endpoint)
        from registry.handlers.debug_site import make_debug_site

        listeners = Listeners(reactor, [(config.debug.addr, endpoint)], make_debug_site(ctx))
        ListeningService(reactor, listeners).setServiceParent(root)  # type: ignore[no-untyped-call]
        log.info("metrics and health on {addr}", addr=config.debug.addr)


def refuse_unknown_twisted(problems: list[str]) -> None:
    """
    Refuse to start on a Twisted whose private parts moved (`registry.http.twisted_internals`).
    There is no switch to start anyway: the fast paths read those parts directly, so running
    would turn them into failed requests; docs/install.md says how to try a newer Twisted.
    """
    if problems:
        exit_now(
            f"this Twisted ({twisted.__version__}) lacks what txregistry relies on: "
            + "; ".join(problems)
        )


def serve(
    config: Config, reactor: Any, spec: WorkerSpec | None, reload_on_hup: bool = False
) -> IService:
    """
    The service tree of a serving process: the whole registry (``spec`` None), or worker
    ``spec.worker`` of a supervisor's tree.
    """
    refuse_unknown_twisted(twisted_internals.problems(client=uses_http_client(config)))
    if spec is None:
        config = _with_workers(config, 1, config.http.port)
    else:
        die_with_supervisor(spec)
        leave_interrupts_to_supervisor()
        # A worker: listens where the supervisor bound (its descriptions, not --port's).
        config = _with_workers(config, spec.workers, tuple(i.description for i in spec.listeners))
    limit_malloc_arenas()  # before any worker thread exists: see registry/malloc_tuning.py
    # Its parts stop one after the other: a purge in progress needs the storage pool.
    root = OrderedMultiService(reactor)
    pool = ThreadPool(minthreads=2, maxthreads=16, name="registry-io")
    ThreadPoolService(pool).setServiceParent(root)  # type: ignore[no-untyped-call]
    guard_clock(reactor)
    settings = auth_settings(config)
    try:
        access: IAccessController = make_access_controller(
            settings,
            reactor,
            reactor,
            pool,
        )
        endpoints = listening_endpoints(
            config,
            reactor,
            settings.enabled,
            refuse_expired=spec is not None and spec.refuse_expired,
        )
        board = None
        if spec is not None:
            make_port = None
            if spec.board >= 0:
                board = AcceptBoard(spec.board, spec.workers, spec.worker, reactor)
                make_port = balanced_port_factory(board)
            endpoints = [
                (description, AdoptedEndpoint(reactor, inherited, endpoint, make_port))
                for (description, endpoint), inherited in zip(
                    endpoints, spec.listeners, strict=True
                )
            ]
        driver = build_driver(config, reactor, pool)
    except (ValueError, OSError, ConfigError) as exc:
        configuration_error(exc)
    # Upload hashing gets threads of its own, one per core: it is CPU work, and long hashing
    # slices must not delay the storage pool's file reads.
    hash_pool = ThreadPool(minthreads=1, maxthreads=os.cpu_count() or 2, name="registry-hash")
    ThreadPoolService(hash_pool).setServiceParent(root)  # type: ignore[no-untyped-call]
    link = WorkerLink(reactor, spec) if spec is not None else None
    if link is not None:
        link.setServiceParent(root)  # type: ignore[no-untyped-call]
    metrics = Metrics(tree=link.tree_metrics if link is not None else None)
    # The stop's drain; its deadline also bounds the wait for webhook POSTs in flight.
    tracker = ConnectionTracker(reactor)
    checks: list[Callable[[], Awaitable[None]]] = []  # start-up checks after the storage probe

    proxied = bool(parse_proxies(config))

    def wrap(local: LocalStores) -> Stores:
        # Pull-through caches ([proxy:NAME]): wrappers around the local stores, their service.
        if not proxied:
            return Stores.of(local)
        from registry.proxy.service import install_proxies

        return install_proxies(local, local.driver, config, reactor, root, metrics, checks)

    ctx = RegistryContext.build(
        config,
        driver,
        reactor,
        access,
        hash_threads=HashThreads(reactor, hash_pool),
        metrics=metrics,
        # Webhooks ([notifications:NAME]): a durable queue and delivery service per endpoint.
        notifier=add_notifications(
            config,
            reactor,
            root,
            worker=spec.worker if spec else 0,
            workers=spec.workers if spec else 1,
            check=spec is not None and spec.check,
            time_left=tracker.time_left,
        ),
        wrap=wrap,
    )
    # Stopped before the pools and the driver: the health probe's file goes with the process.
    ProbeFileCleanup(ctx.driver, reactor).setServiceParent(root)  # type: ignore[no-untyped-call]
    router: ProxyRouter | None = None
    if proxied:
        from registry.proxy.routing import ProxyRouter

        if isinstance(ctx.route_rewriter, ProxyRouter):
            router = ctx.route_rewriter
    add_monitoring(config, ctx, router, reactor, root, spec)
    if link is not None:
        link.local_metrics = lambda: local_metrics(ctx)
        ctx.health.add(HealthCheck("workers", workers_probe(link)))
        ctx.health.instance_stopping = link.instance_stopping
    register_notification_metrics(ctx.metrics.registry, ctx.notifier)
    register_sync_metrics(ctx.metrics.registry, ctx.sync)
    site = make_site(ctx, after_request=HeapTrimmer(reactor, pool).transferred)
    if config.http.sendfile != "never" and (problems := sendfile.platform_problems()):
        log.warn(
            "[http] sendfile: blob bodies go through the registry instead ({problems})",
            problems="; ".join(problems),
        )
    # The root binds, probes and announces, and drains before the rest stops.
    serving = _serving(
        config,
        reactor,
        tracker,
        endpoints,
        site,
        driver,
        ctx.uploads.flush,
        checks,
        link,
        ctx.notifier,
        board,
        ctx.health,
    )
    root.setServiceParent(serving)  # type: ignore[no-untyped-call]
    if link is not None:  # the supervisor stops at once: cut rather than drain
        link.cut = serving.cut
    if reload_on_hup and spec is None:  # one process under twistd: SIGHUP reads TLS files again
        from registry.server.reload import HupReloader

        HupReloader(reactor, endpoints).setServiceParent(root)  # type: ignore[no-untyped-call]
    serving.ready.addCallback(lambda _: release_startup_memory())
    if spec is None or spec.worker == 0:  # once per registry, not once per worker
        serving.ready.addCallback(lambda _: _after_start(config, root, ctx, driver))
    elif has_syncs(config):  # the first worker runs the syncs; the others read their states
        from registry.sync.service import add_statuses

        add_statuses(config, ctx)
        ctx.sync.from_storage = True
    return serving


def _with_workers(config: Config, workers: int, ports: tuple[str, ...]) -> Config:
    """``config`` as this process serves it: its resolved number of workers, its listeners."""
    return attrs.evolve(config, http=attrs.evolve(config.http, workers=workers, port=ports))


async def _index_referrers(driver: Any) -> None:
    """The referrers of manifests another program pushed (registry:2 keeps no index), once."""
    from registry.storage.blobs import BlobStore
    from registry.storage.catalog import Catalog
    from registry.storage.manifests import ManifestStore, ensure_referrers_index

    store = ManifestStore(driver, BlobStore(driver))
    indexed = await ensure_referrers_index(store, Catalog(driver).walk)
    if indexed is not None and indexed[0]:
        log.info(
            "referrers index built: {count} referrers in {repositories} repositories",
            count=indexed[0],
            repositories=indexed[1],
        )


def _purge_failed(failure: Failure) -> None:
    """
    One line per failed purge, whatever failed: it runs again every interval, and a
    traceback at each run (a storage tree that broke the walk made ~1,000 lines of one)
    buries the log without telling the operator more than the error's type and message.
    """
    error = failure.value
    log.error("upload purge failed: {error}", error=f"{type(error).__name__}: {error}")


class OnceService(Service):
    """
    Steps run once, in order, when started (the indexes built after the storage probe), each
    failure logged in one line -- but not once the registry stopped: a storage that hangs has
    the work fail after the registry said it stopped, and a line then would be about nothing
    that still runs.  Stopping also cancels the step under way.
    """

    def __init__(self, steps: list[tuple[str, Callable[[], Awaitable[object]]]]) -> None:
        self._steps = steps
        self._running: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        running = Deferred.fromCoroutine(self._run())
        if not running.called:
            self._running = running

    async def _run(self) -> None:
        for what, step in self._steps:
            try:
                await step()
            except CancelledError:
                return
            except Exception:
                if not self.running:
                    return
                log_failure(log, Failure(), f"{what} failed")
        self._running = None

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        running, self._running = self._running, None
        if running is not None:
            running.cancel()


def _after_start(config: Config, root: MultiService, ctx: RegistryContext, driver: Any) -> None:
    """Storage work that waits for the probe: on broken storage it could only log failures."""

    # A registry:2 data directory served for the first time has no catalog index yet: build
    # it now rather than inside the first catalog request; then its referrers index.
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("building the catalog index", ctx.catalog.ensure_index),
        ("building the referrers index", lambda: _index_referrers(driver)),
    ]
    if config.storage.driver == "filesystem" and not config.maintenance.readonly:
        # Room for a garbage collection to start on a disk that fills up later.
        steps.append(("keeping the gc reserve", lambda: keep_reserve(driver)))
    OnceService(steps).setServiceParent(root)  # type: ignore[no-untyped-call]
    # Replication ([sync:NAME]): each sync's schedule starts once storage is known to work.
    if has_syncs(config):
        from registry.sync.service import add_replication

        add_replication(config, ctx, ctx.reactor, root)
    if config.uploads.purge_enabled:

        def purge() -> Deferred[Any]:
            d = Deferred.fromCoroutine(
                purge_uploads(ctx.driver, config.uploads.purge_age, time.time())
            )
            d.addCallback(ctx.metrics.uploads_purged.inc)
            d.addErrback(_purge_failed)
            return d

        purging = PeriodicService(ctx.reactor, config.uploads.purge_interval, purge)
        purging.setServiceParent(root)  # type: ignore[no-untyped-call]
