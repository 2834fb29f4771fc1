"""
A push that lands while `txregistry gc` sweeps (after its last look at the repositories) and
refers to a blob the run is about to delete: the blob is kept and the push gets its 201, or
the push fails with an error the client acts on; never a 201 for a blob that then goes.

The collector runs in this process over the same folder a real registry serves; a driver
wrapper holds it at one step of a blob's deletion while the test pushes over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool
from zope.interface import alsoProvides

from registry.api import mediatypes as mt
from registry.api.digests import Digest
from registry.ops.gc import GarbageCollector, GCBusy, GCOptions
from registry.storage import gcguard, layout
from registry.storage.driver import IConditionalWrites
from registry.storage.filesystem import FilesystemDriver
from tests.e2e.client import push_blob, sha256
from tests.e2e.conftest import start_registry
from tests.e2e.harness import InProcessRegistry
from tests.manifests import samples

__all__ = ["start_registry"]

LAYER = b"an old layer that nothing refers to yet " * 64


class HeldDriver:
    """The collector's driver, held at the first call ``at(method, path)`` picks."""

    def __init__(self, inner: FilesystemDriver, at: Callable[[str, str], bool]) -> None:
        self._inner = inner
        self._at = at
        self.reached: Deferred[None] = Deferred()
        self.release: Deferred[None] = Deferred()
        if IConditionalWrites.providedBy(inner):
            alsoProvides(self, IConditionalWrites)  # the run claims its marker as for real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # zope's adaptation hooks (__conform__): not a storage call
            raise AttributeError(name)
        method = getattr(self._inner, name)
        if not callable(method):
            return method

        async def call(path: str, *args: Any, **kwargs: Any) -> Any:
            if not self.reached.called and self._at(name, path):
                self.reached.callback(None)
                await self.release
            return await method(path, *args, **kwargs)

        return call


def age(root: Path, seconds: float = 7200) -> None:
    """Everything stored looks written ``seconds`` ago (older than gc's grace)."""
    then = time.time() - seconds
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            # The registry may remove a file meanwhile (an upload's last traces): gone, it
            # needs no age.
            with contextlib.suppress(FileNotFoundError):
                os.utime(os.path.join(folder, entry), (then, then), follow_symlinks=False)


async def serve(start: Any, root: Path) -> InProcessRegistry:
    registry: InProcessRegistry = await start({"storage": {"rootdirectory": str(root)}})
    return registry


async def put_manifest(url: str, name: str, tag: str, body: bytes) -> tuple[int, Any]:
    response = await treq.put(
        f"{url}/v2/{name}/manifests/{tag}",
        data=body,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    text = await response.content()
    return response.code, json.loads(text) if text else None


async def layer_pulls(url: str, name: str) -> int:
    response = await treq.get(f"{url}/v2/{name}/blobs/{sha256(LAYER)}")
    body = await response.content()
    if response.code == 200:
        assert body == LAYER
    return int(response.code)


def collector(driver: Any) -> GarbageCollector:
    return GarbageCollector(driver, GCOptions(grace=3600), time.time())


def at_doom(method: str, path: str) -> bool:
    """Held after the last look at the repositories, before a blob is marked doomed."""
    return method == "put_content" and path.endswith("/" + gcguard.DOOMED)


def at_last_look(method: str, path: str) -> bool:
    """Held once the blob is doomed, before gc looks for a writer's touch."""
    return method == "stat" and path.endswith("/" + gcguard.TOUCHED)


def run_held(
    root: Path, thread_pool: ThreadPool, at: Callable[[str, str], bool]
) -> tuple[HeldDriver, Deferred[Any]]:
    """A gc run over ``root`` that will be held at the first call ``at`` picks."""
    held = HeldDriver(FilesystemDriver(str(root), reactor, thread_pool), at)
    return held, Deferred.fromCoroutine(collector(held).run())


async def held_at(held: HeldDriver, run: Deferred[Any]) -> None:
    """Until the collector is held; a run that ends first never reached the step (fails)."""
    await DeferredList([held.reached, run], fireOnOneCallback=True, fireOnOneErrback=True)
    assert held.reached.called, "the collector ended without reaching the held step"


async def _old_layer(start_registry: Any, root: Path) -> InProcessRegistry:
    registry = await serve(start_registry, root)
    await push_blob(registry.url, "k/race", LAYER)  # uploaded, never referred to
    age(root)
    return registry


@pytest_twisted.ensureDeferred
async def test_a_manifest_put_before_the_blob_is_doomed_keeps_it(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    root = tmp_path / "root"
    registry = await _old_layer(start_registry, root)
    held, run = run_held(root, thread_pool, at_doom)
    await held_at(held, run)  # after the last look; about to doom the layer
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(registry.url, "k/race", config)
    body = samples.oci_image(config=config, layers=(LAYER,))
    assert (await put_manifest(registry.url, "k/race", "r1", body))[0] == 201
    held.release.callback(None)
    stats = await run
    assert stats.blobs_deleted == 0
    # Counted as kept (young), not as still to delete: the summary's "in use" adds up.
    assert (stats.blobs_to_delete, stats.blobs_young) == (0, 1)
    assert await layer_pulls(registry.url, "k/race") == 200
    assert not (root / "docker/registry/v2" / gcguard.RUNNING.split("v2/", 1)[1]).exists()


@pytest_twisted.ensureDeferred
async def test_a_manifest_put_after_the_blob_is_doomed_fails_in_words_then_succeeds(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    root = tmp_path / "root"
    registry = await _old_layer(start_registry, root)
    held, run = run_held(root, thread_pool, at_last_look)
    await held_at(held, run)  # doomed written, its last look at `touched` not taken yet
    config = b'{"architecture":"arm64","os":"linux"}'
    await push_blob(registry.url, "k/race", config)
    body = samples.oci_image(config=config, layers=(LAYER,))
    status, answer = await put_manifest(registry.url, "k/race", "r2", body)
    assert status == 400
    [error] = answer["errors"]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert error["detail"] == {"digest": sha256(LAYER), "reason": "deleted by a garbage collection"}
    response = await treq.get(f"{registry.url}/v2/k/race/tags/list")
    assert json.loads(await response.content())["tags"] == []  # no tag moved
    # ... and the revision it added is taken back: nothing points at a missing blob.
    response = await treq.get(f"{registry.url}/v2/k/race/manifests/{sha256(body)}")
    await response.content()
    assert response.code == 404
    held.release.callback(None)
    stats = await run
    assert stats.blobs_deleted == 0  # the push touched it: kept
    assert (await put_manifest(registry.url, "k/race", "r2", body))[0] == 201
    assert await layer_pulls(registry.url, "k/race") == 200


@pytest_twisted.ensureDeferred
async def test_an_upload_of_stored_content_during_the_sweep_keeps_it(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """Uploading bytes that are stored already writes only a link: not enough alone."""
    root = tmp_path / "root"
    registry = await _old_layer(start_registry, root)
    held, run = run_held(root, thread_pool, at_doom)
    await held_at(held, run)
    await push_blob(registry.url, "other/repo", LAYER)  # 201
    held.release.callback(None)
    stats = await run
    assert stats.blobs_deleted == 0
    assert await layer_pulls(registry.url, "other/repo") == 200


@pytest_twisted.ensureDeferred
async def test_a_mount_of_a_doomed_blob_becomes_a_plain_upload(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    root = tmp_path / "root"
    registry = await _old_layer(start_registry, root)
    held, run = run_held(root, thread_pool, at_last_look)
    await held_at(held, run)
    response = await treq.post(
        f"{registry.url}/v2/mounted/app/blobs/uploads/?mount={sha256(LAYER)}&from=k/race"
    )
    await response.content()
    assert response.code == 202  # not 201: the client uploads the bytes
    held.release.callback(None)
    await run


@pytest_twisted.ensureDeferred
async def test_a_doomed_marker_a_killed_run_left_does_not_fail_later_pushes(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """gc killed between ``doomed`` and the delete leaves the marker by a blob still in use;
    the next run must not make every push naming that blob fail."""
    root = tmp_path / "root"
    registry = await serve(start_registry, root)
    config = b'{"architecture":"amd64","os":"linux","n":1}'
    await push_blob(registry.url, "k/used", config)
    await push_blob(registry.url, "k/used", LAYER)
    body = samples.oci_image(config=config, layers=(LAYER,))
    assert (await put_manifest(registry.url, "k/used", "v1", body))[0] == 201
    await push_blob(registry.url, "k/orphans", b"an orphan, for the sweep to have work")
    blob_folder = root / "docker/registry/v2/blobs/sha256" / sha256(LAYER)[7:9] / sha256(LAYER)[7:]
    (blob_folder / gcguard.DOOMED).write_bytes(b"")  # left by a killed run
    age(root)
    held, run = run_held(root, thread_pool, at_doom)
    await held_at(held, run)  # the run is on, about to doom the orphan
    other = samples.oci_image(config=config, layers=(LAYER,), annotations={"n": "2"})
    assert (await put_manifest(registry.url, "k/used", "v2", other))[0] == 201
    held.release.callback(None)
    stats = await run
    assert stats.blobs_deleted == 1
    assert await layer_pulls(registry.url, "k/used") == 200


def marker_file(root: Path) -> Path:
    return root / "docker/registry/v2" / gcguard.RUNNING.split("v2/", 1)[1]


@pytest_twisted.ensureDeferred
async def test_a_second_run_is_refused_while_one_sweeps_and_pushes_stay_protected(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """
    Two runs at once: the second one ending used to remove the first one's marker, so a push
    during the first one's sweep wrote no ``touched`` and got a 201 for a layer then deleted.
    """
    root = tmp_path / "root"
    registry = await _old_layer(start_registry, root)
    held, run = run_held(root, thread_pool, at_doom)
    await held_at(held, run)  # run A: after its last look, about to doom the layer
    marker = marker_file(root).read_bytes()
    second = FilesystemDriver(str(root), reactor, thread_pool)
    with pytest.raises(GCBusy, match=r"^another gc run is in progress \(run "):
        await collector(second).run()
    assert marker_file(root).read_bytes() == marker  # A's, untouched by B
    # A dry run writes no marker: it may run alongside.
    dry = GarbageCollector(second, GCOptions(grace=3600, dry_run=True), time.time())
    assert (await dry.run()).blobs_to_delete == 1
    assert marker_file(root).read_bytes() == marker
    config = b'{"architecture":"amd64","os":"linux","two":1}'
    await push_blob(registry.url, "k/race", config)
    body = samples.oci_image(config=config, layers=(LAYER,))
    assert (await put_manifest(registry.url, "k/race", "v1", body))[0] == 201
    held.release.callback(None)
    stats = await run
    assert stats.blobs_deleted == 0
    assert await layer_pulls(registry.url, "k/race") == 200
    assert not marker_file(root).exists()


def gone_pid() -> int:
    """The pid of a process of this host that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_marker(root: Path, pid: int, renewed_ago: float, host: str | None = None) -> None:
    path = marker_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time() - renewed_ago - 5
    holder = {"started": int(started), "run": "deadbeef", "host": host or socket.gethostname()}
    path.write_text(json.dumps({**holder, "pid": pid}) + "\n")
    then = time.time() - renewed_ago
    os.utime(path, (then, then))


# A gc run's marker claimed by a process of its own, which then waits to be killed.
HOLD_THE_MARKER = """
import sys, time
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from registry.storage.filesystem import FilesystemDriver
from registry.storage.gcguard import RunMarker

async def hold(reactor):
    pool = ThreadPool()
    pool.start()
    await RunMarker(FilesystemDriver(sys.argv[1], reactor, pool), time.time()).claim()
    print("claimed", flush=True)
    await Deferred()

task.react(lambda reactor: Deferred.fromCoroutine(hold(reactor)))
"""


def marker_of_a_killed_run(root: Path) -> int:
    """The marker a gc run killed with SIGKILL left in ``root`` (its pid, now gone)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_MARKER, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "claimed\n"
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(marker_file(root).read_text())["pid"] == holder.pid
    return holder.pid


@pytest_twisted.ensureDeferred
async def test_pushes_ignore_the_doomed_files_of_a_run_killed_on_this_host(
    start_registry: Any, tmp_path: Path
) -> None:
    """
    gc killed with kill -9 between a blob's ``doomed`` and its delete: the blob stays, and a
    push naming it must not fail for as long as the marker is younger than `STALE` (it failed
    for 10 minutes: the blob answered HEAD 200, so a client pushing again skipped the upload
    and failed again).  The next gc run takes such a marker over at once; pushes heed it as
    little.  The same marker from another host counts until it is stale.
    """
    root = tmp_path / "root"
    registry = await serve(start_registry, root)
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(registry.url, "k/app", config)
    await push_blob(registry.url, "k/app", LAYER)
    marker_of_a_killed_run(root)
    blob_folder = root / "docker/registry/v2/blobs/sha256" / sha256(LAYER)[7:9] / sha256(LAYER)[7:]
    (blob_folder / gcguard.DOOMED).write_bytes(b"")  # written by that run before it was killed
    await push_blob(registry.url, "k/app", LAYER)  # its bytes again: 201
    body = samples.oci_image(config=config, layers=(LAYER,))
    assert (await put_manifest(registry.url, "k/app", "v1", body))[0] == 201
    assert await layer_pulls(registry.url, "k/app") == 200

    # The same run on another host: alive for all this host knows, until its marker is stale.
    marker = json.loads(marker_file(root).read_text())
    marker_file(root).write_text(json.dumps({**marker, "host": "elsewhere"}) + "\n")
    other = samples.oci_image(config=config, layers=(LAYER,), annotations={"n": "2"})
    status, answer = await put_manifest(registry.url, "k/app", "v2", other)
    assert status == 400, answer
    assert answer["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_a_marker_left_by_a_killed_run_is_taken_over(
    tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """kill -9 leaves the marker: a dead pid of this host at once, any other once stale."""
    root = tmp_path / "root"
    (root / "docker/registry/v2/repositories").mkdir(parents=True)
    driver = FilesystemDriver(str(root), reactor, thread_pool)
    cases = [
        (gone_pid(), 1.0, None),  # killed on this host: taken over at once
        (os.getpid(), gcguard.STALE + 60, "elsewhere"),  # not renewed for STALE: stopped
    ]
    for pid, renewed_ago, host in cases:
        _write_marker(root, pid, renewed_ago, host)
        await collector(driver).run()
        assert not marker_file(root).exists(), (pid, host)
    # Live: another host's fresh marker, and a running process of this host.
    for pid, host in ((12345, "elsewhere"), (os.getppid(), None)):
        _write_marker(root, pid, 1.0, host)
        with pytest.raises(GCBusy):
            await collector(driver).run()
        assert marker_file(root).exists()
    # A marker an earlier version wrote (a bare start time) counts until it is stale.
    marker_file(root).write_text(f"{int(time.time())}\n")
    with pytest.raises(GCBusy, match="an unknown run"):
        await collector(driver).run()


@pytest_twisted.ensureDeferred
async def test_a_run_removes_only_its_own_marker(tmp_path: Path, thread_pool: ThreadPool) -> None:
    root = tmp_path / "root"
    root.mkdir()
    driver = FilesystemDriver(str(root), reactor, thread_pool)
    mine = gcguard.RunMarker(driver, time.time())
    await mine.claim()
    await mine.renew()
    # Taken over meanwhile (this run looked stopped): the other run's marker now.
    _write_marker(root, 12345, 1.0, "elsewhere")
    with pytest.raises(gcguard.MarkerLost):
        await mine.renew()
    await mine.release()
    assert json.loads(marker_file(root).read_text())["host"] == "elsewhere"


def at_revision_delete(method: str, path: str) -> bool:
    """Held after a revision's doomed and last look, before its folder is deleted."""
    return method == "delete" and "/_manifests/revisions/sha256/" in path


def at_revision_doom(method: str, path: str) -> bool:
    """Held before a revision is marked doomed (nothing decided yet)."""
    return method == "put_content" and "/_manifests/revisions/" in path


def run_untagged(
    root: Path, thread_pool: ThreadPool, at: Callable[[str, str], bool]
) -> tuple[HeldDriver, Deferred[Any]]:
    held = HeldDriver(FilesystemDriver(str(root), reactor, thread_pool), at)
    options = GCOptions(grace=3600, delete_untagged=True)
    return held, Deferred.fromCoroutine(GarbageCollector(held, options, time.time()).run())


async def _untagged_image(
    start_registry: Any, root: Path, name: str
) -> tuple[InProcessRegistry, bytes]:
    """An image pushed by digest only, older than the grace: --delete-untagged's to delete."""
    registry = await serve(start_registry, root)
    config = b'{"architecture":"amd64","os":"linux","untagged":1}'
    await push_blob(registry.url, name, config)
    await push_blob(registry.url, name, LAYER)
    body = samples.oci_image(config=config, layers=(LAYER,))
    assert (await put_manifest(registry.url, name, sha256(body), body))[0] == 201
    age(root)
    return registry, body


async def pull_status(url: str, name: str, reference: str) -> int:
    response = await treq.get(
        f"{url}/v2/{name}/manifests/{reference}", headers={"Accept": mt.OCI_IMAGE_MANIFEST}
    )
    await response.content()
    return int(response.code)


@pytest_twisted.ensureDeferred
async def test_a_tag_put_after_the_revision_is_doomed_fails_in_words_then_succeeds(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """
    The collector looked (untagged, old) and is about to delete the revision's folder: a
    put by tag rewriting its link there was acknowledged, and then the folder (new link
    included) went, the tag naming a manifest the repository no longer had.
    """
    root = tmp_path / "root"
    registry, body = await _untagged_image(start_registry, root, "k/untagged")
    held, run = run_untagged(root, thread_pool, at_revision_delete)
    await held_at(held, run)
    status, answer = await put_manifest(registry.url, "k/untagged", "t1", body)
    assert status == 400, answer
    [error] = answer["errors"]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert error["detail"] == {"digest": sha256(body), "reason": "deleted by a garbage collection"}
    response = await treq.get(f"{registry.url}/v2/k/untagged/tags/list")
    assert json.loads(await response.content())["tags"] == []  # no tag moved
    held.release.callback(None)
    stats = await run
    assert stats.revisions_deleted == 1
    assert stats.blobs_deleted == 0  # the put touched them: kept
    # The client pushes again: its manifest is back, the tag pulls.
    assert (await put_manifest(registry.url, "k/untagged", "t1", body))[0] == 201
    assert await pull_status(registry.url, "k/untagged", "t1") == 200
    assert await layer_pulls(registry.url, "k/untagged") == 200


@pytest_twisted.ensureDeferred
async def test_a_tag_put_before_the_revision_is_doomed_keeps_it(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    root = tmp_path / "root"
    registry, body = await _untagged_image(start_registry, root, "k/untagged")
    held, run = run_untagged(root, thread_pool, at_revision_doom)
    await held_at(held, run)
    assert (await put_manifest(registry.url, "k/untagged", "t1", body))[0] == 201
    held.release.callback(None)
    stats = await run
    assert (stats.revisions_deleted, stats.blobs_deleted) == (0, 0)
    assert await pull_status(registry.url, "k/untagged", "t1") == 200
    revision = root / "docker/registry/v2/repositories/k/untagged/_manifests/revisions/sha256"
    assert not (revision / sha256(body)[7:] / gcguard.DOOMED).exists()


async def _put_index(registry: InProcessRegistry, child: bytes) -> Any:
    """PUT an index naming ``child`` as k/multi:latest; the response."""
    index = samples.oci_index([child], archs=("amd64",))
    return await treq.put(
        f"{registry.url}/v2/k/multi/manifests/latest",
        data=index,
        headers={"Content-Type": mt.OCI_IMAGE_INDEX},
    )


@pytest_twisted.ensureDeferred
async def test_an_index_put_naming_a_doomed_child_fails_in_words(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    root = tmp_path / "root"
    registry, child = await _untagged_image(start_registry, root, "k/multi")
    held, run = run_untagged(root, thread_pool, at_revision_delete)
    await held_at(held, run)
    response = await _put_index(registry, child)
    text = await response.content()
    assert response.code == 400, text
    assert json.loads(text)["errors"][0]["detail"]["digest"] == sha256(child)
    held.release.callback(None)
    await run
    assert await pull_status(registry.url, "k/multi", "latest") == 404  # never acknowledged


@pytest_twisted.ensureDeferred
async def test_an_index_put_before_its_child_is_doomed_keeps_the_childs_blobs(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """
    An index put lands after the last look but before the collector dooms its (untagged)
    child: the child is found rewritten and kept, and so must be its layer and config, which
    the index put does not touch itself (it touches its children's manifest blobs only).
    They were swept: the index was acknowledged and its image no longer pulled.
    """
    root = tmp_path / "root"
    registry, child = await _untagged_image(start_registry, root, "k/multi")
    held, run = run_untagged(root, thread_pool, at_revision_doom)
    await held_at(held, run)
    response = await _put_index(registry, child)
    assert response.code == 201, await response.content()
    held.release.callback(None)
    stats = await run
    assert (stats.revisions_deleted, stats.blobs_deleted) == (0, 0)
    assert await pull_status(registry.url, "k/multi", sha256(child)) == 200
    assert await layer_pulls(registry.url, "k/multi") == 200


@pytest_twisted.ensureDeferred
async def test_a_child_deleted_before_the_puts_check_counts_as_being_deleted(
    tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """The child's ``doomed`` goes with its folder: an index put that saw the child before
    the collector deleted it, and looks for ``doomed`` after, finds none; it must find the
    child gone instead (it was acknowledged, naming a manifest the repository had lost)."""
    driver = FilesystemDriver(str(tmp_path), reactor, thread_pool)
    marker = {"started": time.time(), "run": "r", "host": socket.gethostname(), "pid": 1}
    await driver.put_content(gcguard.RUNNING, json.dumps(marker).encode())
    kept, gone = Digest.parse(sha256(b"kept")), Digest.parse(sha256(b"gone"))
    await driver.put_content(layout.revision_link("k/app", kept), str(kept).encode())
    guard = gcguard.GcGuard(driver)
    assert await guard.protect_manifest("k/app", [], [kept, gone]) == ([], [gone])


@pytest_twisted.ensureDeferred
async def test_a_folder_as_the_running_marker_does_not_stop_pushes(
    start_registry: Any, tmp_path: Path
) -> None:
    """Damage, like a marker with garbage in it: pushes go on (any doomed counts), not 503."""
    root = tmp_path / "root"
    registry = await serve(start_registry, root)
    (root / gcguard.RUNNING).mkdir(parents=True)
    await push_blob(registry.url, "k/app", LAYER)
    body = samples.oci_image(config=b"{}", layers=(LAYER,))
    await push_blob(registry.url, "k/app", b"{}")
    assert (await put_manifest(registry.url, "k/app", "v1", body))[0] == 201


@pytest_twisted.ensureDeferred
async def test_a_tag_moved_to_a_new_push_while_gc_reads_tags_is_no_damage(
    start_registry: Any, tmp_path: Path, thread_pool: ThreadPool
) -> None:
    """
    ``--delete-untagged`` listed the revisions, then a push moved a tag to a new manifest
    before the run read that tag: the run keeps the new one, and says nothing of a damaged tag
    (it warned "points at ..., not a manifest of the repository" under ordinary pushes).
    """
    root = tmp_path / "root"
    registry = await serve(start_registry, root)
    name = "k/moving"
    bodies = []
    for generation in (1, 2):
        config = json.dumps({"architecture": "amd64", "os": "linux", "g": generation}).encode()
        await push_blob(registry.url, name, config)
        await push_blob(registry.url, name, LAYER)
        bodies.append(samples.oci_image(config=config, layers=(LAYER,)))
    assert (await put_manifest(registry.url, name, "t", bodies[0]))[0] == 201
    age(root)
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "not a manifest of the repository" in str(event.get("log_format", "")):
            warnings.append(str(event))

    globalLogPublisher.addObserver(observe)
    try:
        tags = layout.tags_dir(name)
        held, run = run_untagged(root, thread_pool, lambda m, p: m == "list" and p == tags)
        await held_at(held, run)
        assert (await put_manifest(registry.url, name, "t", bodies[1]))[0] == 201
        held.release.callback(None)
        stats = await run
    finally:
        globalLogPublisher.removeObserver(observe)
    assert warnings == []
    # The tag's new manifest is kept; its old one, untagged now and older than the grace, is
    # --delete-untagged's to delete, as it would be without the race.
    assert stats.revisions_deleted == 1
    assert await pull_status(registry.url, name, "t") == 200
    assert await pull_status(registry.url, name, sha256(bodies[1])) == 200
    assert await pull_status(registry.url, name, sha256(bodies[0])) == 404
    assert await layer_pulls(registry.url, name) == 200
