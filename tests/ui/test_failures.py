"""
The UI when what is behind it fails: damaged storage is a 503 page and one log line (as the
API logs it), and a cached manifest whose upstream is down still has its page, saying that its
referrers could not be listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.e2e.conftest import Starter, start_registry  # noqa: F401 - fixture
from tests.e2e.test_s3_outage import SwitchableS3, start_on_s3, switchable  # noqa: F401
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied, fake, proxied  # noqa: F401 - fixtures
from tests.proxy.util import fetch, pull
from tests.storage.s3server import S3Server, s3_server  # noqa: F401 - fixture
from tests.ui import content


@pytest.fixture
def ui_lines() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("registry.ui"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_storage_failure_is_a_503_page_and_one_line(
    start_registry: Starter,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,  # noqa: F811
    ui_lines: list[dict[str, Any]],
) -> None:
    registry = await start_on_s3(start_registry, s3_server, switchable, "ui", answertimeout="1s")
    await deferToThread(content.push_image, content.Client(registry.url), "team/app", "v1")
    switchable.hung = True
    try:
        response, body = await fetch(f"{registry.url}/ui/r/team/app/-/manifest/v1")
    finally:
        switchable.come_back()
    assert response.code == 503, body[:500]
    [line] = [e for e in ui_lines if e.get("log_level", LogLevel.info) >= LogLevel.warn]
    assert line["log_level"] is LogLevel.error, formatEvent(line)
    assert "log_failure" not in line, formatEvent(line)  # no traceback
    text = formatEvent(line)
    assert text.startswith("ui: storage failure on GET /ui/r/team/app/-/manifest/v1: S3 "), text


@pytest_twisted.ensureDeferred
async def test_a_cached_manifest_page_needs_no_upstream(
    proxied: Proxied,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """The page shows what the cache holds, the referrers included: with the upstream down
    it is whole, and it waits for no upstream timeout."""
    fake.content.add_image("library/alpine", "latest", [4096])
    registry = await proxied(default="false")
    await pull(registry, "docker.io/library/alpine", "latest")
    await fake.go_down()
    try:
        # The API serves the cached manifest; the page shows it too.
        response, _ = await fetch(f"{registry.url}/v2/docker.io/library/alpine/manifests/latest")
        assert response.code == 200
        response, body = await fetch(
            f"{registry.url}/ui/r/docker.io/library/alpine/-/manifest/latest"
        )
        page = body.decode()
        assert response.code == 200, page[:500]
        assert "could not be listed" not in page
        assert "No signatures, SBOMs or attestations." in page
        # A manifest the cache does not hold says so (an index's platform nobody pulled).
        response, body = await fetch(
            f"{registry.url}/ui/r/docker.io/library/alpine/-/manifest/sha256:{'0' * 64}"
        )
        assert response.code == 404
        assert b"not in the cache yet: it is shown here once a client pulls it" in body
    finally:
        await fake.come_up()
