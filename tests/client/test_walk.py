"""
The one image walk on its own, with stub sides that answer at once (no reactor): the order
it copies in, what it skips, how far it follows referrers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.api import mediatypes as mt
from registry.api.digests import Digest, digest_of
from registry.client.walk import CopyError, FetchedManifest, ImageWalk, blob_descriptors
from tests.synchronous import run_now


def blob(name: str) -> dict[str, Any]:
    return {
        "mediaType": "application/octet-stream",
        "digest": str(digest_of(name.encode())),
        "size": len(name),
    }


class Sides:
    """A source of manifests by digest and referrers by subject; records what is done."""

    def __init__(self) -> None:
        self.manifests: dict[str, FetchedManifest] = {}
        self.referrer_lists: dict[Digest, list[dict[str, Any]]] = {}
        self.present: set[Digest] = set()
        self.log: list[tuple[str, str]] = []

    def add(self, document: dict[str, Any], media_type: str) -> FetchedManifest:
        body = json.dumps(document).encode()
        manifest = FetchedManifest(body, media_type, digest_of(body))
        self.manifests[str(manifest.digest)] = manifest
        return manifest

    async def manifest(self, reference: str) -> FetchedManifest:
        return self.manifests[reference]

    async def has_manifest(self, digest: Digest) -> bool:
        return digest in self.present

    async def blob(self, descriptor: dict[str, Any]) -> None:
        self.log.append(("blob", descriptor["digest"]))

    async def put(self, manifest: FetchedManifest, tag: str | None, what: str) -> None:
        self.log.append((what, str(manifest.digest)))

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        return self.referrer_lists.get(subject, [])


def image(sides: Sides, layer: str) -> FetchedManifest:
    return sides.add(
        {"schemaVersion": 2, "mediaType": mt.OCI_IMAGE_MANIFEST, "config": blob("c"),
         "layers": [blob(layer), {**blob("win"), "urls": ["https://example.com/l"]}]},
        mt.OCI_IMAGE_MANIFEST,
    )  # fmt: skip


def descriptor(manifest: FetchedManifest) -> dict[str, Any]:
    return {"mediaType": manifest.media_type, "digest": str(manifest.digest), "size": 1}


def test_children_then_index_blobs_then_manifest_foreign_layers_left() -> None:
    sides = Sides()
    amd, arm = image(sides, "amd"), image(sides, "arm")
    index = sides.add(
        {"schemaVersion": 2, "manifests": [descriptor(amd), descriptor(arm)]}, mt.OCI_IMAGE_INDEX
    )
    run_now(ImageWalk(sides, children_at_once=False).copy(index, "v1"))
    config, win = blob("c")["digest"], blob("win")["digest"]
    assert sides.log == [
        ("blob", config),
        ("blob", blob("amd")["digest"]),
        ("manifest", str(amd.digest)),
        ("blob", config),
        ("blob", blob("arm")["digest"]),
        ("manifest", str(arm.digest)),
        ("index", str(index.digest)),
    ]
    assert win not in {d for _, d in sides.log}


def test_a_child_the_destination_has_is_skipped_whole() -> None:
    sides = Sides()
    amd = image(sides, "amd")
    index = sides.add({"schemaVersion": 2, "manifests": [descriptor(amd)]}, mt.OCI_IMAGE_INDEX)
    sides.present.add(amd.digest)
    run_now(ImageWalk(sides).copy(index))
    assert sides.log == [("index", str(index.digest))]


def test_referrers_follow_their_subject_up_to_the_depth() -> None:
    sides = Sides()
    subject = image(sides, "app")
    chain = [subject]
    for level in range(4):
        referrer = image(sides, f"sig{level}")
        sides.referrer_lists[chain[-1].digest] = [descriptor(referrer), {"digest": "junk"}]
        chain.append(referrer)
    run_now(ImageWalk(sides, referrers=True, referrer_depth=3).copy(subject, "v1"))
    written = [(what, d) for what, d in sides.log if what != "blob"]
    assert written == [("manifest", str(subject.digest))] + [
        ("referrer", str(m.digest)) for m in chain[1:4]
    ]


def test_a_source_answering_another_digest_is_refused() -> None:
    sides = Sides()
    amd, arm = image(sides, "amd"), image(sides, "arm")
    sides.manifests[str(amd.digest)] = arm
    with pytest.raises(CopyError, match="the source answered"):
        run_now(ImageWalk(sides).copy_digest(amd.digest))


def test_blob_descriptors_once_each_schema1_too() -> None:
    document = {"fsLayers": [{"blobSum": blob("a")["digest"]}, {"blobSum": blob("a")["digest"]}]}
    assert blob_descriptors(document) == [{"digest": blob("a")["digest"]}]
