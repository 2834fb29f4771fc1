"""
A chunked upload on S3 (a real SeaweedFS) always continues from where ``GET`` on it says, even
when its stored state lists bytes past its last saved hash state: S3 cannot give back the
parts of an unfinished upload to hash them again, so the upload is cut back to the last offset
it can hash from, and ``GET``, ``PATCH`` (its 416 ``Range``) and ``PUT`` agree on it.  And a
stop whose ``draintimeout`` cuts a ``PATCH`` keeps what that request stored, with its hash
state, as a client that leaves does.  Through registries serving over loopback.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from treq.response import _Response
from twisted.internet import reactor, threads

from registry.storage import layout
from registry.storage.s3 import S3Driver
from registry.storage.s3._lease import LEASE_SUFFIX
from tests.e2e.client import header
from tests.e2e.harness import RegistryProcess
from tests.e2e.test_upload_cancel import _send_head, _start_upload
from tests.storage.s3server import S3Server

PART = 5 * 1024 * 1024  # the registries' chunksize


def _sections(s3_server: S3Server, workers: str, **http: str) -> dict[str, dict[str, str]]:
    root = f"/resume/{uuid.uuid4().hex}"
    return {
        "storage": s3_server.storage_section(root, chunksize="5MiB"),
        "http": {"workers": workers, **http},
    }


@pytest.fixture
def registry_on_s3(s3_server: S3Server, tmp_path: Path) -> Iterator[RegistryProcess]:
    process = RegistryProcess(tmp_path, _sections(s3_server, "2"))
    process.start()
    yield process
    process.stop()


def _driver(registry: RegistryProcess, s3_server: S3Server) -> S3Driver:
    return S3Driver(reactor, s3_server.settings(registry.sections["storage"]["rootdirectory"]))


async def _patch(url: str, data: bytes, offset: int) -> _Response:
    return await treq.patch(
        url,
        data=data,
        headers={
            "Content-Range": f"{offset}-{offset + len(data) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )


def _range(offset: int) -> str:
    return f"0-{max(offset - 1, 0)}"


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _closing(url: str, blob: bytes) -> str:
    """The closing PUT's URL (the upload's, with the blob's digest)."""
    return f"{url}{'&' if '?' in url else '?'}digest={_digest(blob)}"


async def _resume_and_commit(
    registry: RegistryProcess, name: str, location: str, blob: bytes
) -> int:
    """Continue from the offset ``GET`` reports, commit, check the stored blob; the offset."""
    url = registry.url + location
    response = await treq.get(url)
    assert response.code == 204, await response.text()
    offset = int((header(response, "range") or "").split("-")[1]) + 1
    if header(response, "range") == "0-0":
        offset = 0
    # Any other offset is refused with the same range.
    response = await _patch(url, blob[offset + 1 :], offset + 1)
    assert response.code == 416, await response.text()
    assert header(response, "range") == _range(offset)
    response = await _patch(url, blob[offset:], offset)
    assert response.code == 202, await response.text()
    assert header(response, "range") == f"0-{len(blob) - 1}"
    digest = _digest(blob)
    response = await treq.put(_closing(url, blob))
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry.url}/v2/{name}/blobs/{digest}")
    assert response.code == 200
    assert hashlib.sha256(await response.content()).hexdigest() == digest.split(":")[1]
    return offset


@pytest.mark.parametrize(
    ("first", "second", "earlier_state", "expected"),
    [
        pytest.param(3_000_000, 6_000_000, False, 0, id="no-state"),
        pytest.param(PART, 6_000_000, True, PART, id="to-a-part-end"),
        pytest.param(3_000_000, 6_000_000, True, 0, id="state-inside-a-part"),
        pytest.param(1_000_000, 2_000_000, True, 1_000_000, id="within-the-tail"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_parts_past_the_last_hash_state(
    registry_on_s3: RegistryProcess,
    s3_server: S3Server,
    first: int,
    second: int,
    earlier_state: bool,
    expected: int,
) -> None:
    """
    A PATCH of ``first`` bytes, then one of ``second`` bytes whose hash state is deleted and
    the state it started from put back (``earlier_state``) or not, as a process stopped
    between recording the file and its hash state leaves the upload: its S3 state lists bytes
    past its last hash state.  GET, PATCH and PUT agree on the last offset with a hash state
    that the file can be cut back to (a part's end, or within the tail still held), else 0;
    the client resumes there, and the blob is right.  (Before: GET said one offset, PATCH's
    416 another, and a PATCH or PUT at the upload's size failed with 503 "path not found"
    for good.)
    """
    registry = registry_on_s3
    name = "resume/parts"
    location, upload_id = await _start_upload(registry, name)
    blob = os.urandom(first + second + 2_000_000)
    url = registry.url + location
    response = await _patch(url, blob[:first], 0)
    assert response.code == 202, await response.text()
    driver = _driver(registry, s3_server)
    earlier = layout.upload_hashstate(name, upload_id, "sha256", first)
    saved = await driver.get_content(earlier)
    end = first + second
    response = await _patch(url, blob[first:end], first)
    assert response.code == 202, await response.text()
    await driver.delete(layout.upload_hashstate(name, upload_id, "sha256", end))
    if earlier_state:
        await driver.put_content(earlier, saved)
    response = await treq.get(url)
    assert header(response, "range") == _range(expected)
    # The closing PUT (no bytes, no Content-Range) is told where the upload is, not committed.
    response = await treq.put(_closing(url, blob))
    assert response.code == 416, await response.text()
    assert header(response, "range") == _range(expected)
    offset = await _resume_and_commit(registry, name, location, blob)
    assert offset == expected
    assert "continued from offset" in registry.log_text()
    assert await driver._uploads_under(driver._key(layout.repository(name))) == []
    await driver.close()


def _send_slowly(connection: socket.socket, body: bytes, rate: float) -> int:
    """Send ``body`` at about ``rate`` bytes a second until done or cut: what was sent."""
    step = 256 * 1024
    sent = 0
    began = time.monotonic()
    while sent < len(body):
        try:
            connection.sendall(body[sent : sent + step])
        except OSError:
            break
        sent += len(body[sent : sent + step])
        ahead = sent / rate - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)
    return sent


@pytest.mark.parametrize("workers", ["2", "1"])
@pytest_twisted.ensureDeferred
async def test_patch_cut_by_the_drain_deadline_resumes(
    s3_server: S3Server, tmp_path: Path, workers: str
) -> None:
    """
    SIGTERM during a slow PATCH, with a short ``draintimeout``: the PATCH is cut, and what it
    stored is kept with its hash state before the process ends.  After a restart the client
    continues from the offset GET reports and the blob commits with the right digest.
    (Before, with workers = 2: GET said 0-0, PATCH from 0 got 416 with the stored parts' range
    and the upload could never be completed; with workers = 1 every byte was dropped.)
    """
    registry = RegistryProcess(tmp_path, _sections(s3_server, workers, draintimeout="2s"))
    registry.start()
    try:
        name = "resume/drain"
        location, upload_id = await _start_upload(registry, name)
        blob = os.urandom(60_000_000)
        connection = _send_head(registry.url, location, len(blob))
        try:
            sending = threads.deferToThread(_send_slowly, connection, blob, 5_000_000)
            await threads.deferToThread(time.sleep, 3)
            registry.send_stop()
            sent = await sending
        finally:
            connection.close()
        assert sent < len(blob)
        await threads.deferToThread(registry.wait_stopped)
        log = registry.log_text()
        assert "draintimeout reached: cutting 1 connection(s)" in log
        assert "kept at" in log
        # The request's lease on the upload was given back.
        driver = _driver(registry, s3_server)
        lease = driver._key(layout.upload_data(name, upload_id)) + LEASE_SUFFIX
        assert await driver._client.call("HEAD", lease, missing_ok=True) is None
        registry.start()
        try:
            offset = await _resume_and_commit(registry, name, location, blob)
            assert offset > 0
            # No multipart upload is left behind under the repository.
            repository = driver._key(layout.repository(name))
            assert await driver._uploads_under(repository) == []
        finally:
            await driver.close()
    finally:
        registry.stop()
