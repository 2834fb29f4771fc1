"""``python -m registry.cli`` as a child process over S3 storage (a real SeaweedFS)."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest_twisted
from twisted.internet import reactor

from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import ENTRIES_DIR, Catalog
from registry.storage.s3 import S3Driver
from registry.storage.s3 import _multipart as multipart
from registry.storage.s3._lease import LEASE_SUFFIX
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
async def test_a_repository_noted_again_after_a_rebuild_over_s3(storage: S3Storage) -> None:
    """A serving process's catalog wrote an entry; a rebuild (another process) drops it with
    the repository removed behind the registry's back; a push again lists it again."""
    catalog = Catalog(storage.driver)
    push_blob, _ = scenario.store_pushers(storage.driver)
    await push_blob("zz/gone", b"layer")
    await catalog.note_repository("zz/gone")
    assert await catalog.list_repositories() == (["zz/gone"], False)
    await storage.driver.delete(layout.repository("zz/gone"))
    result = await cli("catalog-rebuild", "--config", str(storage.config))
    assert result.code == 0, result
    assert result.out.startswith("catalog-rebuild: 0 repositories (0 added, 1 removed) in "), result
    await push_blob("zz/gone", b"layer")
    await catalog.note_repository("zz/gone")
    assert await catalog.list_repositories() == (["zz/gone"], False)


@pytest_twisted.ensureDeferred
async def test_purge_uploads_over_s3(storage: S3Storage) -> None:
    """
    An upload started hours ago whose data was written a moment ago is not idle: on S3 its
    bytes are beside its ``data`` key (which exists only once committed), and the purge asks
    the driver when they were written.  (It looked at ``data`` alone, so only the start
    counted.)  With ``--age 0s``, every upload not being written goes.
    """
    driver = storage.driver
    await scenario.build(*scenario.store_pushers(driver))
    uploads = UploadStore(driver, BlobStore(driver))
    old = await uploads.start("app")
    fresh = await uploads.start("other")
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    await driver.put_content(
        layout.upload_started_at("app", old), started.isoformat().replace("+00:00", "Z").encode()
    )
    appender = await uploads.open("app", old, 0)
    pending = appender.write(b"written just now")
    if pending is not None:
        await pending
    await appender.close()

    result = await cli("purge-uploads", "--config", str(storage.config), "--age", "2h")
    assert result.code == 0, result
    assert result.out.startswith("purge-uploads: purged 0 uploads idle for longer than 2h in "), (
        result
    )
    assert "Traceback" not in result.err
    assert await uploads.size("app", old) == 16
    assert await uploads.exists("other", fresh)

    result = await cli("purge-uploads", "--config", str(storage.config), "--age", "0s")
    assert result.code == 0, result
    assert result.out.startswith(
        "purge-uploads: purged 2 uploads idle for longer than 0.0 s in "
    ), result
    assert not await uploads.exists("app", old)
    assert not await uploads.exists("other", fresh)


def _ended_pid() -> int:
    """The id of a process of this host that ran and no longer runs."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest_twisted.ensureDeferred
async def test_purge_uploads_removes_what_writers_left_over_s3(storage: S3Storage) -> None:
    """
    Leftovers of writers on S3 are purged and counted: an upload folder holding only a write
    lease (its writer killed: a process of this host that no longer runs, so the lease holds
    nothing however recently it was renewed), and a multipart upload of upload data no upload
    refers to any more (a request that went on writing after its upload was cancelled).
    """
    driver = storage.driver
    leased = layout.upload_data("app", str(uuid.uuid4()))
    holder = {"host": socket.gethostname(), "pid": _ended_pid(), "id": uuid.uuid4().hex}
    await driver._client.call(
        "PUT", driver._key(leased) + LEASE_SUFFIX, body=json.dumps(holder).encode()
    )
    orphan = driver._key(layout.upload_data("app", str(uuid.uuid4())))
    await multipart.create(driver._client, orphan)

    result = await cli("purge-uploads", "--config", str(storage.config), "--age", "2h")
    assert result.code == 0, result
    assert result.out.startswith("purge-uploads: purged 0 uploads idle for longer than 2h in "), (
        result
    )
    assert [key for key, _ in await driver._uploads_under(orphan)] == [orphan]

    result = await cli("purge-uploads", "--config", str(storage.config), "--age", "0s")
    assert result.code == 0, result
    assert result.out.startswith(
        "purge-uploads: purged 2 uploads idle for longer than 0.0 s in "
    ), result
    assert "Traceback" not in result.err
    assert await driver._uploads_under(driver._key(layout.repository("app"))) == []
    assert (
        await driver._client.call("HEAD", driver._key(leased) + LEASE_SUFFIX, missing_ok=True)
        is None
    )
