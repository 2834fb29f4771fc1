"""Build the configured storage driver."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.python.threadpool import ThreadPool

from registry.config import Config, ConfigError, StorageConfig
from registry.storage.driver import IStorageDriver


def build_driver(config: Config, reactor: Any, threadpool: ThreadPool) -> IStorageDriver:
    storage = config.storage
    if storage.driver == "filesystem":
        from registry.storage.filesystem import FilesystemDriver

        driver = FilesystemDriver(storage.rootdirectory, reactor, threadpool, fsync=storage.fsync)
        driver.empty_trash()
        return driver
    if storage.driver == "inmemory":
        from registry.storage.memory import MemoryDriver

        return MemoryDriver()
    if storage.driver == "s3":
        from registry.storage.s3 import S3Driver, S3Settings

        if not storage.bucket:
            raise ConfigError("[storage] bucket: required with driver = s3")
        # rootdirectory is a key prefix on S3; the filesystem default ("./registry-data")
        # means "none" there, as registry:2's S3 driver defaults to the bucket's root.
        root = storage.rootdirectory
        if root == StorageConfig().rootdirectory:
            root = ""
        spool = _parts_spool(storage)
        try:
            settings = S3Settings(
                bucket=storage.bucket,
                region=storage.region,
                regionendpoint=storage.regionendpoint,
                accesskey=storage.accesskey,
                secretkey=storage.secretkey,
                rootdirectory=root,
                chunksize=storage.chunksize,
                secure=storage.secure,
                forcepathstyle=storage.forcepathstyle,
                redirect=storage.redirect,
                spooldirectory=spool,
                answertimeout=storage.answertimeout,
                copytimeout=storage.copytimeout,
                idletimeout=storage.idletimeout,
            )
            settings.credentials()
        except ValueError as exc:
            raise ConfigError(f"[storage] {exc}") from None
        return S3Driver(reactor, settings)
    raise ConfigError(f"[storage] driver: unknown driver {storage.driver!r}")


def _parts_spool(storage: StorageConfig) -> str | None:
    """Where S3 upload parts wait until sent: ``spooldirectory``, else the system's temporary
    folder, or None (memory) with ``spoolparts = false``."""
    if not storage.spoolparts:
        return None
    folder = storage.spooldirectory or tempfile.gettempdir()
    # Made (or refused) at start-up: a folder that is not there would fail every upload.
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"[storage] spooldirectory {folder}: {reason}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"[storage] spooldirectory {folder}: not writable")
    return folder
