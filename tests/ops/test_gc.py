"""
Garbage collection over real storage (the filesystem driver in a temporary folder): what each
mode deletes, what it keeps, and that everything kept still pulls through the HTTP API.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from registry.api import mediatypes as mt
from registry.api.digests import Digest
from registry.manifests.references import manifest_refs
from registry.ops import gcstatus
from registry.ops.gc import GarbageCollector, GCAborted, GCOptions, GCStats, collect_garbage
from registry.ops.progress import CountingDriver
from registry.storage import gcguard, layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import IStorageDriver, StorageError
from registry.storage.filesystem import FilesystemDriver
from registry.storage.listing import digest_folders
from registry.storage.manifests import ManifestStore
from registry.storage.memory import MemoryDriver
from registry.storage.referrers import ReferrersIndex
from registry.storage.uploads import UploadStore
from tests.e2e.conftest import start_registry
from tests.e2e.harness import InProcessRegistry
from tests.ops import scenario
from tests.ops.scenario import (
    DELETED_DEFAULT,
    DELETED_UNTAGGED,
    UNTAGGED,
    age_everything,
    assert_pullable,
    blob_digests,
    revision_digests,
)

__all__ = ["start_registry"]


async def gc(driver: IStorageDriver, **options: object) -> GarbageCollector:
    return await collect_garbage(driver, GCOptions(**options), time.time())  # type: ignore[arg-type]


async def written(result: Deferred[None] | None) -> None:
    if result is not None:
        await result


async def serve(start_registry: object, root: Path) -> InProcessRegistry:
    return await start_registry({"storage": {"rootdirectory": str(root)}})  # type: ignore[operator]


@pytest_twisted.ensureDeferred
async def test_default_deletes_only_old_unreferenced_blobs(
    driver: FilesystemDriver, root: Path, start_registry: object
) -> None:
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    revisions = revision_digests(root, "app")
    collector = await gc(driver)
    assert content.labels(set(collector.candidates)) == DELETED_DEFAULT
    assert content.labels(before - blob_digests(root)) == DELETED_DEFAULT
    assert revision_digests(root, "app") == revisions
    stats = collector.stats
    assert stats.repositories_scanned == stats.repositories_total == 2
    assert stats.blobs_deleted == 1
    assert stats.bytes_freed == len(content.data["ORPHAN_OLD"])
    assert stats.blobs_young == 1  # ORPHAN_NEW
    assert stats.revisions_deleted == 0
    assert stats.errors == []
    # What is left, counted by every blob's size (kept ones included), for the storage page.
    left = [root / layout.blob_data(Digest.parse(d)) for d in blob_digests(root)]
    assert stats.blobs_stored == len(left) == len(before) - 1
    assert stats.bytes_stored == sum(path.stat().st_size for path in left)
    registry = await serve(start_registry, root)
    await assert_pullable(registry.url, content, DELETED_DEFAULT)


@pytest_twisted.ensureDeferred
async def test_delete_untagged_keeps_indexes_children_and_referrers(
    driver: FilesystemDriver, root: Path, start_registry: object
) -> None:
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    collector = await gc(driver, delete_untagged=True)
    assert content.labels(before - blob_digests(root)) == DELETED_UNTAGGED
    assert {content.label(d) for _, d in collector.doomed_revisions} == UNTAGGED
    kept_revisions = content.labels(revision_digests(root, "app"))
    assert kept_revisions == {"M1", "S1", "I", "MA", "MB", "SA"}
    assert content.labels(revision_digests(root, "other")) == {"M3"}
    stats = collector.stats
    assert stats.revisions_deleted == 4
    assert stats.referrer_entries_deleted == 1  # S2's entry under M2
    assert stats.blobs_deleted == len(DELETED_UNTAGGED)
    # The referrers index still lists the kept signatures, and no longer the deleted one.
    referrers = ReferrersIndex(driver)
    m1, m2, ma = (Digest.parse(content.digests[label]) for label in ("M1", "M2", "MA"))
    assert [d["digest"] for d in await referrers.list_referrers("app", m1)] == [
        content.digests["S1"]
    ]
    assert [d["digest"] for d in await referrers.list_referrers("app", ma)] == [
        content.digests["SA"]
    ]
    assert await referrers.list_referrers("app", m2) == []
    registry = await serve(start_registry, root)
    await assert_pullable(registry.url, content, DELETED_UNTAGGED)
    # The referrers API still answers for the kept image.
    import treq

    response = await treq.get(f"{registry.url}/v2/app/referrers/{m1}")
    listing = await response.json()
    assert [d["digest"] for d in listing["manifests"]] == [content.digests["S1"]]


@pytest_twisted.ensureDeferred
async def test_dry_run_deletes_nothing(driver: FilesystemDriver, root: Path) -> None:
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    revisions = revision_digests(root, "app")
    collector = await gc(driver, delete_untagged=True, dry_run=True)
    assert blob_digests(root) == before
    assert revision_digests(root, "app") == revisions
    assert content.labels(set(collector.candidates)) == DELETED_UNTAGGED
    stats = collector.stats
    assert stats.blobs_to_delete == len(DELETED_UNTAGGED)
    assert stats.bytes_to_free == sum(len(content.data[label]) for label in DELETED_UNTAGGED)
    assert stats.revisions_to_delete == 4
    assert stats.blobs_deleted == stats.revisions_deleted == stats.bytes_freed == 0


@pytest_twisted.ensureDeferred
async def test_everything_young_is_kept(driver: FilesystemDriver, root: Path) -> None:
    """Freshly pushed content: nothing is old enough, whatever the mode."""
    await scenario.build(*scenario.store_pushers(driver))
    before = blob_digests(root)
    collector = await gc(driver, delete_untagged=True)
    assert blob_digests(root) == before
    assert collector.stats.blobs_deleted == 0
    assert collector.stats.revisions_deleted == 0


@pytest_twisted.ensureDeferred
async def test_grace_zero_deletes_young_orphans(driver: FilesystemDriver, root: Path) -> None:
    content = await scenario.build_aged(driver, root)
    collector = await gc(driver, grace=0.0)
    assert content.labels(set(collector.candidates)) == {"ORPHAN_OLD", "ORPHAN_NEW"}


@pytest_twisted.ensureDeferred
async def test_push_in_progress_survives(
    driver: FilesystemDriver, root: Path, start_registry: object
) -> None:
    """
    A push whose blobs are uploaded but whose manifest is not yet put: gc (even with
    --delete-untagged) keeps the fresh blobs and the upload in progress, and the push completes.
    """
    content = await scenario.build_aged(driver, root)
    blobs = BlobStore(driver)
    uploads = UploadStore(driver, blobs)
    config, layer = b'{"architecture":"amd64"}', b"fresh layer " * 100
    for data in (config, layer):
        upload_id = await uploads.start("app")
        appender = await uploads.open("app", upload_id)
        await written(appender.write(data))
        await uploads.commit(appender, Digest.parse(scenario.sha256(data)))
    # A second layer still uploading, and ORPHAN_OLD uploaded again by this push: its data is
    # old, but the push wrote a fresh link.
    pending = await uploads.start("app")
    appender = await uploads.open("app", pending)
    await written(appender.write(b"half a layer"))
    await appender.close()
    await driver.put_content(
        layout.layer_link("app", Digest.parse(content.digests["ORPHAN_OLD"])),
        content.digests["ORPHAN_OLD"].encode(),
    )
    collector = await gc(driver, delete_untagged=True)
    assert content.labels(set(collector.candidates)) == DELETED_UNTAGGED - {"ORPHAN_OLD"}
    assert await uploads.exists("app", pending)
    assert await uploads.size("app", pending) == len(b"half a layer")
    body = scenario.image(config, [layer, content.data["ORPHAN_OLD"]])
    store = ManifestStore(driver, blobs)
    await store.put("app", "fresh", body, mt.OCI_IMAGE_MANIFEST)
    registry = await serve(start_registry, root)
    import treq

    response = await treq.get(
        f"{registry.url}/v2/app/manifests/fresh", headers={"Accept": mt.OCI_IMAGE_MANIFEST}
    )
    assert response.code == 200
    assert await response.content() == body
    for data in (config, layer, content.data["ORPHAN_OLD"]):
        response = await treq.get(f"{registry.url}/v2/app/blobs/{scenario.sha256(data)}")
        assert response.code == 200
        assert await response.content() == data


@pytest_twisted.ensureDeferred
async def test_unparseable_manifest_keeps_what_it_mentions(
    driver: FilesystemDriver, root: Path
) -> None:
    """A damaged (or schema1) revision: kept with every digest in it, even untagged."""
    content = await scenario.build_aged(driver, root)
    blobs = BlobStore(driver)
    layer = content.data["ORPHAN_OLD"]
    broken = (
        b'{"schemaVersion": 1, "fsLayers": [{"blobSum": "%s"}], ' % scenario.sha256(layer).encode()
    )
    digest = await blobs.put_small(broken)
    await driver.put_content(layout.revision_link("app", digest), str(digest).encode())
    age_everything(root)
    collector = await gc(driver, delete_untagged=True)
    assert content.digests["ORPHAN_OLD"] not in collector.candidates
    assert str(digest) not in collector.candidates
    assert str(digest) in revision_digests(root, "app")
    assert collector.stats.manifests_unparseable == 1
    assert manifest_refs(broken).parsed is False


@pytest_twisted.ensureDeferred
async def test_tag_moved_during_gc_is_kept(driver: FilesystemDriver, root: Path) -> None:
    """The last look before deleting sees a tag put on an untagged manifest meanwhile."""
    content = await scenario.build_aged(driver, root)
    collector = GarbageCollector(driver, GCOptions(delete_untagged=True), time.time())
    await collector.mark()
    await collector.examine_blobs()
    store = ManifestStore(driver, BlobStore(driver))
    await store.put("app", "revived", content.data["M2"], mt.OCI_IMAGE_MANIFEST)
    await collector.recheck()
    await collector.sweep()
    gone = content.labels(set(collector.candidates))
    assert gone == DELETED_UNTAGGED - {"M2", "C2", "L2", "S2", "Ls2"}
    assert "M2" in content.labels(revision_digests(root, "app"))


@pytest_twisted.ensureDeferred
async def test_missing_root_aborts(tmp_path: Path, thread_pool: ThreadPool) -> None:
    driver = FilesystemDriver(str(tmp_path / "nothing"), reactor, thread_pool)
    with pytest.raises(GCAborted, match="no registry data"):
        await gc(driver)


class FailingReads(FilesystemDriver):
    """A disk that fails to read one file (an I/O error, not a missing file)."""

    failing: str = ""

    async def get_content(self, path: str) -> bytes:
        if path == self.failing:
            raise StorageError(f"I/O error reading {path}")
        return await super().get_content(path)


@pytest_twisted.ensureDeferred
async def test_storage_error_aborts_before_deleting(driver: FilesystemDriver, root: Path) -> None:
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    failing = FailingReads(str(root), reactor, driver._threadpool)
    failing.failing = layout.blob_data(Digest.parse(content.digests["M3"]))
    with pytest.raises(GCAborted, match="I/O error"):
        await gc(failing, delete_untagged=True)
    assert blob_digests(root) == before


class FailingSecondStat(FilesystemDriver):
    """Storage that stops answering for one file once it was looked at (an S3 outage that
    begins during the sweep)."""

    failing: str = ""
    seen: int = 0

    async def stat(self, path: str) -> Any:
        if path == self.failing:
            self.seen += 1
            if self.seen > 1:
                raise StorageError(f"gave no answer within 10s (HEAD {path})")
        return await super().stat(path)


@pytest_twisted.ensureDeferred
async def test_a_storage_error_in_the_sweep_is_counted_and_the_sweep_goes_on(
    driver: FilesystemDriver, root: Path
) -> None:
    content = await scenario.build_aged(driver, root)
    failing = FailingSecondStat(str(root), reactor, driver._threadpool)
    doomed = content.digests["C2"]
    failing.failing = layout.blob_data(Digest.parse(doomed))
    collector = await gc(failing, delete_untagged=True)
    assert len(collector.stats.errors) == 1
    assert doomed in collector.stats.errors[0] and "gave no answer" in collector.stats.errors[0]
    assert content.labels(blob_digests(root)) & DELETED_UNTAGGED == {"C2"}  # the others went


class RefusedRevisionDelete(FilesystemDriver):
    """A disk that refuses to delete one revision's folder (made immutable, or read-only for
    the collector), and once it refused, optionally fails to read one file (an I/O error)."""

    refused: str = ""
    unreadable: str = ""
    refusing: bool = False

    async def delete(self, path: str) -> None:
        if path == self.refused:
            self.refusing = True
            raise StorageError(f"deleting {path}: Operation not permitted")
        await super().delete(path)

    async def get_content(self, path: str) -> bytes:
        if self.refusing and path == self.unreadable:
            raise StorageError(f"reading {path}: Input/output error")
        return await super().get_content(path)


def refusing(driver: FilesystemDriver, root: Path, digest: str) -> RefusedRevisionDelete:
    failing = RefusedRevisionDelete(str(root), reactor, driver._threadpool)
    failing.refused = layout.revision_dir("app", Digest.parse(digest))
    return failing


@pytest_twisted.ensureDeferred
async def test_a_revision_that_cannot_be_deleted_keeps_what_it_references(
    driver: FilesystemDriver, root: Path, start_registry: object
) -> None:
    """
    The delete of untagged M2's folder fails: M2 stays, so its manifest blob, config and
    layers stay too (they were swept, and M2 answered by digest with a manifest whose blobs
    were gone); an error for it, every other untagged manifest and blob goes.
    """
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    m2 = content.digests["M2"]
    failing = refusing(driver, root, m2)
    collector = await gc(failing, delete_untagged=True)
    stats = collector.stats
    assert stats.errors == [
        f"app: cannot delete revision {m2}: deleting {failing.refused}: Operation not permitted"
    ]
    kept = {"M2", "C2", "L2"}  # SHARED: kept by other's M3 anyway
    assert content.labels(before - blob_digests(root)) == DELETED_UNTAGGED - kept
    assert content.labels(set(collector.candidates)) == DELETED_UNTAGGED - kept
    assert {content.label(d) for _, d in collector.doomed_revisions} == UNTAGGED - {"M2"}
    assert content.labels(revision_digests(root, "app")) == {"M1", "S1", "I", "MA", "MB", "SA"} | {
        "M2"
    }
    assert (stats.revisions_to_delete, stats.revisions_deleted) == (3, 3)
    assert (stats.blobs_to_delete, stats.blobs_deleted) == (7, 7)
    # Its ``doomed`` written before the failed delete is taken back: a push of M2 later in
    # this run is not refused for a deletion that did not happen.
    assert not (root / gcguard.revision_doomed_path("app", Digest.parse(m2))).exists()
    registry = await serve(start_registry, root)
    await assert_pullable(registry.url, content, DELETED_UNTAGGED - kept)


@pytest_twisted.ensureDeferred
async def test_an_index_that_cannot_be_deleted_keeps_its_children(
    driver: FilesystemDriver, root: Path, start_registry: object
) -> None:
    """
    Untagged I2 (child MC, whose digest sorts first) cannot be deleted: MC's revision is not
    deleted before it (an index goes before its children), and both keep their blobs.
    """
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    assert content.digests["MC"] < content.digests["I2"]
    collector = await gc(refusing(driver, root, content.digests["I2"]), delete_untagged=True)
    assert len(collector.stats.errors) == 1
    assert f"cannot delete revision {content.digests['I2']}: " in collector.stats.errors[0]
    kept = {"I2", "MC", "CC", "LC"}
    assert content.labels(before - blob_digests(root)) == DELETED_UNTAGGED - kept
    assert {content.label(d) for _, d in collector.doomed_revisions} == {"M2", "S2"}
    assert {"I2", "MC"} <= content.labels(revision_digests(root, "app"))
    assert collector.stats.revisions_deleted == 2
    registry = await serve(start_registry, root)
    await assert_pullable(registry.url, content, DELETED_UNTAGGED - kept)


@pytest_twisted.ensureDeferred
async def test_a_revision_kept_by_a_failure_whose_references_cannot_be_read_stops_the_sweep(
    driver: FilesystemDriver, root: Path
) -> None:
    """M2 cannot be deleted, then its manifest cannot be read: what it references is not
    known, so no blob is deleted by this run (the revisions deleted took none along)."""
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    m2 = content.digests["M2"]
    failing = refusing(driver, root, m2)
    failing.unreadable = layout.blob_data(Digest.parse(m2))
    collector = await gc(failing, delete_untagged=True)
    stats = collector.stats
    assert stats.errors == [
        f"app: cannot delete revision {m2}: deleting {failing.refused}: Operation not permitted",
        f"app: cannot read what manifest {m2} references: StorageError: reading "
        f"{failing.unreadable}: Input/output error; no blob deleted in this run",
    ]
    assert blob_digests(root) == before
    assert stats.blobs_deleted == 0
    assert m2 in revision_digests(root, "app")


@pytest_twisted.ensureDeferred
async def test_memory_driver_and_blob_shared_across_repositories() -> None:
    """Over the in-memory driver (its mtimes are write times): grace 0, untagged mode."""
    driver = MemoryDriver()
    content = await scenario.build(*scenario.store_pushers(driver))
    collector = await gc(driver, delete_untagged=True, grace=0.0)
    assert content.labels(set(collector.candidates)) == DELETED_UNTAGGED | {"ORPHAN_NEW"}
    assert await BlobStore(driver).exists(Digest.parse(content.digests["SHARED"])) is not None


def test_options_are_checked() -> None:
    """No run with no request in flight (it would never finish) or a grace in the future."""
    for bad in ({"concurrency": 0}, {"concurrency": -3}, {"grace": -1.0}):
        with pytest.raises(ValueError):
            GCOptions(**bad)  # type: ignore[arg-type]
    assert GCOptions(concurrency=1, grace=0.0).concurrency == 1


@attrs.define(slots=False)
class DeleteCalls(CountingDriver):
    """The counting driver, counting delete requests too (those that fail included)."""

    requested: int = 0

    async def delete(self, path: str) -> None:
        self.requested += 1
        await super().delete(path)


@pytest_twisted.ensureDeferred
async def test_delete_untagged_reads_each_tag_history_once(driver: FilesystemDriver) -> None:
    """
    Many tags, each moved twice, and manifests never tagged: the untagged go, with exactly
    their tag-history entries; the storage calls grow with tags plus manifests, not with
    their product.
    """
    blobs = BlobStore(driver)
    manifests = ManifestStore(driver, blobs)
    tags, moves, never_tagged = 12, 3, 10

    async def push(label: str, reference: str | None) -> str:
        config, layer = f"config {label}".encode(), f"layer {label}".encode()
        for data in (config, layer):
            await blobs.link("app", await blobs.put_small(data))
        body = scenario.image(config, [layer])
        await manifests.put("app", reference or scenario.sha256(body), body, mt.OCI_IMAGE_MANIFEST)
        return scenario.sha256(body)

    history: dict[str, list[str]] = {}
    for tag in (f"t{i}" for i in range(tags)):
        history[tag] = [await push(f"{tag}.{move}", tag) for move in range(moves)]
    loose = {await push(f"loose{i}", None) for i in range(never_tagged)}
    current = {pushed[-1] for pushed in history.values()}
    untagged = {d for pushed in history.values() for d in pushed[:-1]} | loose

    for tag, pushed in history.items():
        index = f"{layout.tag_dir('app', tag)}/index"
        assert {str(d) for d in await digest_folders(driver, index)} == set(pushed)

    counting = DeleteCalls(driver)
    options = GCOptions(delete_untagged=True)
    collector = await collect_garbage(counting, options, time.time() + 2 * scenario.HOUR)
    stats = collector.stats
    assert stats.errors == []
    assert {d for _, d in collector.doomed_revisions} == untagged
    assert stats.revisions_deleted == len(untagged)
    assert stats.blobs_deleted == 3 * len(untagged)  # manifest, config, layer
    assert {str(d) for d in await digest_folders(driver, layout.revisions_dir("app"))} == current
    for tag, pushed in history.items():
        index = f"{layout.tag_dir('app', tag)}/index"
        assert [str(d) for d in await digest_folders(driver, index)] == [pushed[-1]], tag
        assert await manifests.get("app", tag) is not None
    # One delete per revision, per tag-history entry of a deleted revision, per blob, and
    # the run's own announcement (registry.storage.gcguard) at its end: none for the
    # (tag, revision) pairs that have no entry.
    moved_away = tags * (moves - 1)
    assert counting.requested == len(untagged) + moved_away + stats.blobs_deleted + 1


@pytest_twisted.ensureDeferred
async def test_a_run_stopped_before_it_counted_keeps_the_last_counted_size() -> None:
    """The storage page and the txregistry_gc_last_run_*_stored gauges show the registry's
    size as the last run that looked at every blob counted it: a run stopped in its mark (a
    signal, an S3 outage) is recorded with its error, not with a size of 0 B."""
    driver = MemoryDriver()
    counted = GCStats(phase="done", blobs_examined=70, bytes_examined=4900)
    await gcstatus.record(driver, GCOptions(), counted, 100.0, 110.0)
    stopped = GCStats(phase="mark", errors=["the run stopped: stopped by a signal"])
    await gcstatus.record(driver, GCOptions(), stopped, 200.0, 201.0)
    status = await gcstatus.last(driver)
    assert status is not None
    assert (status["finished"], status["errors"]) == (201.0, 1)
    assert (status["blobs_stored"], status["bytes_stored"], status["stored_as_of"]) == (
        70,
        4900,
        110.0,
    )
