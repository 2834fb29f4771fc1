"""
Every failure of the client is the `ClientError` subclass docs/client.md's error table names,
however the body is read and whatever the caller passed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

from registry.client import (
    BadResponse,
    ClientError,
    NotFound,
    OCILayout,
    Rejected,
    Unavailable,
    Upload,
)
from tests.client.conftest import ClientFactory
from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry
from tests.e2e.tools import Registry2Process
from tests.fakes.upstream import FakeUpstream


@pytest_twisted.ensureDeferred
async def test_read_of_a_blob_with_the_wrong_bytes_is_a_bad_response(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """A body that does not hash to its digest is a BadResponse from `read()` as from
    `write_to()`: never Unavailable, which would tell the caller to try again."""
    image = fake.content.add_image("library/alpine", "latest", [4096])
    fake.switches.corrupt_blobs = True
    client = make_client(fake.url)
    blob = await client.blob("library/alpine", image.layers[0].digest)
    with pytest.raises(BadResponse) as info:
        await blob.read()
    assert not isinstance(info.value, Unavailable)
    assert f"not {image.layers[0].digest}" in str(info.value)
    assert isinstance(info.value, ClientError)


@pytest_twisted.ensureDeferred
async def test_a_malformed_digest_is_rejected_before_anything_is_sent(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A digest the caller got wrong is a `Rejected` with ``DIGEST_INVALID`` and no status
    (nothing was asked of the registry), from every call that takes one."""
    client = make_client(registry.url)
    before = client.requests
    calls = [
        lambda: client.blob("dg/a", "sha256:xyz"),
        lambda: client.blob_exists("dg/a", "md5:abc"),
        lambda: client.blob_head("dg/a", "sha256:" + "0" * 63),
        lambda: client.get_manifest("dg/a", "sha256:abc"),
        lambda: client.head_manifest("dg/a", "nope:x"),
        lambda: client.upload_blob("dg/a", b"bytes", "sha256:abc"),
        lambda: client.download_blob("dg/a", "sha256:abc", tmp_path / "out"),
    ]
    for call in calls:
        with pytest.raises(Rejected) as info:
            await call()
        assert (info.value.status, info.value.code) == (None, "DIGEST_INVALID")
        assert "is not a digest" in str(info.value)
    assert client.requests == before
    layout = await OCILayout.create(reactor, str(tmp_path / "layout"))
    with pytest.raises(Rejected):
        await layout.blob_size("sha256:abc")


@pytest_twisted.ensureDeferred
async def test_cancel_upload_on_registry2_uses_the_latest_location(
    registry2: Registry2Process, make_client: ClientFactory
) -> None:
    """registry:2 changes an upload's ``_state`` with each PATCH and refuses an older one
    (404 BLOB_UPLOAD_INVALID): cancelling uses the latest location and really deletes the
    session; a refused cancel is raised, never taken as "already gone"."""
    client = make_client(f"http://{registry2.host}")
    upload = await client.start_upload("cancel/me")
    first = upload.location
    await client.upload_chunk(upload, b"some bytes")
    assert upload.offset == 10 and upload.location != first
    stale = Upload(upload.name, first)
    with pytest.raises(NotFound) as info:
        await client.cancel_upload(stale)
    assert info.value.code == "BLOB_UPLOAD_INVALID"
    assert await client.upload_status(upload) == 10  # still there
    await client.cancel_upload(upload)
    with pytest.raises(NotFound) as info:
        await client.upload_status(upload)
    assert info.value.code == "BLOB_UPLOAD_UNKNOWN"
    await client.cancel_upload(upload)  # gone: not an error


@pytest_twisted.ensureDeferred
async def test_cancelling_a_chunked_upload_deletes_its_session(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """`upload_blob` from a file without ``digest=`` (PATCH chunks): cancelled half-way, it
    deletes the session it opened (the caller never got its `Upload`), as the monolithic
    path does."""
    registry = await start_registry()
    uploads = tmp_path / "registry0" / "data" / "docker/registry/v2/repositories/up/load/_uploads"
    source = tmp_path / "big"
    source.write_bytes(os.urandom(16 * 1024 * 1024))
    client = make_client(registry.url)
    running = Deferred.fromCoroutine(client.upload_blob("up/load", source, chunk_size=16384))

    def has_bytes() -> bool:
        return (
            any(p.stat().st_size > 0 for p in uploads.rglob("data")) if uploads.is_dir() else False
        )

    for _ in range(10_000):
        if has_bytes() or running.called:
            break
        await deferLater(reactor, 0.001, lambda: None)
    assert has_bytes() and not running.called
    running.cancel()
    with pytest.raises(CancelledError):
        await running
    assert [p.parent.name for p in uploads.rglob("data")] == []
    for folder in uploads.iterdir():
        response, _ = await get(f"{registry.url}/v2/up/load/blobs/uploads/{folder.name}")
        assert response.code == 404
