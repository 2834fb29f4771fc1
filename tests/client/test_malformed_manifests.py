"""
Manifests and layouts whose descriptors are not valid (per the OCI image spec: a
``mediaType`` string, a ``digest`` that parses, a ``size`` that is a non-negative integer):
``txregistry copy`` refuses them with one line naming the manifest and what is wrong, never a
traceback, and keeps nothing.  A source registry's manifest fails the copy (exit 1); a layout
whose ``index.json`` is not an OCI index is not a layout (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from registry.client.layout import OCILayout
from registry.client.walk import manifest_problem
from tests.client import images
from tests.client.test_copy_command import txregistry

CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"layer bytes"
GOOD = images.descriptor(images.OCI_LAYER, LAYER)


def manifest(**fields: Any) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": images.OCI_MANIFEST,
        "config": images.descriptor(images.OCI_CONFIG, CONFIG),
        "layers": [GOOD],
        **fields,
    }
    return json.dumps(document).encode()


class Source(Resource):
    """Repository ``x``: tag ``v1`` is whatever `body` holds (a manifest, or an index when
    `media_type` says so); the config and layer blobs are served."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b""
        self.media_type = images.OCI_MANIFEST
        self.blob_gets: list[str] = []

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode()
        request.setHeader(b"content-type", b"application/json")
        if path == "/v2/":
            return b"{}"
        if path == "/v2/x/tags/list":
            return b'{"name": "x", "tags": ["v1"]}'
        if path in ("/v2/x/manifests/v1", f"/v2/x/manifests/{images.digest(self.body)}"):
            request.setHeader(b"content-type", self.media_type.encode())
            request.setHeader(b"docker-content-digest", images.digest(self.body).encode())
            return self.body
        blobs = {images.digest(CONFIG): CONFIG, images.digest(LAYER): LAYER}
        digest = path.removeprefix("/v2/x/blobs/")
        if digest in blobs:
            self.blob_gets.append(digest)
            return blobs[digest]
        request.setResponseCode(404)
        return b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}'

    render_HEAD = render_GET


@pytest_twisted.async_yield_fixture
async def malformed_source() -> AsyncIterator[tuple[str, Source]]:
    resource = Source()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield f"127.0.0.1:{port.getHost().port}", resource
    await port.stopListening()


CASES = [
    # (manifest or index body, media type, what the message says is wrong)
    (manifest(config="x", layers=[{"digest": 5}]), images.OCI_MANIFEST,
     'config is not a descriptor but "x"'),
    (manifest(layers=[GOOD, {"digest": 5, "mediaType": "a", "size": 1}]), images.OCI_MANIFEST,
     "layers[1].digest 5 is not a string"),
    (manifest(layers=[{**GOOD, "digest": "sha256:nothex"}]), images.OCI_MANIFEST,
     'layers[0].digest "sha256:nothex" is not a digest (invalid sha256 digest)'),
    (manifest(layers=[{**GOOD, "size": -1}]), images.OCI_MANIFEST,
     "layers[0].size -1 is not a non-negative integer"),
    (manifest(layers=[{"mediaType": images.OCI_LAYER, "digest": GOOD["digest"]}]),
     images.OCI_MANIFEST, "layers[0] has no size"),
    (manifest(layers="x"), images.OCI_MANIFEST, 'layers is not a list but "x"'),
    (json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": images.OCI_MANIFEST,
                                                    "size": 5}]}).encode(),
     images.OCI_INDEX, "manifests[0] has no digest"),
    (json.dumps({"schemaVersion": 2, "manifests": "x"}).encode(), images.OCI_INDEX,
     'manifests is not a list but "x"'),
]  # fmt: skip


@pytest.mark.parametrize(("body", "media_type", "problem"), CASES)
@pytest_twisted.ensureDeferred
async def test_a_malformed_source_manifest_fails_the_copy_in_one_line(
    malformed_source: tuple[str, Source], tmp_path: Path, body: bytes, media_type: str, problem: str
) -> None:
    host, resource = malformed_source
    resource.body, resource.media_type = body, media_type
    code, out, err = await txregistry(
        "copy",
        "--src-tls-verify=false",
        "--timeout=2",  # the https probe of a plain http server waits that long
        f"docker://{host}/x:v1",
        f"oci:{tmp_path / 'out'}:v1",
    )
    kind = "index" if media_type == images.OCI_INDEX else "manifest"
    assert (code, out) == (1, ""), err
    assert err == (
        f"txregistry copy: failed: {kind} {images.digest(body)} is not valid: {problem}\n"
    )
    # Refused before anything was fetched or written.
    assert resource.blob_gets == []
    assert not (tmp_path / "out").exists()


def test_what_is_valid_passes() -> None:
    """Foreign layers are descriptors too; schema 1's blobSums are digests; an index's
    children are checked, not its own missing config."""
    foreign = {**GOOD, "urls": ["https://example.com/layer"]}
    assert manifest_problem(json.loads(manifest(layers=[GOOD, foreign])), False) is None
    schema1 = {"schemaVersion": 1, "fsLayers": [{"blobSum": GOOD["digest"]}]}
    assert manifest_problem(schema1, False) is None
    assert manifest_problem({"fsLayers": [{"blobSum": "sha256:x"}]}, False) == (
        'fsLayers[0].blobSum "sha256:x" is not a digest (invalid sha256 digest)'
    )
    index = {"manifests": [images.descriptor(images.OCI_MANIFEST, b"{}")]}
    assert manifest_problem(index, True) is None
    # null, as Go writes an empty list, is an empty list; "" is not.
    assert manifest_problem({"manifests": None}, True) is None
    assert manifest_problem(json.loads(manifest(layers=None)), False) is None
    assert manifest_problem(json.loads(manifest(layers="")), False) == 'layers is not a list but ""'


def write_layout(folder: Path, index: object) -> Path:
    (folder / "blobs" / "sha256").mkdir(parents=True)
    (folder / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (folder / "index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return folder


def entry(**fields: Any) -> dict[str, Any]:
    return {
        "mediaType": images.OCI_MANIFEST,
        "digest": images.digest(b"m"),
        "size": 1,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
        **fields,
    }


LAYOUTS = [
    ({"schemaVersion": 2, "manifests": [entry(digest="sha256:abc")]},
     'manifests[0].digest "sha256:abc" is not a digest (invalid sha256 digest)'),
    ({"schemaVersion": 2, "manifests": [{k: v for k, v in entry().items() if k != "digest"}]},
     "manifests[0] has no digest"),
    ({"schemaVersion": 2, "manifests": "x"}, "manifests is not a list"),
    ({"schemaVersion": 2, "manifests": [entry(digest="sha512:aaa")]},
     'manifests[0].digest "sha512:aaa" is not a digest (invalid sha512 digest)'),
    ({"schemaVersion": 2, "manifests": [entry(size="1")]},
     'manifests[0].size "1" is not a non-negative integer'),
]  # fmt: skip


@pytest.mark.parametrize(("index", "problem"), LAYOUTS)
@pytest_twisted.ensureDeferred
async def test_a_layout_with_a_malformed_index_is_not_a_layout(
    tmp_path: Path, index: object, problem: str
) -> None:
    """As the source or as the destination: exit 2 with one line naming the file; a
    destination's index.json is left as it was."""
    layout = write_layout(tmp_path / "bad", index)
    before = (layout / "index.json").read_text()
    good = write_layout(tmp_path / "good", {"schemaVersion": 2, "manifests": []})
    expected = f"txregistry copy: {layout}/index.json is not valid: {problem}\n"
    code, out, err = await txregistry("copy", f"oci:{layout}:v1", f"oci:{tmp_path / 'out'}:v1")
    assert (code, out, err) == (2, "", expected)
    assert not (tmp_path / "out").exists()
    code, out, err = await txregistry("copy", f"oci:{good}", f"oci:{layout}:v1")
    assert (code, out, err) == (2, "", expected)
    assert (layout / "index.json").read_text() == before


@pytest_twisted.ensureDeferred
async def test_a_layout_whose_index_is_not_json_is_not_a_layout(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "bad", "not json")
    code, out, err = await txregistry("copy", f"oci:{layout}:v1", f"oci:{tmp_path / 'out'}:v1")
    assert (code, out) == (2, "")
    assert err == (
        f"txregistry copy: {layout}/index.json is not JSON "
        "(Expecting value: line 1 column 1 (char 0))\n"
    )


@pytest_twisted.ensureDeferred
async def test_a_layout_listing_null_is_an_empty_one(tmp_path: Path) -> None:
    """``"manifests": null`` (an empty list, as Go writes it) is a layout without images."""
    folder = write_layout(tmp_path / "empty", {"schemaVersion": 2, "manifests": None})
    layout = await OCILayout.open(reactor, folder)
    assert (await layout.index())["manifests"] == []
