"""The referrers index: kept up to date by manifest push and delete."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from registry.api import mediatypes as mt
from registry.api.digests import Digest, digest_of
from registry.api.errors import PAGINATION_NUMBER_INVALID, RegistryError
from registry.ops.progress import CountingDriver
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import IStorageDriver
from registry.storage.manifests import ManifestStore
from registry.storage.memory import MemoryDriver
from registry.storage.referrers import IReferrers, ReferrersIndex, referrers_response
from tests.manifests import samples
from tests.storage.manifest_fixtures import blobs, driver, push_blob

__all__ = ["blobs", "driver"]

NAME = "team/app"
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM_TYPE = "application/vnd.example.sbom.config.v1+json"


@pytest.fixture
def store(driver: IStorageDriver, blobs: BlobStore) -> ManifestStore:
    return ManifestStore(driver, blobs)


async def setup_image(store: ManifestStore) -> bytes:
    for data in (
        samples.CONFIG,
        samples.LAYER_1,
        samples.LAYER_2,
        samples.SIGNATURE,
        samples.SBOM,
        b"{}",
        mt.OCI_EMPTY_CONTENT,
    ):
        await push_blob(store.blobs, NAME, data)
    image = samples.oci_image()
    await store.put(NAME, "v1", image, None)
    return image


def test_provides_interface(store: ManifestStore) -> None:
    assert verifyObject(IReferrers, store.referrers)


@pytest_twisted.ensureDeferred
async def test_push_and_delete_update_index(store: ManifestStore) -> None:
    image = await setup_image(store)
    subject = digest_of(image)
    assert await store.referrers.list_referrers(NAME, subject) == []
    signature = samples.artifact(image, annotations={"created": "now"})
    sbom = samples.config_typed_artifact(image)
    for body in (signature, sbom):
        await store.put(NAME, str(digest_of(body)), body, None)
    listed = await store.referrers.list_referrers(NAME, subject)
    expected = sorted(
        [
            {
                "mediaType": mt.OCI_IMAGE_MANIFEST,
                "digest": str(digest_of(signature)),
                "size": len(signature),
                "artifactType": SIG,
                "annotations": {"created": "now"},
            },
            {
                "mediaType": mt.OCI_IMAGE_MANIFEST,
                "digest": str(digest_of(sbom)),
                "size": len(sbom),
                "artifactType": SBOM_TYPE,
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
            },
        ],
        key=lambda d: d["digest"],
    )
    assert listed == expected
    assert await store.referrers.list_referrers(NAME, subject, SBOM_TYPE) == [
        d for d in expected if d["artifactType"] == SBOM_TYPE
    ]
    assert await store.referrers.list_referrers(NAME, subject, "application/none") == []
    # Other repositories do not see them.
    assert await store.referrers.list_referrers("other/repo", subject) == []
    await store.delete(NAME, digest_of(signature))
    assert [d["digest"] for d in await store.referrers.list_referrers(NAME, subject)] == [
        str(digest_of(sbom))
    ]
    # Deleting the subject leaves its referrers listed (the spec allows dangling subjects).
    await store.delete(NAME, subject)
    assert len(await store.referrers.list_referrers(NAME, subject)) == 1


@pytest_twisted.ensureDeferred
async def test_untag_keeps_referrer(store: ManifestStore) -> None:
    image = await setup_image(store)
    signature = samples.artifact(image)
    await store.put(NAME, "sig", signature, None)
    await store.untag(NAME, "sig")
    assert len(await store.referrers.list_referrers(NAME, digest_of(image))) == 1


@pytest_twisted.ensureDeferred
async def test_index_referrer(store: ManifestStore) -> None:
    image = await setup_image(store)
    index = samples.oci_index([image], subject=samples.descriptor(mt.OCI_IMAGE_MANIFEST, image))
    await store.put(NAME, "bundle", index, mt.OCI_IMAGE_INDEX)
    (entry,) = await store.referrers.list_referrers(NAME, digest_of(image))
    assert entry == {
        "mediaType": mt.OCI_IMAGE_INDEX,
        "digest": str(digest_of(index)),
        "size": len(index),
    }


async def _stored(driver: IStorageDriver, name: str, digest: Digest) -> None:
    """The referrer's revision link, without which its entry is not listed."""
    await driver.put_content(layout.revision_link(name, digest), str(digest).encode())


@pytest_twisted.ensureDeferred
async def test_pagination(driver: IStorageDriver) -> None:
    index = ReferrersIndex(driver)
    subject = digest_of(b"subject")
    digests = []
    for i in range(25):
        digest = digest_of(str(i).encode())
        digests.append(str(digest))
        await _stored(driver, NAME, digest)
        kind = "application/a" if i % 2 else "application/b"
        await index.add(
            NAME,
            subject,
            {
                "mediaType": mt.OCI_IMAGE_MANIFEST,
                "digest": str(digest),
                "size": i,
                "artifactType": kind,
            },
        )
    digests.sort()
    page, more = await index.page(NAME, subject, n=10)
    assert [d["digest"] for d in page] == digests[:10] and more
    page, more = await index.page(NAME, subject, n="10", last=page[-1]["digest"])
    assert [d["digest"] for d in page] == digests[10:20] and more
    page, more = await index.page(NAME, subject, n=10, last=page[-1]["digest"])
    assert [d["digest"] for d in page] == digests[20:] and not more
    assert await index.page(NAME, subject, n=0) == ([], False)
    filtered = await index.list_referrers(NAME, subject, "application/a")
    assert len(filtered) == 12
    page, more = await index.page(NAME, subject, "application/a", n=12)
    assert page == filtered and not more
    page, more = await index.page(NAME, subject, "application/a", n=11)
    assert page == filtered[:11] and more
    with pytest.raises(RegistryError) as info:
        await index.page(NAME, subject, n=-1)
    assert info.value.code is PAGINATION_NUMBER_INVALID
    assert await index.remove(NAME, subject, Digest.parse(digests[0]))
    assert not await index.remove(NAME, subject, Digest.parse(digests[0]))
    assert len(await index.list_referrers(NAME, subject)) == 24


@pytest_twisted.ensureDeferred
async def test_corrupt_entries_skipped(driver: IStorageDriver) -> None:
    index = ReferrersIndex(driver)
    subject = digest_of(b"subject")
    good = {"mediaType": mt.OCI_IMAGE_MANIFEST, "digest": str(digest_of(b"good")), "size": 1}
    await index.add(NAME, subject, good)
    await _stored(driver, NAME, digest_of(b"good"))
    # An entry whose manifest the repository no longer has is not listed either.
    gone = {"mediaType": mt.OCI_IMAGE_MANIFEST, "digest": str(digest_of(b"gone")), "size": 1}
    await index.add(NAME, subject, gone)
    await driver.put_content(layout.referrer_entry(NAME, subject, digest_of(b"torn")), b'{"med')
    await driver.put_content(layout.referrer_entry(NAME, subject, digest_of(b"list")), b"[]")
    assert await index.list_referrers(NAME, subject) == [good]


def test_response_body() -> None:
    body = referrers_response([{"digest": "x"}])
    assert body == {
        "schemaVersion": 2,
        "mediaType": mt.OCI_IMAGE_INDEX,
        "manifests": [{"digest": "x"}],
    }
    json.dumps(body)


@pytest_twisted.ensureDeferred
async def test_a_filtered_page_reads_again_only_the_referrers_of_its_type() -> None:
    """An entry's artifactType is remembered once read: a second page filtered by a type few
    referrers have reads those few, not every entry (each read a file and its JSON)."""
    counting = CountingDriver(MemoryDriver())
    index = ReferrersIndex(counting)
    subject = digest_of(b"subject")
    for i in range(60):
        kind = "application/vnd.example.sig" if i % 20 == 0 else "application/vnd.example.sbom"
        referrer = digest_of(f"referrer {i}".encode())
        descriptor = {"mediaType": mt.OCI_IMAGE_MANIFEST, "digest": str(referrer), "size": 1}
        await index.add("app", subject, {**descriptor, "artifactType": kind})
        await _stored(counting, "app", referrer)  # type: ignore[arg-type]
    # Each entry listed also costs a read of its revision link (the other entries none).
    first, more = await index.page("app", subject, "application/vnd.example.sig")
    assert (len(first), more) == (3, False)
    assert counting.read == 60 + 3
    again, more = await index.page("app", subject, "application/vnd.example.sig")
    assert (again, more) == (first, False)
    assert counting.read == 63 + 3 + 3
    assert await index.page("app", subject, "application/vnd.example.none") == ([], False)
    assert counting.read == 69
