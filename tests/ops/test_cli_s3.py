"""``python -m registry.cli`` as a child process over S3 storage (a real SeaweedFS)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest_twisted
from twisted.internet import reactor

from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import ENTRIES_DIR
from registry.storage.s3 import S3Driver
from registry.storage.uploads import UploadStore
from tests.e2e.harness import write_config
from tests.ops import scenario
from tests.ops.test_cli import cli
from tests.storage.s3server import S3Server


@attrs.frozen
class S3Storage:
    driver: S3Driver
    config: Path


@pytest_twisted.async_yield_fixture
async def storage(s3_server: S3Server, tmp_path: Path) -> AsyncIterator[S3Storage]:
    root = f"/cli/{uuid.uuid4().hex}/"
    section = s3_server.storage_section(root)
    driver = S3Driver(reactor, s3_server.settings(root))
    config = write_config(tmp_path / "tap.cfg", {"storage": section})
    yield S3Storage(driver, config)
    await driver.close()


@pytest_twisted.ensureDeferred
async def test_catalog_rebuild_over_s3(storage: S3Storage) -> None:
    """The counting wrapper takes on the S3 driver's staged writes without failing."""
    await scenario.build(*scenario.store_pushers(storage.driver))
    await storage.driver.put_content(f"{ENTRIES_DIR}/gone", b"gone")
    result = await cli("catalog-rebuild", "--config", str(storage.config))
    assert result.code == 0, result
    assert result.out.startswith("catalog-rebuild: 2 repositories (2 added, 1 removed) in "), result
    assert "Traceback" not in result.err
    assert sorted(await storage.driver.list(ENTRIES_DIR)) == ["app", "other"]


@pytest_twisted.ensureDeferred
async def test_purge_uploads_over_s3(storage: S3Storage) -> None:
    driver = storage.driver
    await scenario.build(*scenario.store_pushers(driver))
    uploads = UploadStore(driver, BlobStore(driver))
    old = await uploads.start("app")
    fresh = await uploads.start("other")
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    await driver.put_content(
        layout.upload_started_at("app", old), started.isoformat().replace("+00:00", "Z").encode()
    )
    result = await cli("purge-uploads", "--config", str(storage.config), "--age", "2h")
    assert result.code == 0, result
    assert result.out.startswith("purge-uploads: purged 1 uploads older than 2h in "), result
    assert "Traceback" not in result.err
    assert not await uploads.exists("app", old)
    assert await uploads.exists("other", fresh)
