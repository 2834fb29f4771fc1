"""
Manifest reads stay exact when another process (a worker, another instance) writes the same
storage: a tag moved or a manifest deleted there is what the next pull here sees, whatever this
process remembers of manifests it served (`registry.storage.manifests.RecentManifests`).
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import Starter
from tests.e2e.test_front_answers import MANIFEST_TYPE, exchange, push_image

ACCEPT = {"Accept": MANIFEST_TYPE}


def _status_and_digest(answer: bytes) -> tuple[str, str | None]:
    head = answer.split(b"\n\n", 1)[0].decode()
    lines = head.split("\n")
    digest = next(
        (line.split(": ", 1)[1] for line in lines if line.startswith("Docker-Content-Digest")), None
    )
    return lines[0].split(" ", 1)[0], digest


@pytest_twisted.ensureDeferred
async def test_pull_here_sees_push_and_delete_there(
    start_registry: Starter, tmp_path: Path
) -> None:
    storage = {"storage": {"rootdirectory": str(tmp_path / "shared"), "delete_enabled": "true"}}
    writer = await start_registry(storage)
    reader = await start_registry(storage)

    async def pull(reference: str) -> tuple[str, str | None]:
        answer = await deferToThread(
            exchange, reader.url, "GET", f"/v2/same/repo/manifests/{reference}", ACCEPT, b""
        )
        return _status_and_digest(answer)

    first, _ = await deferToThread(push_image, writer.url, "t", "first")
    assert await pull("t") == ("200", first)
    assert await pull(first) == ("200", first)
    # The tag moves there: the very next pull here follows it.
    second, _ = await deferToThread(push_image, writer.url, "t", "second")
    assert await pull("t") == ("200", second)
    # Deleted there (by digest): gone here, by digest and by its tag, though served before.
    for digest in (first, second):
        answer = await deferToThread(
            exchange, writer.url, "DELETE", f"/v2/same/repo/manifests/{digest}", {}, b""
        )
        assert answer.startswith(b"202 "), answer
    assert await pull(first) == ("404", None)
    assert await pull("t") == ("404", None)
    # Pushed again there: served here again.
    again, _ = await deferToThread(push_image, writer.url, "t", "first")
    assert again == first
    assert await pull("t") == ("200", first)
