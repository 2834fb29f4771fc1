"""Build the configured storage driver."""

from __future__ import annotations

from typing import Any

from twisted.python.threadpool import ThreadPool

from registry.config import Config, ConfigError
from registry.storage.driver import IStorageDriver


def build_driver(config: Config, reactor: Any, threadpool: ThreadPool) -> IStorageDriver:
    storage = config.storage
    if storage.driver == "filesystem":
        from registry.storage.filesystem import FilesystemDriver

        return FilesystemDriver(storage.rootdirectory, reactor, threadpool, fsync=storage.fsync)
    if storage.driver == "inmemory":
        from registry.storage.memory import MemoryDriver

        return MemoryDriver()
    if storage.driver == "s3":
        from registry.storage.s3 import build_s3_driver  # type: ignore[import-not-found]

        driver: IStorageDriver = build_s3_driver(config, reactor)
        return driver
    raise ConfigError(f"[storage] driver: unknown driver {storage.driver!r}")
