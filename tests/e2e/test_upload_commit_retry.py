"""
A final ``PUT`` retried after its commit was cut short: the process was killed (or the client
never got its 201) after the commit linked the blob and moved the upload's data to it, but
before it removed the upload's folder.

The leftover state is made on disk (or in the bucket) as the kill leaves it: a chunked upload,
then what `UploadStore.commit` does up to the move (the link, then the move).  The retried
``PUT ?digest=D`` without a body is answered as the commit it retries, 201 with the blob's
headers, when the upload's last recorded hash state proves it became ``D``; anything else is
404 BLOB_UPLOAD_UNKNOWN, and the upload's status says the same instead of a range no request
can continue.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.driver import PathNotFoundError
from registry.storage.s3 import S3Driver
from tests.e2e.client import error_codes, header, sha256, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry, RegistryProcess
from tests.storage.s3server import S3Server

NAME = "retry/me"
FIRST, SECOND = 700_001, 400_009


async def chunked_upload(url: str) -> tuple[str, bytes]:
    """An upload given two PATCHes, its hash state recorded; its location and bytes."""
    data = os.urandom(FIRST + SECOND)
    location = await start_upload(url, NAME)
    for start, end in ((0, FIRST), (FIRST, FIRST + SECOND)):
        response = await treq.patch(
            location, data=data[start:end], headers={"Content-Range": f"{start}-{end - 1}"}
        )
        await response.content()
        assert response.code == 202
    response = await treq.get(location)  # answered once the last request's state is recorded
    await response.content()
    assert (response.code, header(response, "range")) == (204, f"0-{len(data) - 1}")
    return location, data


def upload_folder(root: Path, location: str) -> Path:
    return root / layout.upload_dir(NAME, location.rsplit("/", 1)[1])


def cut_commit(root: Path, location: str, data: bytes) -> Path:
    """
    On the filesystem under ``root``, what a commit does before a kill between the move of the
    data and the removal of the upload's folder: the link, then the move.  The folder.
    """
    digest = Digest.parse(sha256(data))
    folder = upload_folder(root, location)
    link = root / layout.layer_link(NAME, digest)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(str(digest))
    blob = root / layout.blob_data(digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.rename(folder / "data", blob)
    assert (folder / "startedat").is_file()
    assert (folder / f"txhashstates/sha256/{len(data)}").is_file()
    return folder


async def status(location: str) -> tuple[int, str | None, list[str] | None]:
    """An upload's status: code, ``Range``, and the error codes of a 404."""
    response = await treq.get(location)
    if response.code == 404:
        return 404, header(response, "range"), await error_codes(response)
    await response.content()
    return response.code, header(response, "range"), None


async def put(location: str, digest: str, body: bytes | None = None) -> tuple[int, object]:
    """A final PUT: its code and its error codes (or its 201's headers)."""
    response = await treq.put(f"{location}?digest={digest}", data=body)
    if response.code == 201:
        await response.content()
        return 201, (header(response, "location"), header(response, "docker-content-digest"))
    return response.code, await error_codes(response)


async def check_blob(url: str, data: bytes) -> None:
    response = await treq.get(f"{url}/v2/{NAME}/blobs/{sha256(data)}")
    body = await response.content()
    assert response.code == 200
    assert header(response, "docker-content-digest") == sha256(data)
    assert hashlib.sha256(body).hexdigest() == sha256(data)[7:]
    assert body == data


def root_of(registry: InProcessRegistry, tmp_path: Path) -> Path:
    assert registry.url
    return tmp_path / "registry0" / "data"


@pytest_twisted.ensureDeferred
async def test_the_retried_put_is_answered_as_the_commit(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    location, data = await chunked_upload(registry.url)
    folder = cut_commit(root_of(registry, tmp_path), location, data)

    assert await put(location, sha256(data)) == (
        201,
        (f"/v2/{NAME}/blobs/{sha256(data)}", sha256(data)),
    )
    assert not folder.exists()
    await check_blob(registry.url, data)
    # Done: the upload is gone, as after any commit.
    assert await put(location, sha256(data)) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert await status(location) == (404, None, ["BLOB_UPLOAD_UNKNOWN"])


@pytest_twisted.ensureDeferred
async def test_the_status_claims_no_bytes_once_the_data_is_gone(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    """Not 204 with the whole range (the hash states' offsets): no PATCH can continue it."""
    location, data = await chunked_upload(registry.url)
    folder = cut_commit(root_of(registry, tmp_path), location, data)
    assert await status(location) == (404, None, ["BLOB_UPLOAD_UNKNOWN"])
    assert folder.is_dir()  # a status never removes it: the retried PUT still completes
    assert (await put(location, sha256(data)))[0] == 201


@pytest_twisted.ensureDeferred
async def test_only_the_same_digest_and_no_bytes_complete_it(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    location, data = await chunked_upload(registry.url)
    folder = cut_commit(root_of(registry, tmp_path), location, data)
    other = sha256(data + b"x")

    response = await treq.patch(
        location, data=b"more", headers={"Content-Range": f"{len(data)}-{len(data) + 3}"}
    )
    assert (response.code, await error_codes(response)) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert await put(location, other) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert await put(location, sha256(data), b"x") == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert await put(location, sha256(data[:-1])) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert folder.is_dir()
    response = await treq.head(f"{registry.url}/v2/{NAME}/blobs/{other}")
    assert response.code == 404

    assert (await put(location, sha256(data)))[0] == 201
    assert not folder.exists()
    await check_blob(registry.url, data)


@pytest_twisted.ensureDeferred
async def test_without_a_hash_state_nothing_proves_the_commit(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    location, data = await chunked_upload(registry.url)
    folder = cut_commit(root_of(registry, tmp_path), location, data)
    shutil.rmtree(folder / "txhashstates")
    assert await status(location) == (404, None, ["BLOB_UPLOAD_UNKNOWN"])
    assert await put(location, sha256(data)) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert folder.is_dir()  # left for the purge, as any unknown leftover
    await check_blob(registry.url, data)  # the blob itself was committed


@pytest.fixture
def registry_process(tmp_path: Path) -> Iterator[RegistryProcess]:
    process = RegistryProcess(tmp_path)
    process.start()
    yield process
    process.stop()


@pytest_twisted.ensureDeferred
async def test_the_retry_after_a_kill_and_a_restart(registry_process: RegistryProcess) -> None:
    location, data = await chunked_upload(registry_process.url)
    registry_process.kill()
    folder = cut_commit(registry_process.workdir / "data", location, data)
    registry_process.start()

    assert await status(location) == (404, None, ["BLOB_UPLOAD_UNKNOWN"])
    assert await put(location, sha256(data)) == (
        201,
        (f"/v2/{NAME}/blobs/{sha256(data)}", sha256(data)),
    )
    assert not folder.exists()
    await check_blob(registry_process.url, data)


@pytest_twisted.ensureDeferred
async def test_the_retried_put_on_s3(s3_server: S3Server, start_registry: Starter) -> None:
    """
    On S3 an unfinished upload's bytes are not at its data key (see `registry.storage.s3`), so
    the status cannot tell a moved upload from one in progress; the retried PUT is answered
    all the same, and another digest is not.
    """
    root = f"/retry/{uuid.uuid4().hex}"
    registry = await start_registry({"storage": s3_server.storage_section(root)})
    driver = S3Driver(reactor, s3_server.settings(root))
    try:
        location, data = await chunked_upload(registry.url)
        upload = location.rsplit("/", 1)[1]
        digest = Digest.parse(sha256(data))
        # What `UploadStore.commit` does on S3 up to the move: the data made whole at its key,
        # the link, the move (a server-side copy, then the source's deletion).
        writer = await driver.writer(layout.upload_data(NAME, upload), append=True)
        await writer.commit()
        await writer.close()
        await driver.put_content(layout.layer_link(NAME, digest), str(digest).encode())
        await driver.move(layout.upload_data(NAME, upload), layout.blob_data(digest))

        assert await put(location, sha256(data + b"x")) == (404, ["BLOB_UPLOAD_UNKNOWN"])
        assert await driver.list(layout.upload_dir(NAME, upload))  # kept
        assert await put(location, sha256(data)) == (
            201,
            (f"/v2/{NAME}/blobs/{sha256(data)}", sha256(data)),
        )
        with pytest.raises(PathNotFoundError):  # gone: a folder is only the keys below it
            await driver.list(layout.upload_dir(NAME, upload))
        await check_blob(registry.url, data)
    finally:
        await driver.close()
