"""Garbage collection over the S3 driver, against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from registry.api.digests import Digest
from registry.ops.gc import GCOptions, collect_garbage
from registry.storage import gcguard, layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import PathNotFoundError
from registry.storage.s3 import S3Driver
from tests.e2e.harness import sleep
from tests.ops import scenario
from tests.ops.scenario import DELETED_UNTAGGED, UNTAGGED
from tests.ops.test_gc_during_push import gone_pid
from tests.storage.s3server import S3Server


@pytest_twisted.async_yield_fixture
async def driver(s3_server: S3Server) -> AsyncIterator[S3Driver]:
    driver = S3Driver(reactor, s3_server.settings(f"/gc/{uuid.uuid4().hex}/"))
    yield driver
    await driver.close()


@pytest_twisted.ensureDeferred
async def test_gc_over_s3(driver: S3Driver) -> None:
    content = await scenario.build(*scenario.store_pushers(driver))
    blobs = BlobStore(driver)
    # S3 times have one-second resolution: what is written after ``mark`` is "young" when
    # gc pretends to run an hour (the grace) later, once S3 stamps new objects at ``mark`` or
    # later (a probe object says when).
    mark = time.time()
    probe = f"{layout.OWN}/probes/clock"
    for _ in range(100):
        await driver.put_content(probe, b"")
        if (await driver.stat(probe)).modified >= mark:
            break
        await sleep(0.05)
    else:
        raise AssertionError("S3 never stamped an object after the mark")
    await driver.delete(probe)
    fresh = await blobs.put_small(b"pushed just now")
    await blobs.link("app", fresh)
    now = mark + 3600.0

    dry = await collect_garbage(driver, GCOptions(delete_untagged=True, dry_run=True), now)
    expected = DELETED_UNTAGGED | {"ORPHAN_NEW"}
    assert content.labels(set(dry.candidates)) == expected
    assert dry.stats.blobs_young == 1
    for label in expected:
        assert await blobs.exists(Digest.parse(content.digests[label])) is not None

    done = await collect_garbage(driver, GCOptions(delete_untagged=True), now)
    assert done.stats.errors == []
    assert done.stats.blobs_deleted == len(expected)
    assert done.stats.revisions_deleted == len(UNTAGGED)
    for label, digest in content.digests.items():
        present = await blobs.exists(Digest.parse(digest)) is not None
        assert present == (label not in expected), label
    assert await blobs.exists(fresh) is not None
    for label in UNTAGGED:
        link = layout.revision_link("app", Digest.parse(content.digests[label]))
        assert not await _exists(driver, link)
    assert await _exists(driver, layout.revision_link("app", Digest.parse(content.digests["MA"])))


async def _exists(driver: S3Driver, path: str) -> bool:
    try:
        await driver.stat(path)
    except PathNotFoundError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_one_gc_run_at_a_time_over_s3(driver: S3Driver) -> None:
    """The marker is S3's conditional writes: created only where none is, replaced and
    removed only by its run (``If-Match``), taken over from a run killed on this host."""
    first = gcguard.RunMarker(driver, time.time())
    await first.claim()
    await first.renew()
    with pytest.raises(gcguard.CollectorBusy, match=f"run {first.run} on "):
        await gcguard.RunMarker(driver, time.time()).claim()
    # Killed with kill -9 (its process is gone): the next run takes over at once ...
    dead = {"started": int(time.time()), "run": "dead", "host": socket.gethostname()}
    await driver.put_content(gcguard.RUNNING, json.dumps({**dead, "pid": gone_pid()}).encode())
    second = gcguard.RunMarker(driver, time.time())
    await second.claim()
    # ... and the run that lost it neither renews nor removes the new holder's marker.
    with pytest.raises(gcguard.MarkerLost):
        await first.renew()
    await first.release()
    assert second.run in (await driver.get_content(gcguard.RUNNING)).decode()
    await second.release()
    with pytest.raises(PathNotFoundError):
        await driver.stat(gcguard.RUNNING)


@pytest_twisted.ensureDeferred
async def test_a_folder_an_s3_server_keeps_listing_is_not_a_blob(driver: S3Driver) -> None:
    """SeaweedFS goes on listing a blob folder emptied one file at a time (a killed run's
    sweep leaves such): gc counted it as a blob within its grace period, every run, and as
    stored.  It is neither."""
    blobs = BlobStore(driver)
    kept = await blobs.put_small(b"a blob that stays")
    emptied = Digest.parse("sha256:" + "ab" * 32)
    data = layout.blob_data(emptied)
    await driver.put_content(data, b"soon gone")
    await driver.delete(data)  # the file, not its folder
    prefix = f"{layout.BLOBS}/sha256/ab"
    assert emptied.hex in await driver.list(prefix)  # what the server keeps listing
    result = await collect_garbage(driver, GCOptions(dry_run=True), time.time() + 3600.0)
    assert result.stats.errors == []
    assert result.stats.blobs_young == 0
    assert (result.stats.blobs_examined, result.stats.blobs_stored) == (1, 1)
    assert [str(c) for c in result.candidates] == [str(kept)]  # unreferenced, past its grace
