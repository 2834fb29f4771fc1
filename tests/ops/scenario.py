"""
The content every gc test starts from, pushed through the stores or through the HTTP API
(both write the same storage), and helpers to age it and look at what is left.

    app    tag v1     -> image M1 (C1, L1, L1b)        signature S1 -> M1 (Lsig), untagged
           untagged   -> image M2 (C2, L2, SHARED)     signature S2 -> M2 (Ls2), untagged
           tag multi  -> index I (MA (CA, LA), MB (CB, LB)), untagged children; SA -> MA
           untagged   -> index I2 (MC (CC, LC))
           linked, referenced by nothing: ORPHAN_OLD, ORPHAN_NEW (younger than grace)
    other  tag latest -> image M3 (C3, SHARED, L3)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import treq

from registry.api import mediatypes as mt
from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import IStorageDriver
from registry.storage.manifests import ManifestStore

HOUR = 3600.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def image(config: bytes, layers: list[bytes], subject: bytes | None = None, **extra: Any) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_IMAGE_MANIFEST,
        "config": descriptor(mt.OCI_IMAGE_CONFIG, config),
        "layers": [descriptor(mt.OCI_LAYER_TAR_GZIP, layer) for layer in layers],
        **extra,
    }
    if subject is not None:
        document["subject"] = descriptor(mt.OCI_IMAGE_MANIFEST, subject)
    return json.dumps(document, sort_keys=True).encode()


def signature(subject: bytes, payload: bytes) -> bytes:
    return image(
        mt.OCI_EMPTY_CONTENT, [payload], subject, artifactType="application/vnd.dev.cosign.sig"
    )


def index(children: list[tuple[bytes, str]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_IMAGE_INDEX,
            "manifests": [
                descriptor(
                    mt.OCI_IMAGE_MANIFEST, body, platform={"os": "linux", "architecture": arch}
                )
                for body, arch in children
            ],
        },
        sort_keys=True,
    ).encode()


def blob(label: str) -> bytes:
    return f"blob {label} ".encode() * 50


PushBlob = Callable[[str, bytes], Awaitable[None]]
PutManifest = Callable[[str, str, bytes, str], Awaitable[None]]


@attrs.define
class Content:
    """Digests by label ("M1", "L1", ...), and which labels are manifests (by repository)."""

    digests: dict[str, str] = attrs.field(factory=dict)
    data: dict[str, bytes] = attrs.field(factory=dict)
    manifests: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # label -> (repo, type)
    tags: dict[tuple[str, str], str] = attrs.field(factory=dict)  # (repo, tag) -> label

    def add(self, label: str, data: bytes) -> bytes:
        self.digests[label] = sha256(data)
        self.data[label] = data
        return data

    def label(self, digest: str) -> str:
        return {d: label for label, d in self.digests.items()}[digest]

    def labels(self, digests: set[str]) -> set[str]:
        return {self.label(d) for d in digests}


async def build(push_blob: PushBlob, put_manifest: PutManifest) -> Content:
    content = Content()
    add = content.add

    async def blobs(name: str, *labels: str) -> list[bytes]:
        found = []
        for label in labels:
            data = content.data.get(label) or add(label, blob(label))
            await push_blob(name, data)
            found.append(data)
        return found

    async def manifest(name: str, label: str, body: bytes, tag: str | None = None) -> bytes:
        add(label, body)
        media_type = json.loads(body)["mediaType"]
        await put_manifest(name, tag or content.digests[label], body, media_type)
        content.manifests[label] = (name, media_type)
        if tag:
            content.tags[(name, tag)] = label
        return body

    c1, l1, l1b = await blobs("app", "C1", "L1", "L1b")
    m1 = await manifest("app", "M1", image(c1, [l1, l1b]), "v1")
    (lsig,) = await blobs("app", "Lsig")
    await manifest("app", "S1", signature(m1, lsig))
    c2, l2, shared = await blobs("app", "C2", "L2", "SHARED")
    m2 = await manifest("app", "M2", image(c2, [l2, shared]))
    (ls2,) = await blobs("app", "Ls2")
    await manifest("app", "S2", signature(m2, ls2))
    ca, la, cb, lb = await blobs("app", "CA", "LA", "CB", "LB")
    ma = await manifest("app", "MA", image(ca, [la]))
    mb = await manifest("app", "MB", image(cb, [lb]))
    (lsa,) = await blobs("app", "LsA")
    await manifest("app", "SA", signature(ma, lsa))
    await manifest("app", "I", index([(ma, "amd64"), (mb, "arm64")]), "multi")
    cc, lc = await blobs("app", "CC", "LC")
    mc = await manifest("app", "MC", image(cc, [lc]))
    await manifest("app", "I2", index([(mc, "amd64")]))
    await blobs("app", "ORPHAN_OLD", "ORPHAN_NEW")
    c3, l3 = await blobs("other", "C3", "L3")
    await push_blob("other", shared)
    await manifest("other", "M3", image(c3, [shared, l3]), "latest")
    # The empty config of the signatures is stored by the manifest store itself.
    content.digests["EMPTY"] = mt.OCI_EMPTY_DIGEST
    content.data["EMPTY"] = mt.OCI_EMPTY_CONTENT
    return content


def store_pushers(driver: IStorageDriver) -> tuple[PushBlob, PutManifest]:
    blobs = BlobStore(driver)
    manifests = ManifestStore(driver, blobs)

    async def push_blob(name: str, data: bytes) -> None:
        digest = await blobs.put_small(data)
        await blobs.link(name, digest)

    async def put_manifest(name: str, reference: str, body: bytes, media_type: str) -> None:
        await manifests.put(name, reference, body, media_type)

    return push_blob, put_manifest


def http_pushers(url: str) -> tuple[PushBlob, PutManifest]:
    async def push_blob(name: str, data: bytes) -> None:
        response = await treq.post(
            f"{url}/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data
        )
        assert response.code == 201, await response.text()

    async def put_manifest(name: str, reference: str, body: bytes, media_type: str) -> None:
        response = await treq.put(
            f"{url}/v2/{name}/manifests/{reference}",
            data=body,
            headers={"Content-Type": media_type},
        )
        assert response.code == 201, await response.text()

    return push_blob, put_manifest


# Removed in each mode, by label.
DELETED_DEFAULT = {"ORPHAN_OLD"}
UNTAGGED = {"M2", "S2", "I2", "MC"}
DELETED_UNTAGGED = DELETED_DEFAULT | UNTAGGED | {"C2", "L2", "Ls2", "CC", "LC"}


def age_everything(root: Path, seconds: float = 2 * HOUR) -> None:
    """Make every file and folder look ``seconds`` old (beyond the default grace)."""
    then = time.time() - seconds
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), (then, then))
        os.utime(folder, (then, then))


def make_young(root: Path, digest: str) -> None:
    path = root / layout.blob_data(Digest.parse(digest))
    now = time.time()
    os.utime(path, (now, now))


async def build_aged(driver: IStorageDriver, root: Path) -> Content:
    """The scenario stored through the stores, everything past the grace period but ORPHAN_NEW."""
    content = await build(*store_pushers(driver))
    age_everything(root)
    make_young(root, content.digests["ORPHAN_NEW"])
    return content


def blob_digests(root: Path) -> set[str]:
    """Every blob whose data is in storage."""
    found = set()
    blobs = root / layout.BLOBS
    for data in blobs.glob("*/*/*/data"):
        found.add(f"{data.parent.parent.parent.name}:{data.parent.name}")
    return found


def revision_digests(root: Path, name: str) -> set[str]:
    revisions = root / layout.revisions_dir(name)
    return {f"{p.parent.parent.name}:{p.parent.name}" for p in revisions.glob("*/*/link")}


def repository_of(content: Content, label: str) -> str:
    if label in content.manifests:
        return content.manifests[label][0]
    return "other" if label in ("C3", "L3") else "app"


async def assert_pullable(url: str, content: Content, deleted: set[str]) -> None:
    """Everything not deleted pulls over HTTP byte for byte; what was deleted is gone."""
    for (name, tag), label in content.tags.items():
        response = await treq.get(
            f"{url}/v2/{name}/manifests/{tag}",
            headers={"Accept": content.manifests[label][1]},
        )
        body = await response.content()
        assert response.code == 200, (name, tag, body)
        assert body == content.data[label]
    for label, digest in content.digests.items():
        name = repository_of(content, label)
        kind = "manifests" if label in content.manifests else "blobs"
        response = await treq.get(f"{url}/v2/{name}/{kind}/{digest}")
        body = await response.content()
        if label in deleted:
            assert response.code == 404, (label, response.code)
        else:
            assert response.code == 200, (label, response.code, body[:200])
            assert body == content.data[label], label
    shared = content.digests["SHARED"]
    response = await treq.get(f"{url}/v2/other/blobs/{shared}")
    assert response.code == 200
    assert await response.content() == content.data["SHARED"]
