"""
``txregistry purge-uploads --age`` on S3 (a real SeaweedFS) judges an upload idle by the
driver's own account of its writes: on S3 an upload's bytes are kept beside its ``data`` key
(which exists only once committed) and a request writing them renews a lease there.  An
upload PATCHed a moment ago, or being PATCHed right now, is kept however long ago it started;
one left alone for longer than ``--age`` goes.  Through a registry serving over loopback and
the command as a child process, as an operator runs them.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads

from registry.storage import layout
from registry.storage.s3 import S3Driver
from registry.storage.s3._lease import LEASE_SUFFIX
from tests.e2e.client import header
from tests.e2e.harness import RegistryProcess
from tests.e2e.test_upload_cancel import _read_answer, _send_head, _start_upload, _until
from tests.ops.test_cli import cli
from tests.storage.s3server import S3Server

# The purge's age: the uploads below are left alone for longer than this first (S3's
# modification times are whole seconds; a purge run as a child process takes a second or two).
AGE = 6.0


@pytest.fixture
def registry_on_s3(s3_server: S3Server, tmp_path: Path) -> Iterator[RegistryProcess]:
    root = f"/purge/{uuid.uuid4().hex}"
    section = s3_server.storage_section(root, chunksize="5MiB")
    process = RegistryProcess(tmp_path, {"storage": section, "http": {"workers": "1"}})
    process.start()
    yield process
    process.stop()


async def _older_than_age(started: float) -> None:
    """Wait until uploads started at ``started`` have been left alone for longer than AGE."""
    await _until(lambda: _later(started + AGE + 1.5), "the uploads are older than the age")


async def _later(when: float) -> bool:
    return time.time() > when


async def _purge(registry: RegistryProcess) -> str:
    result = await cli("purge-uploads", "--config", str(registry.config), "--age", f"{AGE:g}s")
    assert result.code == 0, result
    assert "Traceback" not in result.err, result.err
    return result.out


async def _status(registry: RegistryProcess, location: str) -> tuple[int, str | None]:
    response = await treq.get(f"{registry.url}{location}")
    await response.content()
    return response.code, header(response, "range")


@pytest_twisted.ensureDeferred
async def test_a_recently_patched_upload_survives_the_purge(
    registry_on_s3: RegistryProcess,
) -> None:
    """
    Both uploads started longer than ``--age`` ago; one was PATCHed just before the purge.
    It stays, with its bytes; the other goes.  (The purge looked at ``<upload>/data``, which
    S3 has only once an upload is committed, so only the start counted: both went.)
    """
    registry = registry_on_s3
    started = time.time()
    idle, _ = await _start_upload(registry, "purge/idle")
    recent, _ = await _start_upload(registry, "purge/recent")
    await _older_than_age(started)
    response = await treq.patch(
        f"{registry.url}{recent}",
        data=b"recent bytes",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.code == 202, await response.text()
    recent = header(response, "location") or recent

    out = await _purge(registry)
    assert out.startswith("purge-uploads: purged 1 upload idle for longer than 6.0 s in "), out

    assert await _status(registry, idle) == (404, None)
    assert await _status(registry, recent) == (204, "0-11")
    assert "storage failure" not in registry.log_text()


@pytest_twisted.ensureDeferred
async def test_an_upload_being_patched_survives_the_purge_and_completes(
    registry_on_s3: RegistryProcess, s3_server: S3Server
) -> None:
    """
    An upload started longer than ``--age`` ago whose PATCH is still sending its body (held
    open while the purge runs) is kept: the lease its writer renews proves it is being
    written.  The PATCH then ends with 202 and the PUT stores the blob under its digest.
    (Purged, the PATCH answered 404 BLOB_UPLOAD_UNKNOWN after the whole body.)
    """
    registry = registry_on_s3
    name = "purge/streaming"
    started = time.time()
    location, upload_id = await _start_upload(registry, name)
    await _older_than_age(started)

    body = os.urandom(12_000_000)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    root = registry.sections["storage"]["rootdirectory"]
    driver = S3Driver(reactor, s3_server.settings(root))
    lease_key = driver._key(layout.upload_data(name, upload_id)) + LEASE_SUFFIX
    connection = _send_head(registry.url, location, len(body))
    try:
        first = 1_000_000
        await threads.deferToThread(connection.sendall, body[:first])

        async def writing() -> bool:
            return await driver._client.call("HEAD", lease_key, missing_ok=True) is not None

        await _until(writing, "the PATCH writes the upload")
        out = await _purge(registry)
        assert out.startswith("purge-uploads: purged 0 uploads idle for longer than 6.0 s in "), out
        await threads.deferToThread(connection.sendall, body[first:])
        status, answer = await threads.deferToThread(_read_answer, connection)
    finally:
        connection.close()
        await driver.close()
    assert status == 202, answer

    separator = "&" if "?" in location else "?"
    response = await treq.put(f"{registry.url}{location}{separator}digest={digest}")
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == digest
    response = await treq.get(f"{registry.url}/v2/{name}/blobs/{digest}")
    assert response.code == 200
    content = await response.content()
    assert hashlib.sha256(content).hexdigest() == digest.removeprefix("sha256:")
    assert len(content) == len(body)
    log = registry.log_text()
    assert "storage failure" not in log
    assert "took over" not in log
