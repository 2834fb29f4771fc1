"""Storage for the operations tests: a filesystem driver on a folder of the test's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from registry.storage.filesystem import FilesystemDriver


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def driver(root: Path, thread_pool: ThreadPool) -> FilesystemDriver:
    return FilesystemDriver(str(root), reactor, thread_pool)
