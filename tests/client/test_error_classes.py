"""
Every failure of the client is the `ClientError` subclass docs/client.md's error table names,
however the body is read and whatever the caller passed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from registry.client import (
    BadResponse,
    ClientError,
    NotFound,
    OCILayout,
    RegistryClient,
    Rejected,
    TooLarge,
    Unavailable,
    Upload,
)
from tests.client import images
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
async def test_a_body_over_the_callers_own_limit_is_too_large_naming_the_limit(
    fake: FakeUpstream, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The caller's limit is not the registry's fault: a `TooLarge` (still a `BadResponse`)
    carrying the limit, from a blob read whole, a manifest and a layout blob alike."""
    image = fake.content.add_image("library/alpine", "latest", [4096])
    client = make_client(fake.url)
    blob = await client.blob("library/alpine", image.layers[0].digest)
    with pytest.raises(TooLarge) as info:
        await blob.read(max_size=100)
    assert info.value.limit == 100
    assert isinstance(info.value, BadResponse)
    assert str(info.value) == "blob of 4096 bytes larger than 100 bytes"
    small = make_client(fake.url, max_manifest_size=64)
    with pytest.raises(TooLarge) as info:
        await small.get_manifest("library/alpine", "latest")
    assert (info.value.limit, str(info.value)) == (64, "manifest larger than 64 bytes")
    layout = await OCILayout.create(reactor, tmp_path / "l")
    dgst = await layout.write_bytes(b"x" * 10)
    with pytest.raises(TooLarge) as info:
        await layout.read_blob(dgst, max_size=5)
    assert info.value.limit == 5
    assert await layout.read_blob(dgst, max_size=10) == b"x" * 10


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


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass  # twisted's own resolutions cannot be cancelled either


@implementer(IHostnameResolver)
class _HeldResolver:
    """Resolves ``name`` to 127.0.0.1, while ``holding`` only once `release` is called (other
    names as ``inner`` does): a connection stays in name resolution as long as the test
    wants."""

    def __init__(self, inner: IHostnameResolver, name: str) -> None:
        self._inner = inner
        self._name = name
        self.holding = False
        self.pending: list[tuple[IResolutionReceiver, int]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: object = None,
        transportSemantics: str = "TCP",
    ) -> IResolutionReceiver:
        if hostName != self._name:
            return self._inner.resolveHostName(
                resolutionReceiver, hostName, portNumber, addressTypes, transportSemantics
            )
        resolutionReceiver.resolutionBegan(_Resolution(hostName))
        self.pending.append((resolutionReceiver, portNumber))
        if not self.holding:
            self.release()
        return resolutionReceiver

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for receiver, port in pending:
            receiver.addressResolved(IPv4Address("TCP", "127.0.0.1", port))
            receiver.resolutionComplete()


@pytest_twisted.ensureDeferred
async def test_a_cancel_while_the_host_name_resolves_is_a_cancel(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Cancelled while its connection's host name still resolves, a call raises
    CancelledError (twisted reports that cancel as a DNSLookupError; taken for the registry
    being unreachable, it made `upload_blob` go on as if nothing happened)."""
    registry = await start_registry()
    port = urlsplit(registry.url).port
    held = _HeldResolver(reactor.nameResolver, "registry.test")
    previous = reactor.installNameResolver(held)
    try:
        client = make_client(f"http://registry.test:{port}")
        await client.check()  # the challenge is known: the upload starts with its POST
        await client.session.pool.closeCachedConnections()
        held.holding = True
        source = tmp_path / "small"
        source.write_bytes(os.urandom(65536))
        running = Deferred.fromCoroutine(client.upload_blob("held/name", source, chunk_size=16384))
        for _ in range(1000):
            if held.pending:
                break
            await deferLater(reactor, 0.001, lambda: None)
        assert held.pending and not running.called
        running.cancel()
        with pytest.raises(CancelledError):
            await running
        held.release()
        response, _ = await get(f"{registry.url}/v2/held/name/tags/list")
        assert response.code == 404  # nothing was pushed
    finally:
        reactor.installNameResolver(previous)


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


class _SlowUploads(Resource):
    """A registry's upload route that opens a session at once and answers the POST only when
    `answer` is called; DELETE closes a session."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[str] = set()
        self.deletes: list[str] = []
        self.waiting: list[tuple[Request, str]] = []

    def render_GET(self, request: Request) -> bytes:
        return b"{}"  # /v2/: no authentication

    def render_POST(self, request: Request) -> int:
        session = f"/v2/held/name/blobs/uploads/{len(self.sessions) + 1}"
        self.sessions.add(session)
        self.waiting.append((request, session))
        return NOT_DONE_YET

    def answer(self) -> None:
        for request, session in self.waiting:
            request.setResponseCode(202)
            request.setHeader("Location", session)
            request.setHeader("Range", "0-0")
            request.finish()
        self.waiting = []

    def render_DELETE(self, request: Request) -> bytes:
        self.deletes.append(request.path.decode())
        self.sessions.discard(request.path.decode())
        request.setResponseCode(204)
        return b""


async def _held_open(client: RegistryClient, uploads: _SlowUploads) -> Deferred[Upload]:
    """`start_upload` running, its POST held by ``uploads`` (the session opened there)."""
    opening = Deferred.fromCoroutine(client.start_upload("held/name"))
    for _ in range(1000):
        if uploads.waiting:
            break
        await deferLater(reactor, 0.001, lambda: None)
    assert uploads.waiting and not opening.called
    return opening


@pytest_twisted.ensureDeferred
async def test_a_cancel_while_the_session_is_being_opened_cancels_that_session(
    make_client: ClientFactory,
) -> None:
    """Cancelled after its POST reached the registry, `start_upload` raises CancelledError at
    once; the session the registry opened is cancelled once its answer comes, and `close`
    waits for that (a ``txregistry copy`` stopped there left it open)."""
    uploads = _SlowUploads()
    port = reactor.listenTCP(0, Site(uploads), interface="127.0.0.1")
    try:
        client = make_client(f"http://127.0.0.1:{port.getHost().port}")
        await client.check()
        opening = await _held_open(client, uploads)
        assert uploads.sessions == {"/v2/held/name/blobs/uploads/1"}
        opening.cancel()
        with pytest.raises(CancelledError):
            await opening
        assert uploads.deletes == []  # not before the registry named the session
        uploads.answer()
        await client.close()
        assert uploads.deletes == ["/v2/held/name/blobs/uploads/1"]
        assert uploads.sessions == set()
        assert client.uncancelled_uploads == []
    finally:
        await port.stopListening()


class _SilentDeletes(_SlowUploads):
    """Answers the POST when told; never answers a DELETE."""

    def render_DELETE(self, request: Request) -> int:
        self.deletes.append(request.path.decode())
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_closing_after_a_cancelled_open_waits_for_one_delete_at_most(
    make_client: ClientFactory,
) -> None:
    """The delete of a session whose opening was cancelled gets one try within the client's
    timeout: `close` is not held for every retry of a registry that does not answer, and the
    session is reported as not cancelled."""
    uploads = _SilentDeletes()
    port = reactor.listenTCP(0, Site(uploads), interface="127.0.0.1")
    try:
        client = make_client(f"http://127.0.0.1:{port.getHost().port}", timeout=0.5, retries=5)
        await client.check()
        opening = await _held_open(client, uploads)
        opening.cancel()
        with pytest.raises(CancelledError):
            await opening
        uploads.answer()
        await client.close()
        assert uploads.deletes[:1] == ["/v2/held/name/blobs/uploads/1"]
        assert len(uploads.deletes) <= 2  # not 1 + 5 retries
        assert [u.rsplit("/", 1)[1] for u in client.uncancelled_uploads] == ["1"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_error_names_its_detail_and_every_error_of_the_body(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    """What a manifest lacks is in the error's ``detail`` (registry:2 puts the digest there,
    after an UNKNOWN entry): the message names it, and every entry, not only the first."""
    client = make_client((await start_registry()).url)
    missing = images.digest(b"a layer that was never pushed")
    body, blobs = images.image("amd64", [])
    for dgst, data in blobs.items():
        await client.upload_blob("team/app", data, dgst)
    manifest = json.loads(body)
    manifest["layers"] = [{"mediaType": images.OCI_LAYER, "digest": missing, "size": 29}]
    with pytest.raises(Rejected) as refused:
        await client.put_manifest("team/app", "v1", json.dumps(manifest).encode())
    assert refused.value.code == "MANIFEST_BLOB_UNKNOWN"
    assert missing in str(refused.value), str(refused.value)
