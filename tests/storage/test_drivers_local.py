"""The driver suite against the filesystem and in-memory drivers."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from registry.storage.filesystem import FilesystemDriver
from registry.storage.memory import MemoryDriver
from tests.storage.driver_suite import DriverSuite


class TestMemoryDriver(DriverSuite):
    @pytest.fixture
    def driver(self) -> MemoryDriver:
        return MemoryDriver()


class TestFilesystemDriver(DriverSuite):
    @pytest.fixture
    def driver(self, tmp_path: Path, thread_pool: ThreadPool) -> FilesystemDriver:
        return FilesystemDriver(str(tmp_path / "root"), reactor, thread_pool)

    def test_paths_stay_in_root(self, driver: FilesystemDriver) -> None:
        with pytest.raises(ValueError):
            driver._full("a/../../etc")
