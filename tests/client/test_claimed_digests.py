"""
Uploads to a digest the client names, into a registry that checks nothing
(`tests.fakes.trusting`): the client hashes what it sends and holds its last bytes back until
the hash is known, so bytes that do not hash to the digest are never committed under it,
monolithic or streamed from another registry, and the error names the local source.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.server import NOT_DONE_YET, Request, Site

from registry.client import BadResponse, Rejected
from registry.client.copy import RegistryImage, copy_image
from registry.client.layout import OCILayout
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.test_copy_command import txregistry
from tests.client.test_hostile_source import LAYER as LAYER_BYTES
from tests.client.test_hostile_source import LAYER_DIGEST, HostileSource
from tests.fakes.trusting import trusting_registry

LAYER = os.urandom(3 * 1024 * 1024 + 5)


@pytest_twisted.ensureDeferred
async def test_a_file_that_does_not_hash_to_its_digest_is_never_committed(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """One PUT with the file as its body: the file hashes to something else, the request is
    cut before its last bytes, `Rejected` DIGEST_INVALID names the file; nothing is
    committed, the session is cancelled."""
    source = tmp_path / "layer.bin"
    source.write_bytes(LAYER)
    claimed = images.digest(b"other bytes")
    async with trusting_registry() as registry:
        client = make_client(registry.url)
        with pytest.raises(Rejected) as info:
            await client.upload_blob("t/x", source, claimed)
        assert (info.value.status, info.value.code) == (None, "DIGEST_INVALID")
        assert str(info.value) == f"{source} hashes to {images.digest(LAYER)}, not {claimed}"
        assert registry.commits == []
        assert registry.sessions == {} and registry.cancelled == 1
        # The right digest goes through, in one PUT.
        pushed = await client.upload_blob("t/x", source, images.digest(LAYER))
        assert str(pushed) == images.digest(LAYER)
        assert [c.actual for c in registry.commits] == [images.digest(LAYER)]


@pytest_twisted.ensureDeferred
async def test_bytes_that_do_not_hash_to_their_digest_are_not_sent(
    make_client: ClientFactory,
) -> None:
    async with trusting_registry() as registry:
        client = make_client(registry.url)
        claimed = images.digest(b"other bytes")
        for chunk_size in (None, 4):
            with pytest.raises(Rejected) as info:
                await client.upload_blob("t/x", b"some bytes", claimed, chunk_size=chunk_size)
            assert (info.value.status, info.value.code) == (None, "DIGEST_INVALID")
            assert str(info.value) == (
                f"the bytes given hash to {images.digest(b'some bytes')}, not {claimed}"
            )
        assert registry.requests == []


@pytest_twisted.ensureDeferred
async def test_copy_from_a_layout_with_a_damaged_blob_fails_and_commits_nothing(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``txregistry copy oci:LAYOUT:v1 docker://HOST/t/x:v1`` with a layer file damaged in the
    layout: exit 1, the line names the layout's file, the registry got no blob and no
    manifest."""
    manifest, blobs = images.image("amd64", [LAYER])
    layout = await OCILayout.create(reactor, tmp_path / "layout")
    for data in blobs.values():
        await layout.write_bytes(data)
    digest = await layout.write_bytes(manifest)
    await layout.add(
        {"mediaType": images.OCI_MANIFEST, "digest": str(digest), "size": len(manifest)}, "v1"
    )
    damaged = layout.blob_path(images.digest(LAYER))
    damaged.write_bytes(b"\0" + LAYER[1:])
    async with trusting_registry() as registry:
        host = registry.url.removeprefix("http://")
        code, out, err = await txregistry(
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--timeout",
            "2",
            f"oci:{tmp_path / 'layout'}:v1",
            f"docker://{host}/t/x:v1",
        )
        assert (code, out) == (1, "")
        wrong = images.digest(b"\0" + LAYER[1:])
        assert err == (
            f"txregistry copy: failed: {damaged} hashes to {wrong}, not {images.digest(LAYER)}\n"
        )
        assert [c.actual for c in registry.commits if c.claimed == images.digest(LAYER)] == []
        assert ("PUT", "/v2/t/x/manifests/v1") not in registry.requests


class _SlowEnd(HostileSource):
    """The layer's bytes, one flipped, in a chunked body whose last chunk comes a moment
    after the rest: the destination has every byte before the client knows the hash."""

    def _layer(self, request: Request) -> bytes | int:
        if self.layer != "wrong-bytes-slow-end":
            return super()._layer(request)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.write(bytes([LAYER_BYTES[0] ^ 0xFF]) + LAYER_BYTES[1:])
        reactor.callLater(0.3, request.finish)
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_wrong_blob_from_another_registry_is_never_committed(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Registry to registry: the source's body hashes wrong; its last bytes are held back
    until the hash is known, so the destination never gets a complete body."""
    resource = _SlowEnd()
    resource.layer = "wrong-bytes-slow-end"
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        source = make_client(f"http://127.0.0.1:{port.getHost().port}")
        async with trusting_registry() as registry:
            with pytest.raises(BadResponse) as info:
                await copy_image(
                    RegistryImage(source, "x", "latest"),
                    RegistryImage(make_client(registry.url), "copy/x", "v1"),
                )
            wrong = images.digest(bytes([LAYER_BYTES[0] ^ 0xFF]) + LAYER_BYTES[1:])
            assert str(info.value).endswith(f"body hashes to {wrong}, not {LAYER_DIGEST}")
            assert [c for c in registry.commits if c.claimed == LAYER_DIGEST] == []
            assert registry.sessions == {}
            assert [r for r in registry.requests if "/manifests/" in r[1]] == []
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_manifest_put_under_a_digest_it_does_not_have_is_not_sent(
    make_client: ClientFactory,
) -> None:
    manifest, _ = images.image("amd64", [b"layer"])
    async with trusting_registry() as registry:
        client = make_client(registry.url)
        other = images.digest(b"other")
        with pytest.raises(Rejected) as info:
            await client.put_manifest("t/x", other, manifest, images.OCI_MANIFEST)
        assert (info.value.status, info.value.code) == (None, "DIGEST_INVALID")
        assert str(info.value) == (
            f"the manifest given hashes to {images.digest(manifest)}, not {other}"
        )
        assert registry.requests == []
        pushed = await client.put_manifest(
            "t/x", images.digest(manifest), manifest, images.OCI_MANIFEST
        )
        assert str(pushed) == images.digest(manifest)
