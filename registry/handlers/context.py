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
from registry.storage.blobs import BlobStore
from registry.storage.driver import IStorageDriver
from registry.storage.uploads import UploadStore


@attrs.define
class RegistryContext:
    config: Config
    driver: IStorageDriver
    blobs: BlobStore
    uploads: UploadStore
    reactor: Any
    access: IAccessController = attrs.field(factory=AllowAll)
    # Filled in by the modules that own them (manifests, tags, referrers, catalog, proxy).
    extras: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def build(
        cls,
        config: Config,
        driver: IStorageDriver,
        reactor: Any,
        access: IAccessController | None = None,
    ) -> RegistryContext:
        blobs = BlobStore(driver)
        return cls(
            config=config,
            driver=driver,
            blobs=blobs,
            uploads=UploadStore(driver, blobs),
            reactor=reactor,
            access=access or AllowAll(),
        )
