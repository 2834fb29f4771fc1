"""
An upload registry:2 (Debian's docker-registry, 2.8) left in progress on S3 is continued by
txregistry on the same bucket and root, as on the filesystem (a real SeaweedFS).

registry:2's S3 driver keeps an unfinished upload's bytes as a multipart upload of its ``data``
key (parts of ``chunksize``, the last one as small as its request left it), and after a second
request also a copy of the first request's bytes as the object at the key; it records the
offset each request reached as ``hashstates/sha256/<offset>``.  txregistry answers the upload's
status with the size stored, and takes the multipart upload over on the next PATCH or PUT.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest_twisted
import treq
from twisted.internet import reactor

from registry.storage import layout
from registry.storage.driver import PathNotFoundError
from registry.storage.s3 import S3Driver
from registry.storage.s3 import _multipart as multipart
from tests.e2e.client import error_codes, header, sha256, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.tools import Registry2Process
from tests.storage.s3server import S3Server

MIB = 1024 * 1024
NAME = "app/one"
OCTETS = {"Content-Type": "application/octet-stream"}


@attrs.define
class Shared:
    """registry:2 (not started) and a driver reading S3 directly, on one bucket and root."""

    registry2: Registry2Process
    driver: S3Driver
    section: dict[str, str]


@pytest_twisted.async_yield_fixture
async def shared(s3_server: S3Server, tmp_path: Path) -> AsyncIterator[Shared]:
    root = f"/r2s3/{uuid.uuid4().hex}"
    storage = Registry2Process.S3_STORAGE.format(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
        endpoint=s3_server.endpoint,
        bucket=s3_server.bucket,
        root=root,
        chunksize=5 * MIB,
    )
    registry2 = Registry2Process(tmp_path, storage=storage)
    driver = S3Driver(reactor, s3_server.settings(root))
    yield Shared(registry2, driver, s3_server.storage_section(root, chunksize="5MiB"))
    registry2.stop()
    await driver.close()


def upload_id(location: str) -> str:
    return urlsplit(location).path.rsplit("/", 1)[1]


async def patch(location: str, data: bytes, start: int | None = None) -> tuple[int, str | None]:
    headers = dict(OCTETS)
    if start is not None:
        headers["Content-Range"] = f"{start}-{start + len(data) - 1}"
    response = await treq.patch(location, data=data, headers=headers)
    await response.content()
    return response.code, header(response, "range")


async def status(location: str) -> tuple[int, str | None]:
    response = await treq.get(location)
    await response.content()
    return response.code, header(response, "range")


async def registry2_upload(url: str, *chunks: bytes) -> str:
    """An upload on registry:2 given ``chunks`` one PATCH each; its last location."""
    location = await start_upload(url, NAME)
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        response = await treq.patch(location, data=chunk, headers=OCTETS)
        await response.content()
        assert (response.code, header(response, "range")) == (202, f"0-{sent - 1}")
        location = url + (header(response, "location") or "").removeprefix(url)
    return location


async def s3_upload_parts(driver: S3Driver, upload: str) -> list[list[int]]:
    """The sizes of the parts of each multipart upload of the upload's data key."""
    key = driver._key(layout.upload_data(NAME, upload))
    ids = await multipart.uploads_of(driver._client, key)
    return [
        [part.size for part in await multipart.list_parts(driver._client, key, one)] for one in ids
    ]


@pytest_twisted.ensureDeferred
async def test_uploads_registry2_left_in_progress_on_s3_are_continued(
    shared: Shared, start_registry: Starter
) -> None:
    small = os.urandom(150_145)
    big = os.urandom(12 * MIB + 12_345)
    first, second = os.urandom(150_145), os.urandom(100)
    rests = {
        "small": (small, [os.urandom(70_000), os.urandom(3 * MIB)]),
        "big": (big, [os.urandom(MIB), os.urandom(6 * MIB + 7)]),
        "twice": (first + second, [os.urandom(1_000), os.urandom(2_000)]),
        "empty": (b"", [os.urandom(10), os.urandom(20)]),
    }
    registry2 = shared.registry2
    registry2.start()
    try:
        url = f"http://{registry2.host}"
        uploads = {
            "small": upload_id(await registry2_upload(url, small)),
            "big": upload_id(await registry2_upload(url, big)),
            "twice": upload_id(await registry2_upload(url, first, second)),
            "empty": upload_id(await registry2_upload(url)),
        }
    finally:
        registry2.stop()
    # What registry:2 left: unfinished multipart uploads (the big one in two parts), and for
    # the upload PATCHed twice the first request's bytes at the key besides.
    assert await s3_upload_parts(shared.driver, uploads["small"]) == [[len(small)]]
    assert await s3_upload_parts(shared.driver, uploads["big"]) == [[5 * MIB, len(big) - 5 * MIB]]
    assert await s3_upload_parts(shared.driver, uploads["twice"]) == [[len(first + second)]]
    assert await s3_upload_parts(shared.driver, uploads["empty"]) == [[]]
    stale = await shared.driver.stat(layout.upload_data(NAME, uploads["twice"]))
    assert stale.size == len(first)

    registry = await start_registry({"storage": shared.section})
    for label, (stored, rest) in rests.items():
        location = f"{registry.url}/v2/{NAME}/blobs/uploads/{uploads[label]}"
        assert await status(location) == (204, f"0-{max(len(stored) - 1, 0)}"), label
        whole = stored
        for chunk in rest:
            code, answered = await patch(location, chunk, start=len(whole))
            whole += chunk
            assert (code, answered) == (202, f"0-{len(whole) - 1}"), label
            assert await status(location) == (204, f"0-{len(whole) - 1}"), label
        digest = sha256(whole)
        response = await treq.put(f"{location}?digest={digest}")
        assert response.code == 201, (label, await response.text())
        assert header(response, "docker-content-digest") == digest
        response = await treq.get(f"{registry.url}/v2/{NAME}/blobs/{digest}")
        body = await response.content()
        assert response.code == 200, label
        assert header(response, "docker-content-digest") == digest
        assert body == whole, label
        assert hashlib.sha256(body).hexdigest() == digest[7:]
        # Nothing of the upload is left, not even registry:2's multipart upload.
        assert await s3_upload_parts(shared.driver, uploads[label]) == []


@pytest_twisted.ensureDeferred
async def test_a_registry2_upload_put_whole_with_the_rest(
    shared: Shared, start_registry: Starter
) -> None:
    """The rest of the blob in the final PUT (no PATCH first), with a PATCH without
    Content-Range before it: both continue registry:2's bytes."""
    stored, middle, last = os.urandom(7 * MIB + 3), os.urandom(4_096), os.urandom(5_000)
    shared.registry2.start()
    try:
        upload = upload_id(await registry2_upload(f"http://{shared.registry2.host}", stored))
    finally:
        shared.registry2.stop()
    registry = await start_registry({"storage": shared.section})
    location = f"{registry.url}/v2/{NAME}/blobs/uploads/{upload}"
    whole = stored + middle
    assert await patch(location, middle) == (202, f"0-{len(whole) - 1}")
    whole += last
    response = await treq.put(f"{location}?digest={sha256(whole)}", data=last, headers=OCTETS)
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry.url}/v2/{NAME}/blobs/{sha256(whole)}")
    assert await response.content() == whole


@pytest_twisted.ensureDeferred
async def test_registry2_uploads_cancelled_or_purged_stay_gone(
    shared: Shared, start_registry: Starter
) -> None:
    """
    An upload registry:2 cancelled (DELETE) is gone from S3; one whose folder was removed
    (registry:2's upload purge deletes the folder's objects and leaves the multipart upload
    of its data) is no upload: txregistry answers BLOB_UPLOAD_UNKNOWN for both and never
    completes the multipart upload left behind.
    """
    shared.registry2.start()
    try:
        url = f"http://{shared.registry2.host}"
        cancelling = await registry2_upload(url, os.urandom(150_145))
        response = await treq.delete(cancelling)
        await response.content()
        assert response.code == 204
        cancelled = upload_id(cancelling)
        purged = upload_id(await registry2_upload(url, os.urandom(6 * MIB)))
    finally:
        shared.registry2.stop()
    driver = shared.driver
    for path in (
        layout.upload_started_at(NAME, purged),
        layout.upload_registry2_hashstates(NAME, purged, "sha256"),
    ):
        await driver.delete(path)
    assert await s3_upload_parts(driver, purged) == [[6 * MIB]]

    registry = await start_registry({"storage": shared.section})
    for upload in (cancelled, purged):
        location = f"{registry.url}/v2/{NAME}/blobs/uploads/{upload}"
        response = await treq.get(location)
        assert response.code == 404
        assert await error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
        response = await treq.patch(
            location, data=b"more", headers={**OCTETS, "Content-Range": "150145-150148"}
        )
        assert response.code == 404
        assert await error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
        response = await treq.put(f"{location}?digest={sha256(b'more')}", data=b"more")
        assert response.code == 404
        assert await error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
        try:
            await driver.stat(layout.upload_data(NAME, upload))
        except PathNotFoundError:
            pass
        else:
            raise AssertionError(f"the upload {upload} came back at its data key")
    assert await s3_upload_parts(driver, cancelled) == []
    assert await s3_upload_parts(driver, purged) == [[6 * MIB]]
