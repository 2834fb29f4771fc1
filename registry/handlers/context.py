"""
Everything a handler needs, built once at start-up and passed explicitly.

Handlers reach storage only through these stores, and access control only through
``access``; swapping a store for a pull-through one (or the access controller for htpasswd)
changes nothing in the handlers.
"""

from __future__ import annotations

from typing import Any

import attrs

from registry.auth.interfaces import AllowAll, IAccessController
from registry.config import Config
from registry.manifests import UrlPolicy
from registry.ops.health import STORAGE, HealthCheck, HealthChecker, storage_probe
from registry.ops.metrics import Metrics
from registry.ops.storage_metrics import MeasuredDriver
from registry.storage.blobs import BlobStore
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver
from registry.storage.hash_offload import HashThreads
from registry.storage.manifests import ManifestStore
from registry.storage.referrers import ReferrersIndex
from registry.storage.tags import TagStore
from registry.storage.uploads import UploadStore

# Drivers whose storage belongs to one process (S3 buckets are shared between instances).
LOCAL_DRIVERS = ("filesystem", "inmemory")
# The largest page a client may ask for with ``n`` (tags, catalog, referrers).
MAX_PAGE = 10_000


@attrs.define
class RegistryContext:
    config: Config
    driver: IStorageDriver
    blobs: BlobStore
    uploads: UploadStore
    manifests: ManifestStore
    tags: TagStore
    referrers: ReferrersIndex
    catalog: Catalog
    reactor: Any
    access: IAccessController = attrs.field(factory=AllowAll)
    # The process's Prometheus metrics: other components add theirs to ``metrics.registry``.
    metrics: Metrics = attrs.field(factory=Metrics)
    # Readiness checks: storage from the start; upstreams and others add theirs.
    health: HealthChecker = attrs.field(
        default=attrs.Factory(lambda self: HealthChecker(self.reactor), takes_self=True)
    )
    # Filled in by the modules that own them (manifests, tags, referrers, catalog, proxy).
    extras: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def build(
        cls,
        config: Config,
        driver: IStorageDriver,
        reactor: Any,
        access: IAccessController | None = None,
        hash_threads: HashThreads | None = None,
    ) -> RegistryContext:
        metrics = Metrics()
        # Every storage call is timed; the stores below see only the measured driver.
        driver = MeasuredDriver(driver, metrics)
        health = HealthChecker(
            reactor, cache_for=config.health.cache, timeout=config.health.timeout
        )
        health.add(
            HealthCheck(
                STORAGE,
                storage_probe(driver, reactor, writable=not config.maintenance.readonly),
            )
        )
        blobs = BlobStore(driver)
        tags = TagStore(driver, max_page=MAX_PAGE)
        referrers = ReferrersIndex(driver, max_page=MAX_PAGE)
        catalog = Catalog(driver, max_page=MAX_PAGE)
        manifests = ManifestStore(
            driver,
            blobs,
            tags=tags,
            referrers=referrers,
            catalog=catalog,
            max_size=config.storage.max_manifest_size,
            url_policy=UrlPolicy(config.validation.urls_allow, config.validation.urls_deny),
        )
        return cls(
            config=config,
            driver=driver,
            blobs=blobs,
            uploads=UploadStore(
                driver,
                blobs,
                hash_threads,
                state_after_answer=driver.name in LOCAL_DRIVERS,
            ),
            manifests=manifests,
            tags=tags,
            referrers=referrers,
            catalog=catalog,
            reactor=reactor,
            access=access or AllowAll(),
            metrics=metrics,
            health=health,
        )
