"""
An upload cancelled (DELETE) while a PATCH is still sending its body: the PATCH answers 404
BLOB_UPLOAD_UNKNOWN, as every later request on the upload does, and nothing of the upload is
left: on S3 (a real SeaweedFS) not even the multipart upload the PATCH started after the cancel
(which nothing refers to, so nothing would ever remove); on the filesystem no hash state
recorded beside the removed data (which brought the upload's folder back).
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads

from registry.storage import layout
from registry.storage.s3 import S3Driver
from registry.storage.s3._lease import LEASE_SUFFIX
from tests.e2e.client import header
from tests.e2e.harness import RegistryProcess
from tests.storage.s3server import S3Server

TOTAL = 12_000_000


@pytest.fixture
def registry_on_s3(s3_server: S3Server, tmp_path: Path) -> Iterator[RegistryProcess]:
    root = f"/cancel/{uuid.uuid4().hex}"
    section = s3_server.storage_section(root, chunksize="5MiB")
    process = RegistryProcess(tmp_path, {"storage": section, "http": {"workers": "1"}})
    process.start()
    yield process
    process.stop()


def _send_head(url: str, location: str, total: int = TOTAL) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(
        f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n".encode()
    )
    return connection


def _send_until_answered(connection: socket.socket, chunk: bytes, left: int) -> int:
    """Send up to ``left`` bytes, a chunk at a time, until the server answers: what was sent."""
    sent = 0
    for _ in range(left // len(chunk)):  # bounded: the body's chunks
        if select.select([connection], [], [], 0)[0]:
            break  # answered before the body's end
        try:
            connection.sendall(chunk)
        except OSError:  # the server answered and closed meanwhile
            break
        sent += len(chunk)
    return sent


def _read_answer(connection: socket.socket) -> tuple[int, bytes]:
    """Status and body of the one answer on ``connection`` (closed by the server after it)."""
    received = b""
    for _ in range(1000):  # bounded: a small answer
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
        head, found, body = received.partition(b"\r\n\r\n")
        if found:
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= lengths[0]:
                return int(head.split(b" ", 2)[1]), body[: lengths[0]]
    raise AssertionError(f"no whole answer: {received[:300]!r}")


async def _until(check: object, what: str) -> None:
    for _ in range(300):  # 30 s at most
        if await check():  # type: ignore[operator]
            return
        await threads.deferToThread(time.sleep, 0.1)
    raise AssertionError(f"never: {what}")


async def _start_upload(registry: RegistryProcess, name: str) -> tuple[str, str]:
    """A new upload's Location and id."""
    response = await treq.post(f"{registry.url}/v2/{name}/blobs/uploads/")
    assert response.code == 202, await response.text()
    location = header(response, "location") or ""
    return location, location.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


async def _patch_cancelled_midway(
    registry: RegistryProcess, location: str, sent_first: int, writing: Any
) -> None:
    """PATCH ``TOTAL`` bytes; once ``sent_first`` are sent and ``writing()`` says the request
    writes, cancel the upload, send the rest: the PATCH answers 404 BLOB_UPLOAD_UNKNOWN."""
    body = os.urandom(TOTAL)
    connection = _send_head(registry.url, location)
    try:
        await threads.deferToThread(connection.sendall, body[:sent_first])
        await _until(writing, "the PATCH writes the upload")
        response = await treq.delete(f"{registry.url}{location}")
        assert response.code == 204, await response.text()
        await threads.deferToThread(connection.sendall, body[sent_first:])
        status, answer = await threads.deferToThread(_read_answer, connection)
    finally:
        connection.close()
    assert status == 404, answer
    assert [e["code"] for e in json.loads(answer)["errors"]] == ["BLOB_UPLOAD_UNKNOWN"]


@pytest.mark.parametrize(
    "sent_first",
    [
        pytest.param(1_000_000, id="before-any-part"),  # the PATCH starts its own multipart
        pytest.param(7_000_000, id="after-a-part"),  # the cancel aborts the PATCH's parts
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_patch_whose_upload_is_cancelled_meanwhile(
    registry_on_s3: RegistryProcess, s3_server: S3Server, sent_first: int
) -> None:
    registry = registry_on_s3
    name = "cancel/app"
    location, upload_id = await _start_upload(registry, name)
    root = registry.sections["storage"]["rootdirectory"]
    driver = S3Driver(reactor, s3_server.settings(root))
    data_key = driver._key(layout.upload_data(name, upload_id))
    repository_key = driver._key(layout.repository(name))
    try:

        async def writing() -> bool:
            lease = await driver._client.call("HEAD", data_key + LEASE_SUFFIX, missing_ok=True)
            if lease is None:
                return False
            return sent_first < 5 * 1024 * 1024 or bool(await driver._uploads_under(data_key))

        await _patch_cancelled_midway(registry, location, sent_first, writing)
        response = await treq.get(f"{registry.url}{location}")
        assert response.code == 404, await response.text()

        # The PATCH's own multipart upload goes as the PATCH ends, which may be just after
        # its answer on a loaded machine.
        async def none_left() -> bool:
            return await driver._uploads_under(repository_key) == []

        await _until(none_left, "no multipart upload left under the repository")
        with pytest.raises(Exception, match="not found"):
            await driver.list(layout.upload_dir(name, upload_id))
    finally:
        await driver.close()
    log = registry.log_text()
    assert "storage failure" not in log
    assert "took over" not in log


@pytest_twisted.ensureDeferred
async def test_a_patch_whose_upload_is_cancelled_meanwhile_on_the_filesystem(
    tmp_path: Path,
) -> None:
    registry = RegistryProcess(tmp_path, {"http": {"workers": "1"}})
    registry.start()
    try:
        name = "cancel/app"
        location, upload_id = await _start_upload(registry, name)
        root = registry.workdir / "data"  # the harness's --storage
        folder = root / layout.upload_dir(name, upload_id)
        data = root / layout.upload_data(name, upload_id)
        assert folder.is_dir(), folder

        async def writing() -> bool:
            return data.exists() and data.stat().st_size > 0

        await _patch_cancelled_midway(registry, location, 1_000_000, writing)
        assert not folder.exists(), sorted(str(p) for p in folder.rglob("*"))
    finally:
        registry.stop()
    assert "storage failure" not in registry.log_text()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_uploads_patch_stops_writing_and_answers_before_its_end(
    tmp_path: Path,
) -> None:
    """
    The rest of a PATCH whose upload was cancelled is not written into the removed file: it
    would fill the disk (space neither ``du`` nor the purge sees) for as long as the client
    sends.  The PATCH answers 404 within a few MiB of the cancel, long before its body ends.
    """
    registry = RegistryProcess(tmp_path, {"http": {"workers": "1"}})
    registry.start()
    total, first = 256 * 1024 * 1024, 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    try:
        location, upload_id = await _start_upload(registry, "cancel/big")
        data = registry.workdir / "data" / layout.upload_data("cancel/big", upload_id)
        connection = _send_head(registry.url, location, total)
        try:
            await threads.deferToThread(connection.sendall, chunk[:first])

            async def writing() -> bool:
                return data.exists() and data.stat().st_size > 0

            await _until(writing, "the PATCH writes the upload")
            response = await treq.delete(f"{registry.url}{location}")
            assert response.code == 204, await response.text()
            sent = await threads.deferToThread(
                _send_until_answered, connection, chunk, total - first
            )
            status, answer = await threads.deferToThread(_read_answer, connection)
        finally:
            connection.close()
        assert status == 404, answer
        [error] = json.loads(answer)["errors"]
        assert error["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert "docker/registry" not in json.dumps(error)  # no storage path given away
        assert sent < total - first - 64 * len(chunk), sent  # answered long before the end
    finally:
        registry.stop()
    assert "storage failure" not in registry.log_text()
