"""The pull-through cache on a full disk: a cold pull gets the OCI 503 naming the full disk, the
server logs one line (no traceback), nothing is left behind, and the pull works once there is
room again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted
import treq

from tests.e2e.client import get, sha256
from tests.e2e.test_full_disk import fill, no_space, small_disk  # noqa: F401 - fixture
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied

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
