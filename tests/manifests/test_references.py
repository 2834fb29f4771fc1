"""What a manifest keeps alive: one answer for garbage collection and the cache's eviction."""

from __future__ import annotations

import json

from registry.api import mediatypes as mt
from registry.manifests.references import manifest_refs
from registry.proxy.cache import _refs
from tests.manifests import samples

FOREIGN_URL = "https://mcr.microsoft.com/v2/windows/blobs/sha256:" + "1" * 64


def _with_foreign_layer() -> tuple[bytes, str]:
    document = json.loads(samples.oci_image())
    layer = document["layers"][1]
    layer["urls"] = [FOREIGN_URL]
    layer["mediaType"] = mt.DOCKER_FOREIGN_LAYER
    return json.dumps(document).encode(), layer["digest"]


def test_an_image_keeps_its_config_and_layers_foreign_ones_included() -> None:
    body, foreign = _with_foreign_layer()
    refs = manifest_refs(body)
    assert refs.parsed
    expected = {samples.sha256(samples.CONFIG), samples.sha256(samples.LAYER_1), foreign}
    assert refs.blobs == expected
    assert refs.children == frozenset() and refs.subject is None


def test_the_cache_keeps_what_garbage_collection_keeps() -> None:
    body, foreign = _with_foreign_layer()
    assert foreign in _refs(body)
    index = samples.oci_index([samples.oci_image(), samples.docker_image()])
    refs = manifest_refs(index)
    assert sorted(refs.children) == _refs(index)
    assert len(refs.children) == 2


def test_an_artifact_names_its_subject() -> None:
    image = samples.oci_image()
    refs = manifest_refs(samples.artifact(image))
    assert refs.subject == samples.sha256(image)


def test_an_unparseable_manifest_keeps_every_digest_in_its_bytes() -> None:
    digest = "sha256:" + "ab" * 32
    refs = manifest_refs(b'{"schemaVersion": 9, "x": "' + digest.encode() + b'"}')
    assert not refs.parsed
    assert refs.blobs == {digest}
