"""
Storage damaged the way disks and people do (a torn or garbage link, a folder where a file
should be): the operations commands, run as child processes, stop before deleting anything
they cannot read, and the serving registry answers with OCI errors and one log line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from registry.api.digests import Digest
from registry.ops.gc import GCOptions, collect_garbage
from registry.storage import gcguard, layout
from registry.storage.blobs import BlobStore
from registry.storage.filesystem import FilesystemDriver
from registry.storage.memory import MemoryDriver
from tests.manifests import samples
from tests.ops import scenario
from tests.ops.scenario import DELETED_UNTAGGED, assert_pullable, blob_digests, revision_digests
from tests.ops.test_cli import cli, config, start_registry

__all__ = ["config", "start_registry"]


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The registry's own warning (and worse) lines logged while the test runs."""
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        namespace = str(event.get("log_namespace", ""))
        if event.get("log_level", LogLevel.info) >= LogLevel.warn and namespace.startswith(
            "registry."
        ):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def tag_link(root: Path, name: str, tag: str) -> Path:
    return root / layout.tag_current_link(name, tag)


DAMAGE = {
    "empty": lambda link: link.write_bytes(b""),
    "truncated": lambda link: link.write_bytes(link.read_bytes()[:13]),
    "garbage": lambda link: link.write_bytes(b"garbage!!\n\0\xff"),
    "folder": lambda link: (link.unlink(), link.mkdir()),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
@pytest_twisted.ensureDeferred
async def test_gc_stops_on_a_damaged_tag_link(
    driver: FilesystemDriver, root: Path, config: Path, kind: str
) -> None:
    """
    Read as "no tag", a damaged link made ``--delete-untagged`` delete the tagged image
    with its signature and layers: now the run stops before any deletion, with one line
    naming the link, exit 1, dry run or not.
    """
    await scenario.build_aged(driver, root)
    link = tag_link(root, "app", "v1")
    DAMAGE[kind](link)
    blobs, revisions = blob_digests(root), revision_digests(root, "app")
    for extra in (("--dry-run",), ()):
        result = await cli(
            "gc", "--config", str(config), "--delete-untagged", "--grace", "0s", *extra
        )
        assert result.code == 1, result
        assert result.out == ""
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("txregistry gc: gc aborted, nothing deleted: "), lines
        assert layout.tag_current_link("app", "v1") in lines[0], lines
        assert blob_digests(root) == blobs
        assert revision_digests(root, "app") == revisions


@pytest_twisted.ensureDeferred
async def test_gc_keeps_the_history_of_a_tag_naming_no_revision(
    driver: FilesystemDriver, root: Path, config: Path
) -> None:
    """A well-formed link to a manifest the repository lacks: the tag's history is kept."""
    content = await scenario.build_aged(driver, root)
    tag_link(root, "app", "v1").write_bytes(b"sha512:" + b"0" * 128)
    result = await cli("gc", "--config", str(config), "--delete-untagged", "--grace", "0s")
    assert result.code == 0, result
    assert "warn: app: tag v1 points at sha512:000" in result.err
    kept = blob_digests(root)
    for label in ("M1", "S1", "C1", "L1", "L1b", "Lsig"):
        assert content.digests[label] in kept, label
    assert {content.digests["M1"], content.digests["S1"]} <= revision_digests(root, "app")


@pytest_twisted.ensureDeferred
async def test_gc_keeps_what_a_revision_it_cannot_delete_references(
    driver: FilesystemDriver, root: Path, config: Path, start_registry: Any
) -> None:
    """
    Untagged M2's folder cannot take gc's ``doomed`` (a folder with something in it stands
    there), so M2 is not deleted: its blob, config and layers are not either (they were, and
    M2 answered by digest with blobs gone); one error line, exit 1, the rest collected.
    """
    content = await scenario.build_aged(driver, root)
    before = blob_digests(root)
    m2 = content.digests["M2"]
    doomed = gcguard.revision_doomed_path("app", Digest.parse(m2))
    (root / doomed / "kept").mkdir(parents=True)
    result = await cli("gc", "--config", str(config), "--delete-untagged")
    assert result.code == 1, result
    damage = f"storage damaged at {doomed}: a folder where a file should be"
    error = f"app: cannot delete revision {m2}: {damage}"
    assert f"error: {error}" in result.err
    lines = result.out.splitlines()
    assert lines[-2].startswith("gc: deleted 7 blobs, 3 untagged manifests, freed "), lines
    assert lines[-1] == f"gc: 1 errors (first: {error})"
    kept = {"M2", "C2", "L2"}  # SHARED: kept by other's M3 anyway
    assert content.labels(before - blob_digests(root)) == DELETED_UNTAGGED - kept
    assert m2 in revision_digests(root, "app")
    assert (root / doomed / "kept").is_dir()  # not gc's to remove
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    await assert_pullable(registry.url, content, DELETED_UNTAGGED - kept)


@pytest_twisted.ensureDeferred
async def test_registry_answers_a_damaged_tag_with_an_oci_error(
    driver: FilesystemDriver, root: Path, start_registry: Any, warnings: list[str]
) -> None:
    """A folder in a tag link's place: 404 MANIFEST_UNKNOWN and one line naming the path."""
    await scenario.build_aged(driver, root)
    link = tag_link(root, "app", "v1")
    link.unlink()
    link.mkdir()
    tag_link(root, "other", "latest").write_bytes(b"garbage")
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    for name, tag in (("app", "v1"), ("other", "latest")):
        response = await treq.get(f"{registry.url}/v2/{name}/manifests/{tag}")
        body = json.loads(await response.content())
        assert response.code == 404, body
        assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert len(warnings) == 2, warnings
    assert warnings[0] == (
        f"storage damaged at {layout.tag_current_link('app', 'v1')}: "
        "a folder where a file should be"
    )
    assert warnings[1].startswith(
        f"storage damaged at {layout.tag_current_link('other', 'latest')}: not a digest"
    )


@pytest_twisted.ensureDeferred
async def test_a_folder_as_blob_data_is_no_blob_and_a_push_repairs_it(
    driver: FilesystemDriver, root: Path, start_registry: Any, warnings: list[str]
) -> None:
    """
    Served as a 0-byte blob, a folder at ``data`` made clients skip pushing the blob (HEAD
    said it exists) and pull nothing: it is unknown now, and pushing the bytes replaces it.
    """
    content = await scenario.build_aged(driver, root)
    digest = content.digests["L3"]
    data = root / layout.blob_data(Digest.parse(digest))
    data.unlink()
    data.mkdir()
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    url = f"{registry.url}/v2/other/blobs/{digest}"
    for method in ("HEAD", "GET"):
        response = await treq.request(method, url)
        body = await response.content()
        assert response.code == 404, (method, body)
        if method == "GET":
            assert json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    damage = f"storage damaged at {layout.blob_data(Digest.parse(digest))}"
    assert warnings == [f"{damage}: a folder where a file should be"] * 2

    right = content.data["L3"]
    assert f"sha256:{hashlib.sha256(right).hexdigest()}" == digest
    response = await treq.post(
        f"{registry.url}/v2/repush/blobs/uploads/", params={"digest": digest}, data=right
    )
    assert response.code == 201, await response.content()
    assert data.is_file()
    assert data.read_bytes() == right
    response = await treq.get(url)
    assert response.code == 200
    assert await response.content() == right


@pytest_twisted.ensureDeferred
async def test_a_folder_with_content_as_blob_data_is_refused_with_a_reason(
    driver: FilesystemDriver, root: Path, start_registry: Any, warnings: list[str]
) -> None:
    """A folder with something in it may be a person's: a push does not remove it (503)."""
    content = await scenario.build_aged(driver, root)
    digest = content.digests["L3"]
    data = root / layout.blob_data(Digest.parse(digest))
    data.unlink()
    (data / "keep").mkdir(parents=True)
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    response = await treq.post(
        f"{registry.url}/v2/repush/blobs/uploads/",
        params={"digest": digest},
        data=content.data["L3"],
    )
    body = json.loads(await response.content())
    assert response.code == 503, body
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert "a folder where a file should be" in body["errors"][0]["detail"]["reason"]
    assert (data / "keep").is_dir()
    shutil.rmtree(data)


@pytest_twisted.ensureDeferred
async def test_a_push_replaces_blob_data_of_the_wrong_size(
    driver: FilesystemDriver, root: Path, start_registry: Any, warnings: list[str]
) -> None:
    """Blob data torn short (a crash without fsync, a truncation by hand) fails every pull's
    digest check; pushing the right bytes replaces it, where "stored already" kept it."""
    content = await scenario.build_aged(driver, root)
    digest = content.digests["L3"]
    right = content.data["L3"]
    data = root / layout.blob_data(Digest.parse(digest))
    data.write_bytes(right[: len(right) // 2])
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    response = await treq.post(
        f"{registry.url}/v2/repush/blobs/uploads/", params={"digest": digest}, data=right
    )
    assert response.code == 201, await response.content()
    assert data.read_bytes() == right
    response = await treq.get(f"{registry.url}/v2/other/blobs/{digest}")
    assert (response.code, await response.content()) == (200, right)
    path = layout.blob_data(Digest.parse(digest))
    assert warnings == [
        f"storage repaired at {path}: {len(right) // 2} bytes stored, the pushed blob has "
        f"{len(right)}"
    ]


@pytest_twisted.ensureDeferred
async def test_a_manifest_put_replaces_manifest_data_of_the_wrong_size(
    driver: FilesystemDriver, root: Path, start_registry: Any, warnings: list[str]
) -> None:
    """
    A manifest's data torn short (a crash without fsync, a truncation by hand) is served as
    stored, and every client's digest check fails; putting the manifest again writes it
    again, where "stored already" kept the damage.  The registry that served the damaged
    bytes did not remember them: the next pull reads the repaired file.
    """
    content = await scenario.build_aged(driver, root)
    digest, right = content.digests["M3"], content.data["M3"]
    media_type = content.manifests["M3"][1]
    data = root / layout.blob_data(Digest.parse(digest))
    data.write_bytes(right[: len(right) // 2])
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    by_digest = f"{registry.url}/v2/other/manifests/{digest}"
    response = await treq.get(by_digest, headers={"Accept": media_type})
    assert (response.code, await response.content()) == (200, right[: len(right) // 2])

    response = await treq.put(
        f"{registry.url}/v2/other/manifests/latest",
        data=right,
        headers={"Content-Type": media_type},
    )
    assert response.code == 201, await response.content()
    assert response.headers.getRawHeaders("Docker-Content-Digest") == [digest]
    assert data.read_bytes() == right
    for url in (by_digest, f"{registry.url}/v2/other/manifests/latest"):
        response = await treq.get(url, headers={"Accept": media_type})
        assert (response.code, await response.content()) == (200, right), url
        assert response.headers.getRawHeaders("Docker-Content-Digest") == [digest]
    assert warnings == [
        f"storage repaired at {layout.blob_data(Digest.parse(digest))}: "
        f"{len(right) // 2} bytes stored, the blob written has {len(right)}"
    ]


@pytest_twisted.ensureDeferred
async def test_index_children_never_stored_are_counted_not_reported(
    warnings: list[str],
) -> None:
    """A sparse index (or a cache's index whose other platforms nobody pulled) names
    children the repository never had: normal, so no line; a revision without its blob is."""
    driver = MemoryDriver()
    blobs = BlobStore(driver)
    index = samples.oci_index([b'{"never":"stored"}'], archs=("amd64",))
    digest = await blobs.put_small(index)
    await driver.put_content(layout.revision_link("sparse", digest), str(digest).encode())
    await driver.put_content(layout.tag_current_link("sparse", "latest"), str(digest).encode())
    lost = Digest.parse(samples.sha256(b"a manifest whose blob went"))
    await driver.put_content(layout.revision_link("sparse", lost), str(lost).encode())
    for options in (GCOptions(grace=0), GCOptions(grace=0, delete_untagged=True)):
        warnings.clear()
        stats = (await collect_garbage(driver, options, time.time())).stats
        assert warnings == [f"sparse: manifest {lost} has no blob data"]
        assert stats.manifests_missing == 1
        assert stats.children_not_stored == 1
