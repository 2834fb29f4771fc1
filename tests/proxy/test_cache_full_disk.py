"""The pull-through cache on a full disk: a cold pull gets the OCI 503 naming the full disk, the
server logs one line (no traceback), nothing is left behind, and the pull works once there is
room again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.logger import formatEvent, globalLogPublisher

from registry.proxy.service import ProxyService
from registry.storage.driver import StorageFull
from tests.e2e.client import get, sha256
from tests.e2e.test_full_disk import fill, no_space, small_disk  # noqa: F401 - fixture
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import blob_data_path, wait_for

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
async def test_a_cold_pull_on_a_full_disk_answers_503_then_fills_once_there_is_room(
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

    await no_space(await treq.get(url))
    assert files_under(small_disk) == before  # no fill file, no link, no blob

    filler.unlink()
    response, body = await get(url)
    assert response.code == 200
    assert sha256(body) == digest
    assert fake.count("GET", "cdn", ref=digest) == 2  # the failed fill kept nothing


@pytest_twisted.ensureDeferred
async def test_a_cache_started_on_a_full_disk_serves_what_it_holds(
    small_disk: Path,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
) -> None:
    """A restart on a full disk (a reboot, a deploy): the cache starts with one warning,
    serves the blobs it holds, answers a miss with the full disk's 503 (as at fill time), and
    writes its instance marker once there is room."""
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
        await no_space(await treq.get(f"{registry.url}/v2/library/alpine/blobs/{missed.digest}"))
        assert not marker.exists()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [text for level, text in logs if level == "warn"] == [
        f"storage {small_disk} is full (no space left on device): serving pulls; pushes answer"
        " 503 until there is room (txregistry gc frees it: docs/operations.md)"
    ]
    assert (
        "info",
        f"proxy: cannot write the cache instance marker in {small_disk} (no space left on"
        " device): serving; it is written once there is room, and until then another"
        " instance started on this storage is not refused",
    ) in logs
    # The miss's own 503 line and the fill's; nothing else complains, nothing has a traceback.
    assert [text.split(":")[0] for level, text in logs if level in ("error", "critical")] == [
        "storage failure on GET /v2/library/alpine/blobs/sha256",
        "proxy fill of sha256",
    ]

    filler.unlink()
    await wait_for(marker.exists, within=30)  # the next heartbeat (every 10 s)


def test_a_periodic_write_failing_on_a_full_disk_is_said_once_until_it_works() -> None:
    """The state and counters flushes run every interval: a full disk is one warning, not one
    line each time, and one line says when the write works again."""
    service = ProxyService([])
    failures = [StorageFull("writing stats.json: No space left on device")] * 2

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
            "proxy hub: counters flush failed: writing stats.json: No space left on device"
            " (tried again every interval; a line says when it works)",
        ),
        ("info", "proxy hub: counters flush works again"),
    ]
