"""
Pushes whose digest is known up front are written at the blob's own key on S3 (a multipart
upload completed only once the digest matched), so commit needs no server-side copy, and
unverified bytes are never readable at a content address.  A real txregistry (in process) on a
real SeaweedFS, through a front that records every S3 request.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from registry.api.digests import Digest
from registry.ops.purge import purge_uploads
from registry.storage import layout
from registry.storage.driver import PathNotFoundError
from registry.storage.s3 import S3Driver
from registry.storage.s3._writer import S3Writer
from tests.e2e.harness import InProcessRegistry, sleep, start_in_process
from tests.storage.s3front import RecordingFront, s3_front  # noqa: F401 - the fixture
from tests.storage.s3server import S3Server
from tests.storage.test_driver_s3 import settings_for

MIB = 1024 * 1024
BODY_SIZE = 12 * MIB  # three 5 MiB parts: a real multipart upload


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_suffix(digest: str) -> str:
    """The end of the blob's object key (whatever the root directory)."""
    return layout.blob_data(Digest.parse(digest))


class Pushed:
    def __init__(self, registry: InProcessRegistry, driver: S3Driver, root: str) -> None:
        self.registry = registry
        self.driver = driver
        self.root = root

    async def multipart_uploads(self) -> list[tuple[str, str]]:
        """Unfinished multipart uploads anywhere under the registry's root."""
        found: list[tuple[str, str]] = await self.driver._uploads_under(self.root.strip("/"))
        return found

    async def blob_stored(self, digest: str) -> bool:
        try:
            await self.driver.stat(blob_suffix(digest))
        except PathNotFoundError:
            return False
        return True


@pytest_twisted.async_yield_fixture
async def pushed(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Pushed]:
    root = f"/staged/{uuid.uuid4().hex}"
    sections = {
        "storage": {
            "driver": "s3",
            "bucket": s3_server.bucket,
            "region": s3_server.region,
            "regionendpoint": s3_front.endpoint,
            "accesskey": s3_server.access_key,
            "secretkey": s3_server.secret_key,
            "rootdirectory": root,
            "chunksize": "5MiB",
        },
        "http": {"workers": "1"},
    }
    registry = await start_in_process(tmp_path, sections)
    # Assertions read S3 directly, not through the front.
    driver = S3Driver(reactor, settings_for(s3_server, rootdirectory=root))
    yield Pushed(registry, driver, root)
    await driver.close()
    await registry.stop()


def assert_written_in_place(front: RecordingFront, digest: str) -> None:
    """The bytes went as parts to the blob's key, completed there, and S3 copied nothing."""
    suffix = blob_suffix(digest)
    at_blob = front.on_key(suffix)
    assert [s for s in front.seen if s.is_copy] == []
    assert any(s.method == "PUT" and "partNumber" in s.query for s in at_blob)
    assert any(s.method == "POST" and "uploadId" in s.query for s in at_blob)  # completed
    assert not any(s.method == "DELETE" for s in at_blob)


async def assert_served(pushed: Pushed, digest: str, data: bytes) -> None:
    """The registry knows the blob, and S3 holds exactly the pushed bytes at its key."""
    response = await treq.head(f"{pushed.registry.url}/v2/app/blobs/{digest}")
    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Length") == [str(len(data))]
    assert await pushed.driver.get_content(blob_suffix(digest)) == data


@pytest_twisted.ensureDeferred
async def test_monolithic_push_is_written_at_the_blob_key(
    pushed: Pushed,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    data = os.urandom(BODY_SIZE)
    digest = digest_of(data)
    response = await treq.post(f"{pushed.registry.url}/v2/app/blobs/uploads/?digest={digest}", data)
    assert response.code == 201, await treq.content(response)
    assert response.headers.getRawHeaders("Docker-Content-Digest") == [digest]
    assert_written_in_place(s3_front, digest)
    await assert_served(pushed, digest, data)
    assert await pushed.multipart_uploads() == []


@pytest_twisted.ensureDeferred
async def test_final_chunk_push_is_written_at_the_blob_key(
    pushed: Pushed,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    """POST, then the whole blob in the closing ``PUT ?digest=`` (an empty upload so far)."""
    data = os.urandom(BODY_SIZE)
    digest = digest_of(data)
    started = await treq.post(f"{pushed.registry.url}/v2/app/blobs/uploads/")
    assert started.code == 202
    await treq.content(started)
    location = started.headers.getRawHeaders("Location")[0]
    url = location if location.startswith("http") else pushed.registry.url + location
    separator = "&" if "?" in url else "?"
    response = await treq.put(
        f"{url}{separator}digest={digest}",
        data,
        headers={"Content-Range": f"0-{len(data) - 1}"},
    )
    assert response.code == 201, await treq.content(response)
    assert_written_in_place(s3_front, digest)
    await assert_served(pushed, digest, data)
    assert await pushed.multipart_uploads() == []


@pytest_twisted.ensureDeferred
async def test_wrong_digest_leaves_nothing_at_the_content_address(
    pushed: Pushed,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    data = os.urandom(BODY_SIZE)
    claimed = digest_of(b"something else")
    response = await treq.post(
        f"{pushed.registry.url}/v2/app/blobs/uploads/?digest={claimed}", data
    )
    assert response.code == 400
    assert b"DIGEST_INVALID" in await treq.content(response)
    at_blob = s3_front.on_key(blob_suffix(claimed))
    # The parts went to the claimed address as an unfinished upload, which was aborted.
    assert any(s.method == "PUT" and "partNumber" in s.query for s in at_blob)
    assert any(s.method == "DELETE" and "uploadId" in s.query for s in at_blob)
    assert not any(s.method == "POST" and "uploadId" in s.query for s in at_blob)
    assert not await pushed.blob_stored(claimed)
    assert await pushed.multipart_uploads() == []
    head = await treq.head(f"{pushed.registry.url}/v2/app/blobs/{claimed}")
    assert head.code == 404


class _HalfBody(Protocol):
    """Sends a request's head and part of its announced body, then hangs up when told."""

    def __init__(self, head: bytes, body: bytes) -> None:
        self._head = head
        self._body = body
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._head)
        self.transport.write(self._body)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_body_leaves_nothing_behind(
    pushed: Pushed,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    data = os.urandom(BODY_SIZE)
    digest = digest_of(data)
    port = int(pushed.registry.url.rsplit(":", 1)[1])
    head = (
        f"POST /v2/app/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    client = _HalfBody(head, data[: 8 * MIB])
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    suffix = blob_suffix(digest)
    # Wait until a part reached the blob's key (the body is being staged there), then leave.
    for _ in range(400):
        if any("partNumber" in s.query for s in s3_front.on_key(suffix)):
            break
        await sleep(0.05)
    else:
        pytest.fail("no part reached the blob's key")
    assert client.transport is not None
    client.transport.loseConnection()
    await client.lost
    for _ in range(400):
        if any(s.method == "DELETE" and "uploadId" in s.query for s in s3_front.on_key(suffix)):
            break
        await sleep(0.05)
    else:
        pytest.fail("the staged multipart upload was never aborted")
    assert await pushed.multipart_uploads() == []
    assert not await pushed.blob_stored(digest)
    assert not any(s.method == "POST" and "uploadId" in s.query for s in s3_front.on_key(suffix))


@pytest_twisted.ensureDeferred
async def test_purge_aborts_staged_writes_a_killed_process_left(pushed: Pushed) -> None:
    """A process killed mid-body leaves an unfinished multipart upload at the blob's key and
    nothing else; purge aborts it once it is older than the purge age."""
    digest = Digest.parse(digest_of(b"never finished"))
    writer = await pushed.driver.staged_writer(layout.blob_data(digest))
    pending = writer.write(os.urandom(12 * MIB))
    if pending is not None:
        await pending
    for _ in range(400):  # the first part is on its way: the multipart upload exists
        if await pushed.multipart_uploads():
            break
        await sleep(0.05)
    assert len(await pushed.multipart_uploads()) >= 1
    # Written now (its mark held): kept whatever the age.
    assert await purge_uploads(pushed.driver, 0, time.time() + 1) == 0
    # ...and the writer is dropped without close or cancel, as by kill -9: its mark is
    # renewed no more and names a process that is gone (one started at another time).
    assert isinstance(writer, S3Writer)
    mark = writer._mark
    assert mark is not None
    mark._renewal.stop()
    holder = json.loads(mark._body)
    holder["started"] = -1
    await pushed.driver._client.call("PUT", mark.key, body=json.dumps(holder).encode())
    assert await purge_uploads(pushed.driver, 3600, time.time()) == 0  # too young
    assert await purge_uploads(pushed.driver, 0, time.time() + 1) >= 1
    for _ in range(400):  # parts still in flight from the dropped writer
        if not await pushed.multipart_uploads():
            break
        await purge_uploads(pushed.driver, 0, time.time() + 1)
        await sleep(0.05)
    assert await pushed.multipart_uploads() == []
    assert not await pushed.blob_stored(str(digest))
