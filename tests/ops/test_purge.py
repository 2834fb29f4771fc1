"""
The upload purge leaves nothing of an abandoned push behind on the filesystem: the upload, and
the folders it empties (its ``_uploads``, a repository folder holding nothing else, their empty
parents), never a folder with anything in it.  With the real filesystem driver, and in a
registry serving over loopback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry.ops.purge import purge_uploads
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import Catalog
from registry.storage.filesystem import FilesystemDriver
from registry.storage.uploads import UploadStore
from tests.e2e.client import header, sha256, start_upload
from tests.ops import scenario
from tests.ops.test_tree_walks import old_upload, start_registry

__all__ = ["start_registry"]


def children(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest_twisted.ensureDeferred
async def test_purge_removes_the_folders_it_empties(driver: FilesystemDriver, root: Path) -> None:
    """
    Each push to a new name that was abandoned left two folders for good (``<name>`` and
    ``<name>/_uploads``), 1.2 GiB of them after 150,000 POSTs.  They go now, up to
    ``repositories/``, when nothing else is in them: not a repository's ``_manifests`` or
    ``_layers``, not a repository below, not an upload still young.  An empty ``_uploads``
    left by registry:2 (whose purge removes the upload's folder alone) goes too.
    """
    await scenario.build_aged(driver, root)  # app and other
    uploads = UploadStore(driver, BlobStore(driver))
    for name in ["abandoned/one", "abandoned/two/deep", "app", "other/abandoned", "lone"]:
        await old_upload(driver, name)
    young = [await uploads.start("lone/young"), await uploads.start("young")]
    repositories = root / layout.REPOSITORIES
    (repositories / "left" / "by" / "registry2" / "_uploads").mkdir(parents=True)
    app_before = children(repositories / "app")
    assert "_uploads" in app_before

    assert await purge_uploads(driver, 3600, time.time()) == 5
    assert children(repositories) == ["app", "lone", "other", "young"]
    assert children(repositories / "app") == [c for c in app_before if c != "_uploads"]
    assert "abandoned" not in children(repositories / "other")
    assert children(repositories / "lone") == ["young"]
    assert await uploads.exists("lone/young", young[0])
    assert await uploads.exists("young", young[1])
    assert await Catalog(driver).rebuild() == ["app", "other"]

    # Gone the same way once the last upload is old: repositories/ itself stays.
    assert await purge_uploads(driver, 0, time.time() + 1) == 2
    assert children(repositories) == ["app", "other"]


@pytest_twisted.ensureDeferred
async def test_an_abandoned_push_to_a_new_name_leaves_nothing_over_the_wire(
    driver: FilesystemDriver, root: Path, start_registry: Any
) -> None:
    """
    A POST to a name never seen, abandoned: the serving registry's purge removes its
    folders, the catalog never lists the name, and a push to it later works as on a new name.
    """
    await scenario.build_aged(driver, root)
    registry = await start_registry(
        {
            "storage": {"rootdirectory": str(root)},
            "uploads": {"purge_interval": "1s", "purge_age": "2s"},
        }
    )
    await start_upload(registry.url, "abandoned/app")
    folder = root / layout.repository("abandoned")
    assert children(folder / "app") == ["_uploads"]
    for _ in range(100):  # up to 10 s: older than 2 s at a purge every second
        if not folder.exists():
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert not folder.exists()
    assert children(root / layout.REPOSITORIES) == ["app", "other"]
    response = await treq.get(f"{registry.url}/v2/_catalog")
    assert await response.json() == {"repositories": ["app", "other"]}

    data = b"pushed after the purge"
    location = await start_upload(registry.url, "abandoned/app")
    query = "&" if "?" in location else "?"
    response = await treq.put(f"{location}{query}digest={sha256(data)}", data=data)
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == sha256(data)
    response = await treq.get(f"{registry.url}/v2/abandoned/app/blobs/{sha256(data)}")
    assert await response.content() == data
    response = await treq.get(f"{registry.url}/v2/_catalog")
    assert await response.json() == {"repositories": ["abandoned/app", "app", "other"]}


@pytest_twisted.ensureDeferred
async def test_an_old_upload_still_receiving_data_is_kept_and_a_bad_date_is_no_shield(
    driver: FilesystemDriver, root: Path
) -> None:
    """Abandoned means idle: an upload started 3 hours ago whose data was written a moment
    ago (a long upload of a large layer) stays under ``--age 1h``, and goes once its data is
    idle as long.  An upload whose ``startedat`` does not parse is aged by its folder, as one
    without it, instead of being kept for ever."""
    busy = await old_upload(driver, "app")
    data = root / layout.upload_data("app", busy)
    data.write_bytes(b"some of a large layer")
    odd = await old_upload(driver, "other")
    (root / layout.upload_started_at("other", odd)).write_bytes(b"yesterday-ish")
    month_ago = time.time() - 30 * 86400
    os.utime(root / layout.upload_dir("other", odd), (month_ago, month_ago))
    ahead = await old_upload(driver, "third")  # a start to come: a clock ahead, or junk
    (root / layout.upload_started_at("third", ahead)).write_bytes(b"2999-01-01T00:00:00Z")
    os.utime(root / layout.upload_dir("third", ahead), (month_ago, month_ago))
    assert await purge_uploads(driver, 3600, time.time()) == 2
    uploads = UploadStore(driver, BlobStore(driver))
    assert await uploads.exists("app", busy)
    assert not await uploads.exists("other", odd)
    assert not await uploads.exists("third", ahead)
    three_hours_ago = time.time() - 3 * 3600
    os.utime(data, (three_hours_ago, three_hours_ago))
    assert await purge_uploads(driver, 3600, time.time()) == 1
    assert not await uploads.exists("app", busy)
