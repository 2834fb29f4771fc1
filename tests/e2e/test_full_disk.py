"""
A real full disk: the registry's storage root is a 4 MiB tmpfs, filled up.  Every write that
fails must answer 503 with the OCI error and the system's reason (never a 500), change
nothing a reader sees, and leave no temporary file behind; once space is back, the same
requests succeed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from treq.response import _Response
from twisted.logger import formatEvent, globalLogPublisher

from registry import failures
from registry.api import mediatypes as mt
from registry.ops.health import probe_name
from registry.storage import catalog
from tests.e2e.client import (
    error_codes,
    get,
    header,
    push_blob,
    raw_request,
    sha256,
    split_response,
    start_upload,
)
from tests.e2e.conftest import Starter
from tests.e2e.harness import RegistryProcess, sleep
from tests.manifests import samples
from tests.proxy.util import wait_for
from tests.storage.s3server import S3Server, s3_server  # noqa: F401 - fixture

DISK_SIZE = 4 * 1024 * 1024
MIB = 1024 * 1024


@contextmanager
def mounted_tmpfs(folder: Path, size: int, name: str = "disk") -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``folder``/``name``, unmounted at the end
    (mounting needs root: skipped without it, failed under CI=true)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the full-disk tests need root under CI=true (to mount a tmpfs)")
        pytest.skip("mounting a tmpfs needs root")
    mount_point = folder / name
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount_point
    finally:
        # Lazily if something still holds it (a storage thread finishing a removal).
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def open_in(folder: Path) -> list[str]:
    """What this process's descriptors point to under ``folder`` (an unlinked part file
    reads as ``<folder>/#<inode> (deleted)``)."""
    inside = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(f"{folder}/"):
            inside.append(target)
    return inside


def used(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted at the end (mounting needs root)."""
    with mounted_tmpfs(tmp_path, DISK_SIZE) as disk:
        yield disk


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses; returns it (remove it to free the space)."""
    filler = disk / "filler"
    block = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for _ in range(2 * DISK_SIZE // len(block)):
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        else:
            raise AssertionError(f"{disk} did not fill up")
        # What a partly written block left: smaller writes until not even one byte fits.
        for size in (4096, 512, 1):
            for _ in range(len(block) // size + 1):
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def leave_free(disk: Path, free: int) -> Path:
    """Write a filler file so that about ``free`` bytes are left; returns it."""
    stat = os.statvfs(disk)
    take = stat.f_bavail * stat.f_frsize - free
    assert take > 0
    filler = disk / "filler"
    block = b"\0" * MIB
    with open(filler, "wb") as file:
        for _ in range(take // MIB):
            file.write(block)
        file.write(b"\0" * (take % MIB))
    return filler


def temporary_files(root: Path) -> list[Path]:
    """
    The temporary files under root.  The registry empties its trash in the background, so a
    directory may vanish while this walks: os.walk skips it where Path.rglob would raise.
    """
    return [
        Path(directory, name)
        for directory, _dirs, files in os.walk(root)
        for name in files
        if name.startswith(".tmp-")
    ]


async def no_space(response: _Response) -> str:
    """Assert a 503 with the OCI error envelope naming a full disk; return the reason."""
    text = await response.text()
    assert response.code == 503, text
    assert header(response, "content-type") == "application/json"
    (entry,) = json.loads(text)["errors"]
    assert entry["code"] == "UNAVAILABLE"
    assert "No space left on device" in entry["detail"]["reason"], entry
    return str(entry["detail"]["reason"])


async def put_manifest(url: str, name: str, reference: str, body: bytes) -> _Response:
    return await treq.put(
        f"{url}/v2/{name}/manifests/{reference}",
        data=body,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )


@pytest_twisted.ensureDeferred
async def test_full_disk_answers_503_and_leaves_nothing_behind(
    small_disk: Path, start_registry: Starter
) -> None:
    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    url, name = registry.url, "team/app"
    for blob in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2, b"another layer"):
        await push_blob(url, name, blob)
    first = samples.oci_image()
    second = samples.oci_image(layers=(samples.LAYER_1, b"another layer"))
    third = samples.oci_image(layers=(samples.LAYER_2,))
    for tag, body in (("latest", first), ("next", second)):
        response = await put_manifest(url, name, tag, body)
        assert response.code == 201, await response.text()

    filler = fill(small_disk)

    # A new manifest.
    await no_space(await put_manifest(url, name, "v3", third))
    response = await treq.get(f"{url}/v2/{name}/manifests/{sha256(third)}")
    assert response.code == 404
    await response.content()
    # A tag moved to a stored manifest, and a new tag on one: "latest" still reads as before.
    await no_space(await put_manifest(url, name, "latest", second))
    await no_space(await put_manifest(url, name, "other", first))
    response, body = await get(f"{url}/v2/{name}/manifests/latest")
    assert (response.code, body) == (200, first)
    response = await treq.get(f"{url}/v2/{name}/manifests/other")
    assert response.code == 404
    await response.content()
    # Upload starts: a session, and a monolithic push.
    await no_space(await treq.post(f"{url}/v2/{name}/blobs/uploads/"))
    data = b"new layer bytes" * 100
    await no_space(
        await treq.post(f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data)
    )
    # The raw bytes of one of them: the status line has its reason phrase.
    status, headers, body = split_response(
        await raw_request(
            url,
            f"POST /v2/{name}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
    )
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"

    assert temporary_files(small_disk) == []
    uploads = small_disk / f"docker/registry/v2/repositories/{name}/_uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []

    # Space comes back: the same requests succeed.
    filler.unlink()
    response = await put_manifest(url, name, "latest", second)
    assert response.code == 201, await response.text()
    response = await put_manifest(url, name, "v3", third)
    assert response.code == 201, await response.text()
    response = await treq.post(f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data)
    assert response.code == 201, await response.text()
    response, body = await get(f"{url}/v2/{name}/manifests/latest")
    assert (response.code, body) == (200, second)
    assert temporary_files(small_disk) == []


@pytest_twisted.ensureDeferred
async def test_a_registry_started_on_a_full_disk_serves_pulls(
    small_disk: Path, start_registry: Starter
) -> None:
    """A restart on a full disk (a reboot, a deploy) starts, with one warning, and serves
    what is stored; a push is a 503 naming the full disk (registry:2 starts too)."""
    first = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    name, body = "team/app", samples.oci_image()
    for blob in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2):
        await push_blob(first.url, name, blob)
    response = await put_manifest(first.url, name, "latest", body)
    assert response.code == 201, await response.text()
    await first.stop()
    fill(small_disk)

    logs: list[str] = []
    observer = lambda event: logs.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    finally:
        globalLogPublisher.removeObserver(observer)
    response, got = await get(f"{registry.url}/v2/{name}/manifests/latest")
    assert (response.code, got) == (200, body)
    response, got = await get(f"{registry.url}/v2/{name}/blobs/{sha256(samples.LAYER_1)}")
    assert (response.code, got) == (200, samples.LAYER_1)
    await no_space(await treq.post(f"{registry.url}/v2/{name}/blobs/uploads/"))
    [line] = [line for line in logs if "is full" in line]
    assert line.startswith(f"storage {small_disk} is full (no space left on device")
    assert line.endswith(
        "): serving pulls; pushes answer 503 until there is room (txregistry gc frees it:"
        " docs/operations.md)"
    )


@pytest_twisted.ensureDeferred
async def test_an_upload_finished_on_a_full_disk_finishes_when_space_is_back(
    small_disk: Path, start_registry: Starter
) -> None:
    """
    The PUT that finishes a chunked upload fails for want of space: 503, nothing readable at
    the digest, and the upload the client was told it had (202) still there, so that the
    same PUT succeeds once space is back.
    """
    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    url, name = registry.url, "team/app"
    data = os.urandom(256 * 1024)
    digest = sha256(data)
    location = await start_upload(url, name)
    response = await treq.patch(
        location, data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.code == 202, await response.text()
    moved = header(response, "location") or location
    location = moved if moved.startswith("http") else url + moved
    finish = f"{location}{'&' if '?' in location else '?'}digest={digest}"

    filler = fill(small_disk)
    await no_space(await treq.put(finish))
    response = await treq.head(f"{url}/v2/{name}/blobs/{digest}")
    assert response.code == 404
    await response.content()
    response = await treq.get(location)
    assert response.code == 204, await response.text()
    assert header(response, "range") == f"0-{len(data) - 1}"

    filler.unlink()
    response = await treq.put(finish)
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == digest
    response, body = await get(f"{url}/v2/{name}/blobs/{digest}")
    assert (response.code, body) == (200, data)
    assert temporary_files(small_disk) == []


@pytest_twisted.ensureDeferred
async def test_a_monolithic_push_that_fills_the_disk_leaves_no_upload_behind(
    small_disk: Path, start_registry: Starter
) -> None:
    """A ``POST ?digest=`` that runs out of space mid-body is 503, and the upload it started
    goes with it: its client was never told its ``Location``, so nobody could resume it."""
    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    url, name = registry.url, "team/mono"
    filler = leave_free(small_disk, 1024 * 1024)
    data = os.urandom(2 * 1024 * 1024)
    await no_space(
        await treq.post(f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data)
    )
    uploads = small_disk / f"docker/registry/v2/repositories/{name}/_uploads"
    assert uploads.exists()  # the upload was started, then refused room for its body
    assert list(uploads.iterdir()) == []
    # Chunked, the length is not known up front: the disk fills part way through the body.
    chunk = os.urandom(64 * 1024)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(32)) + b"0\r\n\r\n"
    status, _, answer = split_response(
        await raw_request(
            url,
            f"POST /v2/{name}/blobs/uploads/?digest={sha256(chunk * 32)} HTTP/1.1\r\n"
            "Host: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
            + body,
        )
    )
    assert status == b"HTTP/1.1 503 Service Unavailable", answer
    # The rest of the body is not read (past 256 KiB after the answer): the connection is
    # closed half a second after the answer, and the upload goes with it.
    for _ in range(100):  # 5 s at most
        if not list(uploads.iterdir()):
            break
        await sleep(0.05)
    assert list(uploads.iterdir()) == []
    assert temporary_files(small_disk) == []
    filler.unlink()
    response = await treq.post(f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data)
    assert response.code == 201, await response.text()


@pytest_twisted.ensureDeferred
async def test_a_chunk_stored_whole_is_202_when_only_its_hash_state_finds_no_room(
    small_disk: Path, tmp_path: Path
) -> None:
    """
    With several workers the hash state is written before the answer (the next chunk may go
    to another worker).  A chunk whose bytes all fit but whose state does not is still taken
    (202, as with one worker, which records it after the answer): a 503 would tell the client
    to send bytes the upload already has, and its retry would get 416.
    """
    (tmp_path / "process").mkdir()
    process = RegistryProcess(
        tmp_path / "process",
        {"http": {"workers": "2"}, "storage": {"rootdirectory": str(small_disk)}},
    )
    process.start()
    try:
        first, second = os.urandom(200 * 1024), os.urandom(200 * 1024)
        location = await start_upload(process.url, "team/state")
        response = await treq.patch(location, data=first, headers={"Content-Range": "0-204799"})
        assert response.code == 202, await response.text()
        filler = leave_free(small_disk, len(second))  # the chunk's pages, not one more
        response = await treq.patch(
            location, data=second, headers={"Content-Range": "204800-409599"}
        )
        assert response.code == 202, await response.text()
        assert header(response, "range") == "0-409599"
        filler.unlink()
        whole = first + second
        response = await treq.put(f"{location}?digest={sha256(whole)}")
        assert response.code == 201, await response.text()
        response, body = await get(f"{process.url}/v2/team/state/blobs/{sha256(whole)}")
        assert (response.code, body) == (200, whole)
        assert "the next request re-hashes the stored data" in process.log_text()
    finally:
        process.stop()


@pytest_twisted.ensureDeferred
async def test_a_refused_reservation_counts_as_a_storage_error(
    small_disk: Path, start_registry: Starter
) -> None:
    """A body announced larger than the disk is refused when its space is reserved (503);
    that failure of the writer counts in ``txregistry_storage_errors_total``, as any failed
    storage call does, under the call that opened the writer."""
    from tests.e2e.test_monitoring import moved, scrape

    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    url, name = registry.url, "team/app"
    before, _ = await scrape(url)
    data = os.urandom(DISK_SIZE + 1024 * 1024)
    reason = await no_space(
        await treq.post(f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data)
    )
    assert reason.startswith(f"reserving {len(data)} bytes"), reason
    after, _ = await scrape(url)
    errors = "txregistry_storage_errors_total"
    assert moved(before, after, errors, driver="filesystem", operation="writer") == 1
    assert temporary_files(small_disk) == []


@pytest_twisted.ensureDeferred
async def test_refusals_on_a_full_disk_are_one_warning_not_an_error_each(
    small_disk: Path, start_registry: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client retrying its push on a full disk: the first refusal is a warning saying the
    storage is full, the next ones info lines, none at error level (whoever alerts on errors
    is not paged per retry); a minute on, the next refusal warns again, with the count."""
    clock = [1000.0]
    monkeypatch.setattr(failures, "_full", failures._FullStorageLines(lambda: clock[0]))
    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    url, name = registry.url, "team/app"
    for blob in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2):
        await push_blob(url, name, blob)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    filler = fill(small_disk)
    try:
        data = b"a layer on a full disk" * 1000
        for _ in range(3):
            await no_space(
                await treq.post(f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data)
            )
            await no_space(await put_manifest(url, name, "v1", samples.oci_image()))
        clock[0] += failures.FULL_EVERY
        await no_space(await put_manifest(url, name, "v1", samples.oci_image()))
    finally:
        globalLogPublisher.removeObserver(events.append)
        filler.unlink()
    # Every refusal through the full-storage lines, the requests' and any background write's
    # that met the full disk meanwhile (in its own words): a warning, info lines, a warning
    # a minute on that counts them.
    chain = [
        (event["log_level"].name, formatEvent(event))
        for event in events
        if "(the storage is full" in formatEvent(event)
        or (event["log_level"].name == "info" and "No space left on device" in formatEvent(event))
    ]
    levels = [level for level, _ in chain]
    assert levels == ["warn"] + ["info"] * (len(chain) - 2) + ["warn"], chain
    assert "the storage is full: writes answer 503 until there is room; 0 refused" in chain[0][1]
    assert f"; {len(chain) - 2} refused since the last such line" in chain[-1][1]
    requests = [
        text
        for _, text in chain
        if text.startswith(("storage failure on ", "upload body refused on "))
    ]
    assert len(requests) == 7, chain
    assert not [e for e in events if e["log_level"].name in ("error", "critical")]


@pytest_twisted.ensureDeferred
async def test_readiness_stays_200_on_a_full_disk_and_says_it_is_full(
    small_disk: Path, start_registry: Starter
) -> None:
    """Pulls work on a full disk, so a load balancer must not take the registry out: the
    health answers stay 200 and say the storage is degraded, with the reason (registry:2's
    storage check only reads, so it stays ready too)."""
    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    name = "team/app"
    await push_blob(registry.url, name, samples.LAYER_1)
    filler = fill(small_disk)
    reason = (
        f"writing docker/registry/v2/txregistry/health/{probe_name()}: No space left on device"
        " (pulls are served; pushes answer 503)"
    )
    ready = (
        '{"status":"degraded","checks":{"storage":{"status":"degraded","error":"'
        + reason
        + '"}},"degraded":["storage"]}'
    ).encode()

    async def answers() -> list[tuple[int, bytes]]:
        found = []
        for path in ("/health/ready", "/health"):
            response, body = await get(registry.url + path)
            found.append((response.code, body))
        return found

    # The probe result of before the disk filled is reused for up to [health] cache (2 s).
    for _ in range(100):
        if (got := await answers())[0][
            1
        ] != b'{"status":"ok","checks":{"storage":{"status":"ok"}}}':
            break
        await sleep(0.1)
    assert got == [
        (200, ready),
        (200, ('{"status":"degraded","reason":"' + reason + '"}').encode()),
    ]
    response, body = await get(f"{registry.url}/v2/{name}/blobs/{sha256(samples.LAYER_1)}")
    assert (response.code, body) == (200, samples.LAYER_1)

    filler.unlink()
    ok = [(200, b'{"status":"ok","checks":{"storage":{"status":"ok"}}}'), (200, b'{"status":"ok"}')]
    for _ in range(100):
        if (got := await answers()) == ok:
            break
        await sleep(0.1)
    assert got == ok


def storage_calls(metrics: str, operation: str) -> float:
    """How many ``operation`` calls the storage driver made, from ``/metrics``."""
    prefix = "txregistry_storage_operation_duration_seconds_count{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(prefix) and f'operation="{operation}"' in line
    )


@pytest_twisted.ensureDeferred
async def test_a_first_start_on_a_full_disk_lists_the_repositories(
    small_disk: Path, start_registry: Starter
) -> None:
    """A registry:2 data folder that filled up, served for the first time: its catalog index
    cannot be written, so the repositories are listed from the start-up walk, kept in memory
    (not walked again per request), and the listing is written once there is room."""
    first = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    for name in ("team/app", "base"):
        await push_blob(first.url, name, samples.CONFIG)
        for blob in (samples.LAYER_1, samples.LAYER_2):
            await push_blob(first.url, name, blob)
        response = await put_manifest(first.url, name, "latest", samples.oci_image())
        assert response.code == 201, await response.text()
    await first.stop()
    # What registry:2 leaves: no index of ours.
    shutil.rmtree(small_disk / "docker/registry/v2/txregistry/catalog")
    filler = fill(small_disk)

    logs: list[str] = []
    observer = lambda event: logs.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
        listed = b'{"repositories":["base","team/app"]}'
        response, body = await get(f"{registry.url}/v2/_catalog")
        assert (response.code, body) == (200, listed)
        _, metrics = await get(f"{registry.url}/metrics")
        lists = storage_calls(metrics.decode(), "list")
        for _ in range(3):
            response, body = await get(f"{registry.url}/v2/_catalog")
            assert (response.code, body) == (200, listed)
        _, metrics = await get(f"{registry.url}/metrics")
        # No walk per request (one lists at least three folders here); a background task of
        # the registry's may list a few times meanwhile.
        assert storage_calls(metrics.decode(), "list") - lists <= 3
        response, body = await get(f"{registry.url}/ui/")
        assert response.code == 200
        assert b'href="/ui/r/team/app"' in body and b'href="/ui/r/base"' in body
    finally:
        globalLogPublisher.removeObserver(observer)
    [line] = [line for line in logs if "catalog" in line and "index" in line]
    assert line == (
        "the catalog index cannot be written (no space left on device): listing the 2"
        " repositories found at start from memory until there is room"
    )

    # Room again: a push notes its repository, and the next listing writes the index.
    # Another process (another worker) that writes the index first is seen within
    # UNWRITTEN_RECHECK: the listing is the index's again, not the start-up walk's.
    filler.unlink()
    other = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    for blob in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2):
        await push_blob(other.url, "elsewhere", blob)
    response = await put_manifest(other.url, "elsewhere", "latest", samples.oci_image())
    assert response.code == 201, await response.text()
    wanted = b'{"repositories":["base","elsewhere","team/app"]}'
    for _ in range(100):  # bounded: 20 s, four times UNWRITTEN_RECHECK
        response, body = await get(f"{registry.url}/v2/_catalog")
        if body == wanted:
            break
        await sleep(0.2)
    assert (response.code, body) == (200, wanted)
    await other.stop()
    await push_blob(registry.url, "new", samples.CONFIG)
    for blob in (samples.LAYER_1, samples.LAYER_2):
        await push_blob(registry.url, "new", blob)
    response = await put_manifest(registry.url, "new", "latest", samples.oci_image())
    assert response.code == 201, await response.text()
    response, body = await get(f"{registry.url}/v2/_catalog")
    assert (response.code, body) == (
        200,
        b'{"repositories":["base","elsewhere","new","team/app"]}',
    )
    assert (small_disk / "docker/registry/v2/txregistry/catalog/complete").exists()


@pytest_twisted.ensureDeferred
async def test_a_push_refused_by_a_full_s3_spool_answers_503_and_keeps_no_file_open(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    start_registry: Starter,
) -> None:
    """
    S3 storage whose ``spooldirectory`` (where upload parts wait until sent) is nearly full:
    a push answers 503 naming the spool folder (never a 500), no descriptor into the spool
    is left open (a part file is unlinked from the start: one left open keeps its blocks,
    unseen, until the process ends) and its usage is as before, so with room the same push
    succeeds.
    """
    with mounted_tmpfs(tmp_path, 24 * MIB) as spool:
        section = s3_server.storage_section(
            f"/spoolfull/{uuid.uuid4().hex}", chunksize="5MiB", spooldirectory=str(spool)
        )
        registry = await start_registry({"storage": section})
        url, name = registry.url, "team/app"
        filler = leave_free(spool, 3 * MIB)
        before = used(spool)
        data = os.urandom(12 * MIB)  # parts of 5 MiB: a multipart upload
        push = f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}"

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            reason = await no_space(await treq.post(push, data=data))
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert reason == f"spooling an S3 upload part in {spool}: No space left on device"
        assert not [e for e in events if e.get("log_failure") is not None]  # no traceback
        with contextlib.suppress(AssertionError):  # closed in the thread pool: bounded wait
            await wait_for(lambda: not open_in(spool) and used(spool) == before, within=5)
        assert open_in(spool) == []
        assert used(spool) == before

        filler.unlink()
        response = await treq.post(push, data=data)
        assert response.code == 201, await response.text()
        response, body = await get(f"{url}/v2/{name}/blobs/{sha256(data)}")
        assert (response.code, body) == (200, data)
        await registry.stop()


# A tmpfs counts its room in pages: a link or a small manifest takes one.
PAGE = 4096


async def answer(method: str, url: str) -> tuple[int, bytes]:
    response = await treq.request(method, url)
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_a_tag_the_disk_has_no_room_for_stays_as_it_was(
    small_disk: Path, start_registry: Starter
) -> None:
    """
    A new manifest pushed by tag with a few pages left: the disk fills at the tag's history
    link (``index/``) or at its ``current/link``.  Either way the 503 leaves the tag as it
    was (a new tag not listed, a moved one on its old manifest; the manifest may stay,
    pullable by digest, for the retry): once there is room, nothing is listed that cannot be
    pulled, and the same push succeeds.
    """
    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    url, name = registry.url, "team/app"
    for blob in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2):
        await push_blob(url, name, blob)
    response = await put_manifest(url, name, "moved", samples.oci_image())
    assert response.code == 201, await response.text()
    tags = small_disk / f"docker/registry/v2/repositories/{name}/_manifests/tags"
    failed_at: dict[str, set[str]] = {"new": set(), "moved": set()}
    for pages in range(6):
        for kind in ("new", "moved"):
            tag = f"new{pages}" if kind == "new" else "moved"
            config = json.dumps({"pages": pages, "tag": tag}).encode()
            await push_blob(url, name, config)
            body = samples.oci_image(config=config)
            listed = await answer("GET", f"{url}/v2/{name}/tags/list")
            pulled = await answer("GET", f"{url}/v2/{name}/manifests/{tag}")
            filler = leave_free(small_disk, pages * PAGE)
            try:
                response = await put_manifest(url, name, tag, body)
                if response.code == 201:
                    await response.content()
                    continue
                reason = await no_space(response)
            finally:
                filler.unlink()
            failed_at[kind].add(
                "index" if "/index/" in reason else "current" if "/current/" in reason else "other"
            )
            assert await answer("GET", f"{url}/v2/{name}/tags/list") == listed, reason
            assert await answer("GET", f"{url}/v2/{name}/manifests/{tag}") == pulled, reason
            assert (await answer("HEAD", f"{url}/v2/{name}/manifests/{tag}"))[0] == pulled[0]
            status, stored = await answer("GET", f"{url}/v2/{name}/manifests/{sha256(body)}")
            assert status == 404 or (status, stored) == (200, body), reason
            history = tags / tag / "index/sha256" / sha256(body).removeprefix("sha256:")
            assert not (tags / tag).exists() if kind == "new" else not history.exists()
            assert temporary_files(small_disk) == []
            response = await put_manifest(url, name, tag, body)
            assert response.code == 201, await response.text()
            assert await answer("GET", f"{url}/v2/{name}/manifests/{tag}") == (200, body)
    # Both writes of a tag met the full disk, for a new tag and for a moved one.
    assert {"index", "current"} <= failed_at["new"], failed_at
    assert {"index", "current"} <= failed_at["moved"], failed_at


@pytest_twisted.ensureDeferred
async def test_a_repository_whose_catalog_entry_finds_the_disk_full_is_listed(
    small_disk: Path, start_registry: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A blob mounted into a new repository with one page left: its link takes the page, and
    the catalog entry (bookkeeping for what is stored) finds the disk full.  The mount is
    201, with one warning, and the process lists the repository from memory as after a start
    on a full disk; a registry started meanwhile finds it by its walk.  Once there is room,
    a listing writes the index, and another process on the same storage (another worker)
    lists the repository from it.
    """
    monkeypatch.setattr(catalog, "UNWRITTEN_RECHECK", 0.2)
    storage = {"storage": {"rootdirectory": str(small_disk)}}
    registry = await start_registry(storage)
    worker = await start_registry(storage)  # a second worker, on the same storage
    url = registry.url
    digest = await push_blob(url, "team/app", samples.LAYER_1)
    # The push's upload folder goes after its answer: gone before the free space is set.
    uploads = small_disk / "docker/registry/v2/repositories/team/app/_uploads"
    await wait_for(lambda: not uploads.exists() or not any(uploads.iterdir()))
    entries = small_disk / "docker/registry/v2/txregistry/catalog/repositories"
    logs: list[str] = []
    observer = lambda event: logs.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    names = ["team/app"]
    try:
        # The page left must go to the link: the registry's own bookkeeping may free one
        # meanwhile (then the entry fits and nothing is to be seen), so up to three tries,
        # each with a new repository.
        for name in ("fresh/one", "fresh/two", "fresh/three"):
            filler = leave_free(small_disk, PAGE)
            try:
                response = await treq.post(
                    f"{url}/v2/{name}/blobs/uploads/?mount={digest}&from=team/app"
                )
                assert response.code == 201, await response.text()
                await response.content()
                names.append(name)
                if not any(f"catalog entry of {name}" in line for line in logs):
                    continue
                fill(small_disk)  # what the index's marker freed, when it was removed
                listed = json.dumps({"repositories": sorted(names)}, separators=(",", ":"))
                assert await answer("GET", f"{url}/v2/_catalog") == (200, listed.encode())
                # A registry started now (a restart) lists it too: it walks while the index
                # is marked incomplete, or reads the index once a page freed meanwhile let
                # this one write it.
                restarted = await start_registry(storage)
                got = await answer("GET", f"{restarted.url}/v2/_catalog")
                assert got == (200, listed.encode())
                break
            finally:
                filler.unlink()
        else:
            raise AssertionError(f"no catalog entry met the full disk: {logs}")
    finally:
        globalLogPublisher.removeObserver(observer)
    [line] = [line for line in logs if "catalog entry" in line]
    assert line == (
        f"the catalog entry of {name} cannot be written (no space left on device): listing"
        f" the {len(names)} repositories from memory until there is room"
    )
    assert (await answer("HEAD", f"{url}/v2/{name}/blobs/{digest}"))[0] == 200
    assert await answer("GET", f"{url}/v2/{name}/tags/list") == (
        200,
        json.dumps({"name": name, "tags": []}, separators=(",", ":")).encode(),
    )

    entry = entries / name.replace("/", "~")
    for _ in range(50):  # bounded: 10 s, fifty times UNWRITTEN_RECHECK
        assert await answer("GET", f"{url}/v2/_catalog") == (200, listed.encode())
        if entry.exists() and (entries.parent / "complete").exists():
            break
        await sleep(0.2)
    assert entry.read_bytes() == name.encode()
    assert (entries.parent / "complete").exists()
    assert await answer("GET", f"{worker.url}/v2/_catalog") == (200, listed.encode())


@pytest_twisted.ensureDeferred
async def test_a_link_the_full_disk_refuses_leaves_no_repository_behind(
    small_disk: Path, start_registry: Starter
) -> None:
    """A blob mounted into a new repository on a disk without a byte left: the link's write
    fails (503) after its folders were made (they take no room on a tmpfs).  They go with
    it: the repository that was never made stays unknown, to its tag list and to a walk."""
    registry = await start_registry({"storage": {"rootdirectory": str(small_disk)}})
    url = registry.url
    digest = await push_blob(url, "team/app", samples.LAYER_1)
    filler = fill(small_disk)
    try:
        reason = await no_space(
            await treq.post(f"{url}/v2/never/made/blobs/uploads/?mount={digest}&from=team/app")
        )
    finally:
        filler.unlink()
    assert "/_layers/" in reason, reason
    response = await treq.get(f"{url}/v2/never/made/tags/list")
    assert await error_codes(response) == ["NAME_UNKNOWN"]
    assert response.code == 404
    assert not (small_disk / "docker/registry/v2/repositories/never").exists()
    assert await answer("GET", f"{url}/v2/_catalog") == (200, b'{"repositories":["team/app"]}')
    assert temporary_files(small_disk) == []
