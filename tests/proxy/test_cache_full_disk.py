"""The pull-through cache on a full disk: a cold pull is served from the upstream without
keeping it, the server logs one warning (no traceback), nothing is left behind, and the pull
is kept once there is room again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher

from registry.proxy.fleet.marker import MARKER, InstanceMarker
from registry.proxy.service import ProxyService
from registry.storage.driver import StorageError, StorageFull
from registry.storage.filesystem import FilesystemDriver
from tests.e2e.client import get, sha256
from tests.e2e.test_full_disk import fill, no_space, small_disk  # noqa: F401 - fixture
from tests.e2e.test_monitoring import scrape
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.test_fill_storage_failure import Logs
from tests.proxy.util import blob_data_path, build_image, wait_for

LAYER = 1024 * 1024


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` but the filler, relative to it."""
    return sorted(
        os.path.relpath(os.path.join(directory, name), root)
        for directory, _dirs, names in os.walk(root)
        for name in names
        if name != "filler"
    )


@pytest_twisted.ensureDeferred
async def test_a_cold_pull_on_a_full_disk_is_served_without_keeping_it_then_kept_with_room(
    small_disk: Path,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
) -> None:
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    registry = await proxied({"storage": {"rootdirectory": str(small_disk)}})
    url = f"{registry.url}/v2/library/alpine/blobs/{digest}"
    before = files_under(small_disk)
    filler = fill(small_disk)

    response, body = await get(url)
    assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
    # No fill file, no link, no blob (the relayed fill's leftovers go once it is done).
    await wait_for(lambda: files_under(small_disk) == before)
    assert fake.count("GET", "cdn", ref=digest) == 1

    filler.unlink()
    response, body = await get(url)
    assert response.code == 200
    assert sha256(body) == digest
    assert fake.count("GET", "cdn", ref=digest) == 2  # the relayed fill kept nothing
    await wait_for(lambda: blob_data_path(small_disk, digest).exists())
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert fake.count("GET", "cdn", ref=digest) == 2


@pytest_twisted.ensureDeferred
async def test_a_cache_started_on_a_full_disk_serves_what_it_holds(
    small_disk: Path,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
) -> None:
    """A restart on a full disk (a reboot, a deploy): the cache starts with one warning,
    serves the blobs it holds, serves a miss from the upstream without keeping it (as a fill
    whose disk fills up mid-body is), and writes its instance marker once there is room."""
    cached, missed = fake.content.add_image("library/alpine", "latest", [65536, 65536]).layers
    first = await proxied({"storage": {"rootdirectory": str(small_disk)}})
    response, body = await get(f"{first.url}/v2/library/alpine/blobs/{cached.digest}")
    assert (response.code, sha256(body)) == (200, cached.digest)
    await wait_for(lambda: blob_data_path(small_disk, cached.digest).exists())
    await first.stop()
    filler = fill(small_disk)
    marker = small_disk / "docker/registry/v2/txregistry/proxy/instance.json"
    assert not marker.exists()  # a clean stop takes it out

    logs: list[tuple[str, str]] = []

    def observer(event: dict[str, Any]) -> None:
        logs.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    try:
        registry = await proxied({"storage": {"rootdirectory": str(small_disk)}})
        response, body = await get(f"{registry.url}/v2/library/alpine/blobs/{cached.digest}")
        assert (response.code, sha256(body)) == (200, cached.digest)
        response, body = await get(f"{registry.url}/v2/library/alpine/blobs/{missed.digest}")
        assert (response.code, sha256(body)) == (200, missed.digest)
        assert not blob_data_path(small_disk, missed.digest).exists()
        assert not marker.exists()
    finally:
        globalLogPublisher.removeObserver(observer)
    # (The cache's periodic writes, its counters and its index, come every interval: on a
    # slow run one falls in here, and says the disk is full too.)
    warnings = [
        text
        for level, text in logs
        if level == "warn" and "(tried again every interval; a line says when it works)" not in text
    ]
    assert warnings[0] == (
        f"storage {small_disk} is full (no space left on device): serving pulls; pushes answer"
        " 503 until there is room (txregistry gc frees it: docs/operations.md)"
    )
    assert [text.split(": the cache's storage failed: ")[0] for text in warnings[1:]] == [
        f"proxy hub: serving {missed.digest} (65536 bytes) without keeping it"
    ]
    assert warnings[1].endswith("No space left on device"), warnings
    assert (
        "info",
        f"proxy: cannot write the cache instance marker in {small_disk} (no space left on"
        " device): serving; it is written once there is room, and until then another"
        " instance started on this storage is not refused",
    ) in logs
    # Nothing else complains, nothing has a traceback.
    assert [text for level, text in logs if level in ("error", "critical")] == []

    filler.unlink()
    await wait_for(marker.exists, within=30)  # the next heartbeat (every 10 s)


@pytest.mark.parametrize(
    "failure",
    [
        StorageFull("writing stats.json: No space left on device"),
        StorageError("S3 at http://s3.example/ gave no answer within 60s"),
    ],
)
def test_a_periodic_write_failing_on_a_full_disk_is_said_once_until_it_works(
    failure: StorageError,
) -> None:
    """The state and counters flushes run every interval: a full disk (or a storage that is
    down) is one warning, not one line each time, and one line says when the write works
    again."""
    service = ProxyService([])
    failures = [failure, failure]

    async def flush() -> None:
        if failures:
            raise failures.pop()

    logs: list[tuple[str, str]] = []

    def observer(event: dict[str, Any]) -> None:
        logs.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    try:
        for _ in range(3):
            service._guard(flush, "counters flush", "hub")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert logs == [
        (
            "warn",
            f"proxy hub: counters flush failed: {failure}"
            " (tried again every interval; a line says when it works)",
        ),
        ("info", "proxy hub: counters flush works again"),
    ]


def test_the_stop_waits_for_a_periodic_write_under_way() -> None:
    """A flush still copying the index when the stop closed it had its thread pool stopped
    under it: the stop waits for it before its own flush and the close."""
    service = ProxyService([])
    held: Deferred[None] = Deferred()
    service._guard(lambda: held, "state flush", "hub")
    stopping = service.stopService()
    assert not stopping.called
    held.callback(None)
    assert stopping.called


def test_the_stop_does_not_wait_for_writes_waiting_for_a_start_that_failed() -> None:
    """A start that fails (Redis away, another instance on the storage) never loads the
    caches: the periodic writes still waiting for that are not waited for, and the process
    exits with its one line."""
    service = ProxyService([])
    service._started = Deferred()  # the caches still loading: a failed start never ends it
    service._guard(lambda: Deferred(), "state flush", "hub")
    assert service.stopService().called


@pytest_twisted.ensureDeferred
async def test_a_blob_stored_for_another_repository_is_served_on_a_full_disk(
    small_disk: Path,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
) -> None:
    """A layer cached for one repository, asked for through another that the upstream says
    has it too: on a full disk its link cannot be written, and the stored bytes are served
    all the same (with a warning), not a 503; with room, the next request links it."""
    first = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = first.layers[0].digest
    build_image(fake.content, "library/other", "latest", [fake.content.blobs[layer]])
    registry = await proxied({"storage": {"rootdirectory": str(small_disk)}})
    response, body = await get(f"{registry.url}/v2/library/alpine/blobs/{layer}")
    assert (response.code, sha256(body)) == (200, layer)
    await wait_for(lambda: blob_data_path(small_disk, layer).exists())
    link = (
        small_disk
        / f"docker/registry/v2/repositories/docker.io/library/other/_layers/{layer.replace(':', '/')}/link"
    )
    filler = fill(small_disk)

    url = f"{registry.url}/v2/library/other/blobs/{layer}"
    with Logs() as logs:
        response, body = await get(url)
        assert (response.code, sha256(body)) == (200, layer)
        said = logs.saying("without linking it")
        assert len(said) == 1, said
        assert said[0][0] == "warn"
        assert said[0][1].startswith(
            f"proxy hub: serving {layer} for docker.io/library/other without linking it: the"
            " cache's storage failed: "
        ), said
        logs.assert_clean()
    assert not link.exists()
    assert fake.count("GET", "cdn", ref=layer) == 1  # the stored bytes, not the upstream's

    filler.unlink()
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, layer)
    assert link.exists()
    assert fake.count("GET", "cdn", ref=layer) == 1


@pytest_twisted.ensureDeferred
async def test_a_moved_tag_on_a_full_disk_is_not_served_stale_after_its_new_manifest(
    small_disk: Path,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
) -> None:
    """A cached tag moved upstream while the disk is full: its new manifest is served (not
    kept), and so is every later request, never the old one the tag here still names (the
    tag was taken as freshly checked although it could not be updated)."""
    old = fake.content.add_image("library/alpine", "latest", [1024])
    first = await proxied({"storage": {"rootdirectory": str(small_disk)}})
    response, body = await get(f"{first.url}/v2/library/alpine/manifests/latest")
    assert (response.code, sha256(body)) == (200, old.digest)
    await first.stop()
    new = fake.content.add_image("library/alpine", "latest", [2048], seed="moved")
    assert new.digest != old.digest
    filler = fill(small_disk)

    registry = await proxied({"storage": {"rootdirectory": str(small_disk)}}, tag_freshness="1h")
    for _ in range(3):
        response, body = await get(f"{registry.url}/v2/library/alpine/manifests/latest")
        assert (response.code, sha256(body)) == (200, new.digest)
    filler.unlink()


@pytest_twisted.ensureDeferred
async def test_relayed_fills_count_against_max_inflight(
    small_disk: Path,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
) -> None:
    """On a full disk each pull of a blob is a fill relaying its own upstream body: they are
    fills in flight all the same, shown in ``txregistry_proxy_active_fills`` and bounded by
    ``max_inflight`` (past it: 503 with Retry-After, not one more upstream connection)."""
    size = 4 * LAYER
    digest = fake.content.add_image("library/alpine", "latest", [size]).layers[0].digest
    registry = await proxied({"storage": {"rootdirectory": str(small_disk)}}, max_inflight="2")
    filler = fill(small_disk)
    held = fake.hold_body(digest, after=LAYER)
    url = f"{registry.url}/v2/library/alpine/blobs/{digest}"
    pulls = []
    for count in (1, 2):
        pulls.append(Deferred.fromCoroutine(get(url)))
        await wait_for(lambda count=count: held.arrived == count)  # type: ignore[misc]
    found, _ = await scrape(registry.url)
    assert found[("txregistry_proxy_active_fills", (("upstream", "hub"),))] == 2
    response, body = await get(url)
    assert response.code == 503, body
    assert response.headers.getRawHeaders("Retry-After") == ["1"]
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    assert fake.count("GET", "cdn", ref=digest) == 2

    held.release()
    for pull in pulls:
        response, body = await pull
        assert (response.code, len(body), sha256(body)) == (200, size, digest)
    found, _ = await scrape(registry.url)
    assert found[("txregistry_proxy_active_fills", (("upstream", "hub"),))] == 0
    filler.unlink()


@pytest_twisted.ensureDeferred
async def test_a_blob_larger_than_max_size_on_a_full_disk_is_counted_once_as_not_kept(
    small_disk: Path,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
) -> None:
    size = 2 * LAYER
    digest = fake.content.add_image("library/alpine", "latest", [size]).layers[0].digest
    registry = await proxied({"storage": {"rootdirectory": str(small_disk)}}, max_size="1MiB")
    key = ("txregistry_proxy_unkept_fills_total", (("upstream", "hub"),))
    before, _ = await scrape(registry.url)
    filler = fill(small_disk)
    response, body = await get(f"{registry.url}/v2/library/alpine/blobs/{digest}")
    assert (response.code, sha256(body)) == (200, digest)
    after, _ = await scrape(registry.url)
    assert after[key] - before.get(key, 0.0) == 1
    filler.unlink()


@pytest_twisted.ensureDeferred
async def test_a_marker_the_storage_refuses_is_said_once_until_it_works(
    tmp_path: Path, thread_pool: Any
) -> None:
    """The heartbeat of the instance marker on a storage that refuses it (a folder where the
    marker goes here; S3 down in the field): one warning, not an error line every 10 s, and
    one line when it works again."""
    from twisted.internet import reactor

    driver = FilesystemDriver(str(tmp_path), reactor, thread_pool)
    marker = InstanceMarker(driver, str(tmp_path))
    marker.claimed = True
    beat = marker.service().call[0]
    path = tmp_path / MARKER
    path.mkdir(parents=True)
    (path / "in-the-way").write_bytes(b"")
    logs: list[tuple[str, str]] = []

    def observer(event: dict[str, Any]) -> None:
        logs.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    try:
        for _ in range(3):
            await beat()
        assert not path.is_file()
        (path / "in-the-way").unlink()
        path.rmdir()
        await beat()
        assert json.loads(path.read_bytes())["pid"] == os.getpid()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [level for level, _ in logs] == ["warn", "info"], logs
    assert logs[0][1].startswith(f"proxy: keeping the cache instance marker in {tmp_path} failed: ")
    assert logs[0][1].endswith(" (tried again every 10s; a line says when it works)")
    assert logs[1][1] == f"proxy: the cache instance marker in {tmp_path} works again"
