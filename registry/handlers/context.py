"""
Everything a handler needs, built once at start-up and passed explicitly.

Handlers reach storage only through the stores' interfaces, and access control only through
``access``; swapping a store for a pull-through wrapper (or the access controller for
htpasswd) changes nothing in the handlers.  Each collaborator is a typed field: there is no
bag of extras to hide one in, and the context is frozen once built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from registry.auth.interfaces import AllowAll, IAccessController
from registry.config import Config
from registry.http.routes import IRouteRewriter
from registry.manifests import IndexPolicy, UrlPolicy
from registry.ops.health import STORAGE, HealthCheck, HealthChecker, storage_probe
from registry.ops.metrics import Metrics
from registry.ops.notifications.events import Notifier
from registry.ops.storage_metrics import MeasuredDriver
from registry.storage.blobs import BlobStore, IBlobStore
from registry.storage.catalog import Catalog, ICatalog
from registry.storage.driver import LOCAL_DRIVERS, IStorageDriver
from registry.storage.hash_offload import HashThreads
from registry.storage.manifests import IManifestStore, ManifestStore
from registry.storage.referrers import IReferrers, ReferrersIndex
from registry.storage.tags import ITagStore, TagStore
from registry.storage.uploads import IUploadStore, UploadStore
from registry.sync.status import SyncBoard

# The largest page a client may ask for with ``n`` (tags, catalog, referrers).
MAX_PAGE = 10_000


@attrs.frozen
class LocalStores:
    """The registry's own stores over one driver: what wrappers (the pull-through cache)
    wrap, and what handlers use when nothing wraps them."""

    blobs: BlobStore
    uploads: UploadStore
    manifests: ManifestStore
    tags: TagStore
    referrers: ReferrersIndex
    catalog: Catalog
    # The driver under them (timed: see `RegistryContext.build`), for wrappers that store too.
    driver: IStorageDriver

    @classmethod
    def build(
        cls,
        config: Config,
        driver: IStorageDriver,
        hash_threads: HashThreads | None = None,
        clock: IReactorTime | None = None,
    ) -> LocalStores:
        blobs = BlobStore(driver)
        tags = TagStore(driver, max_page=MAX_PAGE)
        referrers = ReferrersIndex(driver, max_page=MAX_PAGE)
        # With the clock, the index built at a first start (a registry:2 data directory) lets
        # requests in between its writes: 20,000 repositories held the reactor 2.4 s.
        catalog = Catalog(driver, max_page=MAX_PAGE, clock=clock)
        manifests = ManifestStore(
            driver,
            blobs,
            tags=tags,
            referrers=referrers,
            catalog=catalog,
            max_size=config.storage.max_manifest_size,
            url_policy=UrlPolicy(config.validation.urls_allow, config.validation.urls_deny),
            index_policy=IndexPolicy.from_words(config.validation.index_platforms),
            blobs_required=config.validation.blobs_required,
        )
        # Several workers ([http] workers) share even local storage: the next PATCH may land
        # on another process, which must find the hash state recorded.  (A serving process's
        # config holds its resolved number of workers; 0 only where one is embedded.)
        uploads = UploadStore(
            driver,
            blobs,
            hash_threads,
            state_after_answer=driver.name in LOCAL_DRIVERS and config.http.workers <= 1,
        )
        return cls(blobs, uploads, manifests, tags, referrers, catalog, driver)


@attrs.frozen
class Stores:
    """The stores handlers use, by interface; ``rewriter`` may redirect a route first."""

    blobs: IBlobStore
    uploads: IUploadStore
    manifests: IManifestStore
    tags: ITagStore
    referrers: IReferrers
    catalog: ICatalog
    rewriter: IRouteRewriter | None = None

    @classmethod
    def of(cls, local: LocalStores) -> Stores:
        return cls(
            local.blobs, local.uploads, local.manifests, local.tags, local.referrers, local.catalog
        )


# Wraps the local stores (the pull-through cache installs itself this way).
StoreWrapper = Callable[[LocalStores], Stores]


@attrs.frozen
class RegistryContext:
    config: Config
    driver: IStorageDriver
    blobs: IBlobStore
    uploads: IUploadStore
    manifests: IManifestStore
    tags: ITagStore
    referrers: IReferrers
    catalog: ICatalog
    reactor: Any
    access: IAccessController = attrs.field(factory=AllowAll)
    # The process's Prometheus metrics: other components add theirs to ``metrics.registry``.
    metrics: Metrics = attrs.field(factory=Metrics)
    # Readiness checks: storage from the start; upstreams and others add theirs.
    health: HealthChecker = attrs.field(
        default=attrs.Factory(lambda self: HealthChecker(self.reactor), takes_self=True)
    )
    # Webhook events ([notifications:NAME]); without endpoints every call returns at once.
    notifier: Notifier = attrs.field(factory=Notifier)
    # Applied to every parsed route before its handler (containerd's ``?ns=``), if any.
    route_rewriter: IRouteRewriter | None = None
    # Replication ([sync:NAME]): each sync's status, filled in by `registry.sync.service`.
    sync: SyncBoard = attrs.field(factory=SyncBoard)

    @classmethod
    def build(
        cls,
        config: Config,
        driver: IStorageDriver,
        reactor: Any,
        access: IAccessController | None = None,
        hash_threads: HashThreads | None = None,
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        wrap: StoreWrapper | None = None,
    ) -> RegistryContext:
        """The context over the local stores, or over what ``wrap`` makes of them."""
        metrics = metrics if metrics is not None else Metrics()
        # Every storage call is timed; the stores (and wrappers) see only the measured driver.
        driver = MeasuredDriver(driver, metrics)
        health = HealthChecker(
            reactor, cache_for=config.health.cache, timeout=config.health.timeout
        )
        health.add(
            HealthCheck(
                STORAGE,
                storage_probe(driver, writable=not config.maintenance.readonly),
            )
        )
        local = LocalStores.build(config, driver, hash_threads, reactor)
        stores = wrap(local) if wrap is not None else Stores.of(local)
        return cls(
            config=config,
            driver=driver,
            blobs=stores.blobs,
            uploads=stores.uploads,
            manifests=stores.manifests,
            tags=stores.tags,
            referrers=stores.referrers,
            catalog=stores.catalog,
            reactor=reactor,
            access=access or AllowAll(),
            metrics=metrics,
            health=health,
            notifier=notifier if notifier is not None else Notifier(),
            route_rewriter=stores.rewriter,
        )
