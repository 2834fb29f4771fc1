"""
A registry that misbehaves on purpose, as the source of a copy: a layer that streams on past
the size its manifest declares, a layer with the wrong bytes, a manifest cut short, a wrong
``Docker-Content-Digest``.  Each is refused with the error that names what went wrong, and
nothing is kept at the destination.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from registry.client import BadResponse, Unavailable
from registry.client.copy import LayoutImage, RegistryImage, copy_image
from registry.client.layout import OCILayout
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter

LAYER = os.urandom(100_000)
LAYER_DIGEST = images.digest(LAYER)
MANIFEST, BLOBS = images.image("amd64", [LAYER])
MANIFEST_DIGEST = images.digest(MANIFEST)
# What the endless layer sends at most, so that a client that never stops reading ends the
# test (with a digest mismatch) instead of filling the disk.
CAP = 64 * 1024 * 1024
_FILLER = b"x" * 65536


@implementer(IPullProducer)
class _Endless:
    """A body without a length that goes on until `CAP` bytes, written as fast as the
    connection takes them."""

    def __init__(self, server: HostileSource, request: Request) -> None:
        self._server = server
        self._request = request
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        if self._server.sent >= CAP:
            self.stopped = True
            self._request.unregisterProducer()
            self._request.finish()
            return
        self._server.sent += len(_FILLER)
        self._request.write(_FILLER)

    def stopProducing(self) -> None:
        self.stopped = True


class HostileSource(Resource):
    """Serves repository ``x``: tag ``latest`` is `MANIFEST`, an image of one 100,000-byte
    layer.  ``layer``: ``exact``, ``endless`` (no ``Content-Length``, on past the declared
    size), ``long`` (1,000 bytes more, with a ``Content-Length`` that says so), ``short`` (a
    complete chunked body 10 bytes short) or ``wrong-bytes`` (the right length, one byte
    flipped).  ``manifest``: ``exact``, ``cut`` (``Content-Length`` 50 bytes
    more than is sent before the connection closes) or ``wrong-digest`` (a
    ``Docker-Content-Digest`` of other bytes)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.layer = "exact"
        self.manifest = "exact"
        self.sent = 0  # bytes of the endless layer written
        # How each layer body ended: "finished" (all sent) or "cut" (the client left).
        self.layer_bodies: list[Deferred[str]] = []

    def render_GET(self, request: Request) -> bytes | int:
        path = request.path.decode()
        request.setHeader(b"content-type", b"application/json")
        if path == "/v2/":
            return b"{}"
        if path == "/v2/x/tags/list":
            return json.dumps({"name": "x", "tags": ["latest"]}).encode()
        if path in ("/v2/x/manifests/latest", f"/v2/x/manifests/{MANIFEST_DIGEST}"):
            return self._manifest(request)
        digest = path.removeprefix("/v2/x/blobs/")
        if digest == LAYER_DIGEST:
            return self._layer(request)
        if digest in BLOBS:
            request.setHeader(b"docker-content-digest", digest.encode())
            return BLOBS[digest]
        request.setResponseCode(404)
        return json.dumps({"errors": [{"code": "NOT_FOUND", "message": path}]}).encode()

    def _manifest(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", images.OCI_MANIFEST.encode())
        announced = images.digest(b"other") if self.manifest == "wrong-digest" else MANIFEST_DIGEST
        request.setHeader(b"docker-content-digest", announced.encode())
        if self.manifest != "cut":
            return MANIFEST
        request.setHeader(b"content-length", str(len(MANIFEST) + 50).encode())
        request.write(MANIFEST)
        request.channel.transport.loseConnection()
        return NOT_DONE_YET

    def _layer(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"docker-content-digest", LAYER_DIGEST.encode())
        ended: Deferred[Any] = request.notifyFinish()
        ended.addCallbacks(lambda _: "finished", lambda _: "cut")
        self.layer_bodies.append(ended)
        if self.layer == "long":
            return LAYER + b"x" * 1000
        if self.layer == "wrong-bytes":
            return bytes([LAYER[0] ^ 0xFF]) + LAYER[1:]
        if self.layer == "short":
            request.write(LAYER[:-10])  # no Content-Length: chunked, then its last chunk
            request.finish()
            return NOT_DONE_YET
        if self.layer == "endless":
            request.registerProducer(_Endless(self, request), False)
            return NOT_DONE_YET
        return LAYER


@pytest_twisted.async_yield_fixture
async def hostile() -> AsyncIterator[tuple[str, HostileSource]]:
    resource = HostileSource()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}", resource
    await port.stopListening()


def uploads_left(registry_folder: Path, name: str) -> list[Path]:
    """The upload sessions of ``name`` that still hold a data file in the in-process
    registry's storage."""
    uploads = registry_folder / "data" / "docker/registry/v2/repositories" / name / "_uploads"
    return list(uploads.rglob("data")) if uploads.is_dir() else []


@pytest_twisted.ensureDeferred
async def test_a_layer_longer_than_declared_stops_the_copy_into_a_layout(
    hostile: tuple[str, HostileSource], make_client: ClientFactory, tmp_path: Path
) -> None:
    """A layer body without a length that goes on past the size the manifest declares is a
    BadResponse as soon as it does: the source is cut off there (not read until it stops),
    and the layout keeps no temporary file and no layer."""
    url, source = hostile
    source.layer = "endless"
    layout = await OCILayout.create(reactor, tmp_path / "out")
    with pytest.raises(BadResponse) as info:
        await copy_image(RegistryImage(make_client(url), "x", "latest"), LayoutImage(layout, "v1"))
    assert str(info.value) == f"body of {LAYER_DIGEST} longer than 100000 bytes"
    assert [await body for body in source.layer_bodies] == ["cut"]
    assert source.sent < CAP
    stored = tmp_path / "out" / "blobs" / "sha256"
    assert [p.name for p in stored.iterdir() if p.name.startswith(".tmp-")] == []
    assert not (stored / LAYER_DIGEST[7:]).exists()


@pytest_twisted.ensureDeferred
async def test_a_layer_announcing_more_than_declared_is_refused_before_its_body(
    hostile: tuple[str, HostileSource], make_client: ClientFactory, tmp_path: Path
) -> None:
    """A ``Content-Length`` other than the declared size is a BadResponse from the headers,
    naming both lengths."""
    url, source = hostile
    source.layer = "long"
    layout = await OCILayout.create(reactor, tmp_path / "out")
    with pytest.raises(BadResponse) as info:
        await copy_image(RegistryImage(make_client(url), "x", "latest"), LayoutImage(layout, "v1"))
    assert str(info.value) == (
        f"blob {LAYER_DIGEST}: 101000 bytes announced from byte 0, its size is 100000"
    )
    assert not (tmp_path / "out" / "blobs" / "sha256" / LAYER_DIGEST[7:]).exists()


@pytest_twisted.ensureDeferred
async def test_a_layer_ending_short_of_its_declared_size_stores_nothing(
    hostile: tuple[str, HostileSource], make_client: ClientFactory, tmp_path: Path
) -> None:
    """A complete chunked body shorter than the declared size is not the blob, and is said
    to be short (not only that it hashes wrong); nothing is kept."""
    url, source = hostile
    source.layer = "short"
    layout = await OCILayout.create(reactor, tmp_path / "out")
    with pytest.raises(BadResponse) as info:
        await copy_image(RegistryImage(make_client(url), "x", "latest"), LayoutImage(layout, "v1"))
    assert str(info.value) == f"body of {LAYER_DIGEST} ended after 99990 of 100000 bytes"
    stored = tmp_path / "out" / "blobs" / "sha256"
    assert [p.name for p in stored.iterdir() if p.name.startswith(".tmp-")] == []
    assert not (stored / LAYER_DIGEST[7:]).exists()


@pytest_twisted.ensureDeferred
async def test_a_layer_longer_than_declared_stops_a_copy_between_registries(
    hostile: tuple[str, HostileSource],
    start_registry: Starter,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    """Registry to registry, the body streams straight into the destination's upload: it
    is cut off at the declared size, the upload is cancelled, nothing is committed."""
    url, source = hostile
    source.layer = "endless"
    destination = make_client((await start_registry()).url)
    with pytest.raises(BadResponse) as info:
        await copy_image(
            RegistryImage(make_client(url), "x", "latest"),
            RegistryImage(destination, "copy/x", "v1"),
        )
    assert str(info.value) == (
        f"source {url}, blob x@{LAYER_DIGEST}: body of {LAYER_DIGEST} longer than 100000 bytes"
    )
    assert [await body for body in source.layer_bodies] == ["cut"]
    assert source.sent < CAP
    assert await destination.blob_exists("copy/x", LAYER_DIGEST) is None
    assert uploads_left(tmp_path / "registry0", "copy/x") == []
    assert destination.uncancelled_uploads == []


@pytest_twisted.ensureDeferred
async def test_a_source_failure_is_the_sources_error_not_the_destinations(
    hostile: tuple[str, HostileSource],
    start_registry: Starter,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    """A blob streamed from one registry into another that hashes wrong is the source's
    BadResponse, naming the source: not an Unavailable saying the destination did not answer.
    The destination stores nothing."""
    url, source = hostile
    source.layer = "wrong-bytes"
    destination = make_client((await start_registry()).url)
    with pytest.raises(BadResponse) as info:
        await destination.copy_blob_from(make_client(url), "x", "copy/x", LAYER_DIGEST)
    wrong = images.digest(bytes([LAYER[0] ^ 0xFF]) + LAYER[1:])
    assert str(info.value) == (
        f"source {url}, blob x@{LAYER_DIGEST}: body hashes to {wrong}, not {LAYER_DIGEST}"
    )
    # The destination did nothing wrong: none of its errors.
    assert destination.errors == 0
    assert await destination.blob_exists("copy/x", LAYER_DIGEST) is None
    assert uploads_left(tmp_path / "registry0", "copy/x") == []


@pytest_twisted.ensureDeferred
async def test_a_manifest_cut_short_is_said_in_words(
    hostile: tuple[str, HostileSource], make_client: ClientFactory
) -> None:
    """A manifest body that ends before its ``Content-Length``: Unavailable, with a reason
    a person reads (not the repr of Twisted's list of failures)."""
    url, source = hostile
    source.manifest = "cut"
    with pytest.raises(Unavailable) as info:
        await make_client(url, retries=0).get_manifest("x", "latest")
    assert str(info.value) == "connection lost reading manifest: closed by the other side"


@pytest_twisted.ensureDeferred
async def test_a_wrong_docker_content_digest_is_named(
    hostile: tuple[str, HostileSource], make_client: ClientFactory
) -> None:
    """A manifest fetched by digest whose ``Docker-Content-Digest`` names other bytes: the
    message names the digest that did not match, not only the one the body hashes to."""
    url, source = hostile
    source.manifest = "wrong-digest"
    with pytest.raises(BadResponse) as info:
        await make_client(url).get_manifest("x", MANIFEST_DIGEST)
    assert str(info.value) == (
        f"manifest x@{MANIFEST_DIGEST} hashes to {MANIFEST_DIGEST}, "
        f"not the {images.digest(b'other')} announced in Docker-Content-Digest"
    )
