"""
The upload purge on S3 (a real SeaweedFS) aborts only the multipart uploads nothing writes or
will continue.  Uploads being written at that moment (a chunked PATCH, a single-request
``POST ?digest=`` staged at the blob's own key) and uploads it keeps (written a moment ago,
though their multipart upload started longer than ``--age`` ago) keep theirs and complete;
those a killed process left go, even at ``--age 0s``.  (The purge aborted every multipart
upload started longer than ``--age`` ago: the PATCH answered 400 BLOB_UPLOAD_INVALID "the
multipart upload ... is gone", the POST 503 NoSuchUpload.)  Through a registry serving over
loopback and the command as a child process, as an operator runs them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads

from registry.ops.purge import purge_uploads
from registry.storage import layout
from registry.storage.s3 import S3Driver
from registry.storage.s3 import _multipart as multipart
from registry.storage.s3._lease import MARKS_FOLDER
from tests.e2e.client import header
from tests.e2e.harness import RegistryProcess
from tests.e2e.test_upload_cancel import _read_answer, _send_head, _start_upload, _until
from tests.ops.test_cli import cli
from tests.storage.s3server import S3Server

MIB = 1024 * 1024


@pytest.fixture
def registry_on_s3(s3_server: S3Server, tmp_path: Path) -> Iterator[RegistryProcess]:
    root = f"/purgewrites/{uuid.uuid4().hex}"
    section = s3_server.storage_section(root, chunksize="5MiB")
    process = RegistryProcess(tmp_path, {"storage": section, "http": {"workers": "1"}})
    process.start()
    yield process
    process.stop()


@pytest_twisted.async_yield_fixture
async def bucket(registry_on_s3: RegistryProcess, s3_server: S3Server) -> AsyncIterator[S3Driver]:
    root = registry_on_s3.sections["storage"]["rootdirectory"]
    driver = S3Driver(reactor, s3_server.settings(root))
    yield driver
    await driver.close()


async def _multipart_uploads(driver: S3Driver, below: str = "") -> list[tuple[str, str]]:
    """(key, upload id) of the unfinished multipart uploads under the root (ListMultipartUploads)."""
    found: list[tuple[str, str]] = await driver._uploads_under(driver._key(below or "docker"))
    return found


async def _purge(registry: RegistryProcess, age: str) -> str:
    result = await cli("purge-uploads", "--config", str(registry.config), "--age", age)
    assert result.code == 0, result
    assert "Traceback" not in result.err, result.err
    return result.out


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _post_head(url: str, name: str, digest: str, total: int) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = socket.create_connection((host, int(port)), timeout=60)
    connection.sendall(
        f"POST /v2/{name}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n".encode()
    )
    return connection


async def _blob_is(registry: RegistryProcess, name: str, body: bytes) -> None:
    response = await treq.get(f"{registry.url}/v2/{name}/blobs/{_digest(body)}")
    assert response.code == 200
    content = await response.content()
    assert len(content) == len(body)
    assert hashlib.sha256(content).hexdigest() == _digest(body).removeprefix("sha256:")


async def _commit(registry: RegistryProcess, location: str, body: bytes) -> None:
    separator = "&" if "?" in location else "?"
    response = await treq.put(f"{registry.url}{location}{separator}digest={_digest(body)}")
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == _digest(body)


async def _patch(registry: RegistryProcess, location: str, data: bytes) -> str:
    response = await treq.patch(
        f"{registry.url}{location}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.code == 202, await response.text()
    return header(response, "location") or location


@pytest_twisted.ensureDeferred
async def test_a_chunked_patch_in_flight_survives_a_purge_at_age_0(
    registry_on_s3: RegistryProcess, bucket: S3Driver
) -> None:
    """A PATCH whose body is still coming, its multipart upload started: ``--age 0s`` keeps
    it; the PATCH answers 202 and the PUT stores the blob under its digest."""
    registry = registry_on_s3
    name = "purge/patching"
    location, _ = await _start_upload(registry, name)
    body = os.urandom(14 * MIB)
    connection = _send_head(registry.url, location, len(body))
    try:
        first = 8 * MIB
        await threads.deferToThread(connection.sendall, body[:first])

        async def started() -> bool:
            return bool(await _multipart_uploads(bucket, layout.REPOSITORIES))

        await _until(started, "the PATCH's multipart upload started")
        out = await _purge(registry, "0s")
        assert out.startswith("purge-uploads: purged 0 uploads"), out
        assert await _multipart_uploads(bucket, layout.REPOSITORIES)
        await threads.deferToThread(connection.sendall, body[first:])
        status, answer = await threads.deferToThread(_read_answer, connection)
    finally:
        connection.close()
    assert status == 202, answer
    await _commit(registry, location, body)
    await _blob_is(registry, name, body)
    assert "storage failure" not in registry.log_text()


@pytest_twisted.ensureDeferred
async def test_a_single_request_push_in_flight_survives_a_purge_at_age_0(
    registry_on_s3: RegistryProcess, bucket: S3Driver
) -> None:
    """A ``POST ?digest=`` whose body is still coming, staged as a multipart upload at the
    blob's key: ``--age 0s`` keeps it; the POST answers 201 with the digest."""
    registry = registry_on_s3
    name = "purge/posting"
    body = os.urandom(14 * MIB)
    digest = _digest(body)
    connection = _post_head(registry.url, name, digest, len(body))
    try:
        first = 8 * MIB
        await threads.deferToThread(connection.sendall, body[:first])

        async def started() -> bool:
            return bool(await _multipart_uploads(bucket, layout.BLOBS))

        await _until(started, "the POST's multipart upload started at the blob's key")
        await _purge(registry, "0s")
        assert await _multipart_uploads(bucket, layout.BLOBS)
        await threads.deferToThread(connection.sendall, body[first:])
        status, answer = await threads.deferToThread(_read_answer, connection)
    finally:
        connection.close()
    assert status == 201, answer
    await _blob_is(registry, name, body)
    assert await _multipart_uploads(bucket) == []
    assert "storage failure" not in registry.log_text()


@pytest_twisted.ensureDeferred
async def test_an_upload_written_recently_keeps_its_older_multipart_upload(
    registry_on_s3: RegistryProcess, bucket: S3Driver
) -> None:
    """Two PATCHes further apart than the age: the upload's multipart upload started longer
    than ``--age`` ago, but the upload was written a moment ago.  Kept, and it completes."""
    registry = registry_on_s3
    name = "purge/between"
    location, _ = await _start_upload(registry, name)
    body = os.urandom(14 * MIB)
    location = await _patch(registry, location, body[: 7 * MIB])
    assert await _multipart_uploads(bucket, layout.REPOSITORIES)
    await threads.deferToThread(time.sleep, 7.0)
    location = await _patch(registry, location, body[7 * MIB : 12 * MIB])
    out = await _purge(registry, "5s")
    assert out.startswith("purge-uploads: purged 0 uploads"), out
    assert await _multipart_uploads(bucket, layout.REPOSITORIES)
    location = await _patch(registry, location, body[12 * MIB :])
    await _commit(registry, location, body)
    await _blob_is(registry, name, body)
    assert "storage failure" not in registry.log_text()


@pytest_twisted.ensureDeferred
async def test_the_writes_of_a_killed_process_are_aborted_at_age_0(
    registry_on_s3: RegistryProcess, bucket: S3Driver
) -> None:
    """A registry killed (``kill -9``) mid-PATCH and mid-``POST ?digest=`` leaves multipart
    uploads (at the upload's data, at the blob's key), a lease and a write's mark naming a
    process that is gone: ``--age 0s`` aborts both uploads and removes what marked them."""
    registry = registry_on_s3
    location, _ = await _start_upload(registry, "purge/killed-patch")
    patch_body = os.urandom(14 * MIB)
    patching = _send_head(registry.url, location, len(patch_body))
    post_body = os.urandom(14 * MIB)
    posting = _post_head(registry.url, "purge/killed-post", _digest(post_body), len(post_body))
    try:
        await threads.deferToThread(patching.sendall, patch_body[: 8 * MIB])
        await threads.deferToThread(posting.sendall, post_body[: 8 * MIB])

        async def both_started() -> bool:
            return bool(
                await _multipart_uploads(bucket, layout.REPOSITORIES)
                and await _multipart_uploads(bucket, layout.BLOBS)
            )

        await _until(both_started, "both multipart uploads started")
        registry.kill()
    finally:
        patching.close()
        posting.close()
    marks = bucket._key(MARKS_FOLDER)
    left, _ = await bucket._walk(marks + "/")
    assert [key for key in left if not key.endswith("/")], "no mark of the staged write"

    await _purge(registry, "0s")
    assert await _multipart_uploads(bucket) == []
    left, _ = await bucket._walk(marks + "/")
    assert [key for key in left if not key.endswith("/")] == []


@pytest_twisted.ensureDeferred
async def test_a_kept_upload_keeps_the_multipart_upload_its_state_records_only(
    registry_on_s3: RegistryProcess, bucket: S3Driver
) -> None:
    """
    Beside the multipart upload a kept upload's state records, another one of its data (a
    writer killed before it recorded its own) is aborted once older than the age; the
    recorded one stays, however old, and the upload completes.  (In process, with a clock
    ahead: S3 measures the upload's idle time on its own clock, so it stays recent.)
    """
    registry = registry_on_s3
    name = "purge/stray"
    location, _ = await _start_upload(registry, name)
    body = os.urandom(12 * MIB)
    location = await _patch(registry, location, body[: 7 * MIB])
    [(key, recorded)] = await _multipart_uploads(bucket, layout.REPOSITORIES)
    stray = await multipart.create(bucket._client, key)

    assert await purge_uploads(bucket, 50, time.time() + 100) == 1
    assert await _multipart_uploads(bucket, layout.REPOSITORIES) == [(key, recorded)]
    assert stray != recorded
    location = await _patch(registry, location, body[7 * MIB :])
    await _commit(registry, location, body)
    await _blob_is(registry, name, body)
    assert await _multipart_uploads(bucket) == []
