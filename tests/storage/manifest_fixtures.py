"""
Fixtures for the manifest, tag, referrers and catalog stores: each test runs over the
in-memory driver and the filesystem driver (in a temporary folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from registry.api.digests import Digest
from registry.storage.blobs import BlobStore
from registry.storage.driver import IStorageDriver
from registry.storage.filesystem import FilesystemDriver
from registry.storage.memory import MemoryDriver


@pytest.fixture(params=["memory", "filesystem"])
def driver(request: Any, tmp_path: Path) -> IStorageDriver:
    if request.param == "memory":
        return MemoryDriver()
    pool: ThreadPool = request.getfixturevalue("thread_pool")
    return FilesystemDriver(str(tmp_path / "root"), reactor, pool)


@pytest.fixture
def blobs(driver: IStorageDriver) -> BlobStore:
    return BlobStore(driver)


async def push_blob(blobs: BlobStore, name: str, data: bytes) -> Digest:
    """What a completed blob upload leaves behind: the data and the repository link."""
    digest = await blobs.put_small(data)
    await blobs.link(name, digest)
    return digest
