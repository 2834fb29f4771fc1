"""The manifest store over real drivers: push, pull, delete, untag, reference checks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from zope.interface import directlyProvides, providedBy
from zope.interface.verify import verifyObject

from registry.api import mediatypes as mt
from registry.api.digests import Digest, digest_of
from registry.api.errors import (
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    TAG_INVALID,
    RegistryError,
)
from registry.manifests import UrlPolicy
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageFull
from registry.storage.manifests import (
    MAX_MANIFEST_SIZE,
    IManifestStore,
    ManifestStore,
    ManifestTooLarge,
    PutResult,
    RecentManifests,
    StoredManifest,
    check_manifest_size,
    parse_reference,
)
from tests.manifests import samples
from tests.storage.manifest_fixtures import blobs, driver, push_blob

__all__ = ["blobs", "driver"]

NAME = "team/app"


@pytest.fixture
def store(driver: IStorageDriver, blobs: BlobStore) -> ManifestStore:
    return ManifestStore(driver, blobs)


async def push_image_blobs(blobs: BlobStore, name: str = NAME) -> None:
    for data in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2):
        await push_blob(blobs, name, data)


async def raises(code: object, awaitable: object) -> RegistryError:
    try:
        await awaitable  # type: ignore[misc]
    except RegistryError as exc:
        assert exc.code is code, exc
        return exc
    raise AssertionError(f"expected {code}")


def test_provides_interface(store: ManifestStore) -> None:
    assert verifyObject(IManifestStore, store)


@pytest_twisted.ensureDeferred
async def test_put_get_by_tag_and_digest_byte_for_byte(store: ManifestStore) -> None:
    await push_image_blobs(store.blobs)
    cases = [
        (samples.oci_image(), mt.OCI_IMAGE_MANIFEST),
        (samples.docker_image(), mt.DOCKER_MANIFEST_V2),
    ]
    for body, media_type in cases:
        result = await store.put(NAME, "v1", body, media_type)
        assert result == PutResult(digest_of(body), media_type, None)
        by_tag = await store.get(NAME, "v1")
        by_digest = await store.get(NAME, str(result.digest))
        for got in (by_tag, by_digest):
            assert got.body == body
            assert got.digest == digest_of(body)
            assert got.media_type == media_type
            assert got.size == len(body)


@pytest_twisted.ensureDeferred
async def test_index_and_manifest_list(store: ManifestStore) -> None:
    await push_image_blobs(store.blobs)
    oci_children = [samples.oci_image(), samples.oci_image(layers=(samples.LAYER_1,))]
    docker_children = [samples.docker_image(), samples.docker_image(layers=(samples.LAYER_2,))]
    for child in oci_children + docker_children:
        await store.put(NAME, str(digest_of(child)), child, None)
    for body, media_type in [
        (samples.oci_index(oci_children), mt.OCI_IMAGE_INDEX),
        (samples.docker_list(docker_children), mt.DOCKER_MANIFEST_LIST),
    ]:
        result = await store.put(NAME, "multi", body, "application/json")
        assert result.media_type == media_type
        got = await store.get(NAME, "multi")
        assert (got.body, got.media_type) == (body, media_type)


@pytest_twisted.ensureDeferred
async def test_registry2_layout(store: ManifestStore, driver: IStorageDriver) -> None:
    await push_image_blobs(store.blobs)
    body = samples.oci_image()
    digest = digest_of(body)
    await store.put(NAME, "latest", body, mt.OCI_IMAGE_MANIFEST)
    root = f"docker/registry/v2/repositories/{NAME}/_manifests"
    assert (
        await driver.get_content(f"{root}/revisions/sha256/{digest.hex}/link")
        == str(digest).encode()
    )
    assert await driver.get_content(f"{root}/tags/latest/current/link") == str(digest).encode()
    assert (
        await driver.get_content(f"{root}/tags/latest/index/sha256/{digest.hex}/link")
        == str(digest).encode()
    )
    blob = f"docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data"
    assert await driver.get_content(blob) == body


@pytest_twisted.ensureDeferred
async def test_retag_keeps_tag_history(store: ManifestStore, driver: IStorageDriver) -> None:
    await push_image_blobs(store.blobs)
    first, second = samples.oci_image(), samples.oci_image(layers=(samples.LAYER_2,))
    await store.put(NAME, "latest", first, None)
    await store.put(NAME, "latest", second, None)
    assert (await store.get(NAME, "latest")).body == second
    assert sorted(await driver.list(f"{layout.tag_dir(NAME, 'latest')}/index/sha256")) == sorted(
        [digest_of(first).hex, digest_of(second).hex]
    )
    # The old revision stays reachable by digest.
    assert (await store.get(NAME, digest_of(first))).body == first


@pytest_twisted.ensureDeferred
async def test_put_by_digest(store: ManifestStore) -> None:
    await push_image_blobs(store.blobs)
    body = samples.oci_image()
    result = await store.put(NAME, str(digest_of(body)), body, mt.OCI_IMAGE_MANIFEST)
    assert result.digest == digest_of(body)
    await raises(MANIFEST_UNKNOWN, store.get(NAME, "latest"))


@pytest_twisted.ensureDeferred
async def test_put_by_sha512_digest(store: ManifestStore) -> None:
    await push_image_blobs(store.blobs)
    body = samples.oci_image()
    reference = "sha512:" + hashlib.sha512(body).hexdigest()
    result = await store.put(NAME, reference, body, mt.OCI_IMAGE_MANIFEST)
    assert str(result.digest) == reference
    got = await store.get(NAME, reference)
    assert got.body == body and str(got.digest) == reference
    # Stored under sha512 only: the sha256 name is not a revision of this repository.
    await raises(MANIFEST_UNKNOWN, store.get(NAME, digest_of(body)))


@pytest_twisted.ensureDeferred
async def test_digest_mismatch(store: ManifestStore, driver: IStorageDriver) -> None:
    await push_image_blobs(store.blobs)
    body = samples.oci_image()
    other = digest_of(b"something else")
    error = await raises(DIGEST_INVALID, store.put(NAME, str(other), body, None))
    assert error.detail == {"expected": str(other), "actual": str(digest_of(body))}
    wrong512 = "sha512:" + hashlib.sha512(b"x").hexdigest()
    await raises(DIGEST_INVALID, store.put(NAME, wrong512, body, None))
    await raises(DIGEST_INVALID, store.put(NAME, "sha256:short", body, None))
    with pytest.raises(PathNotFoundError):
        await driver.stat(layout.manifests_dir(NAME))


@pytest_twisted.ensureDeferred
async def test_invalid_tag(store: ManifestStore) -> None:
    await raises(TAG_INVALID, store.put(NAME, "-bad", samples.oci_image(), None))


@pytest_twisted.ensureDeferred
async def test_missing_blobs(store: ManifestStore, driver: IStorageDriver) -> None:
    body = samples.oci_image()
    error = await raises(MANIFEST_BLOB_UNKNOWN, store.put(NAME, "v1", body, None))
    assert error.detail["digest"] == samples.sha256(samples.CONFIG)
    assert error.status == 400
    await push_blob(store.blobs, NAME, samples.CONFIG)
    await push_blob(store.blobs, NAME, samples.LAYER_1)
    error = await raises(MANIFEST_BLOB_UNKNOWN, store.put(NAME, "v1", body, None))
    assert error.detail["digest"] == samples.sha256(samples.LAYER_2)
    # Present in another repository only: not good enough.
    await push_blob(store.blobs, "other/repo", samples.LAYER_2)
    error = await raises(MANIFEST_BLOB_UNKNOWN, store.put(NAME, "v1", body, None))
    assert error.detail["digest"] == samples.sha256(samples.LAYER_2)
    # Linked, but the data is gone.
    await store.blobs.link(NAME, Digest.parse(samples.sha256(samples.LAYER_2)))
    await driver.delete(layout.blob_dir(Digest.parse(samples.sha256(samples.LAYER_2))))
    await raises(MANIFEST_BLOB_UNKNOWN, store.put(NAME, "v1", body, None))
    # Nothing was stored by the failed pushes.
    await raises(MANIFEST_UNKNOWN, store.get(NAME, "v1"))
    await push_blob(store.blobs, NAME, samples.LAYER_2)
    await store.put(NAME, "v1", body, None)


@pytest_twisted.ensureDeferred
async def test_foreign_layers_exempt(store: ManifestStore) -> None:
    await push_blob(store.blobs, NAME, samples.CONFIG)
    document = json.loads(samples.docker_image(layers=(samples.LAYER_1,)))
    document["layers"][0]["mediaType"] = mt.DOCKER_FOREIGN_LAYER
    document["layers"][0]["urls"] = ["https://mcr.microsoft.com/v2/x/blobs/" + "1" * 64]
    body = json.dumps(document, indent=3).encode()
    await store.put(NAME, "win", body, mt.DOCKER_MANIFEST_V2)
    assert (await store.get(NAME, "win")).body == body
    strict = ManifestStore(
        store.driver, store.blobs, url_policy=UrlPolicy(allow=[r"^https://example\.com/"])
    )
    await raises(MANIFEST_INVALID, strict.put(NAME, "win", body, None))


@pytest_twisted.ensureDeferred
async def test_missing_index_child(store: ManifestStore) -> None:
    await push_image_blobs(store.blobs)
    present, missing = samples.oci_image(), samples.oci_image(layers=(samples.LAYER_1,))
    await store.put(NAME, str(digest_of(present)), present, None)
    index = samples.oci_index([present, missing])
    error = await raises(MANIFEST_BLOB_UNKNOWN, store.put(NAME, "multi", index, None))
    assert error.detail["digest"] == str(digest_of(missing))
    # A child pushed to another repository does not count.
    await push_image_blobs(store.blobs, "other/repo")
    await store.put("other/repo", str(digest_of(missing)), missing, None)
    await raises(MANIFEST_BLOB_UNKNOWN, store.put(NAME, "multi", index, None))
    await store.put(NAME, str(digest_of(missing)), missing, None)
    await store.put(NAME, "multi", index, None)


@pytest_twisted.ensureDeferred
async def test_empty_config_is_supplied(store: ManifestStore) -> None:
    await push_blob(store.blobs, NAME, samples.SIGNATURE)
    body = samples.artifact(samples.oci_image())
    result = await store.put(NAME, str(digest_of(body)), body, mt.OCI_IMAGE_MANIFEST)
    empty = Digest.parse(mt.OCI_EMPTY_DIGEST)
    assert await store.blobs.is_linked(NAME, empty)
    assert await store.blobs.get_small(empty) == b"{}"
    assert result.subject == digest_of(samples.oci_image())


@pytest_twisted.ensureDeferred
async def test_subject_need_not_exist(store: ManifestStore) -> None:
    await push_blob(store.blobs, NAME, mt.OCI_EMPTY_CONTENT)
    await push_blob(store.blobs, NAME, samples.SIGNATURE)
    image = samples.oci_image()
    body = samples.artifact(image)
    result = await store.put(NAME, str(digest_of(body)), body, mt.OCI_IMAGE_MANIFEST)
    assert result.subject == digest_of(image)
    referrers = await store.referrers.list_referrers(NAME, digest_of(image))
    assert [r["digest"] for r in referrers] == [str(digest_of(body))]


@pytest_twisted.ensureDeferred
async def test_get_unknown(store: ManifestStore, driver: IStorageDriver) -> None:
    await raises(NAME_UNKNOWN, store.get("nobody/here", "latest"))
    await raises(NAME_UNKNOWN, store.get("nobody/here", digest_of(b"x")))
    await push_image_blobs(store.blobs)
    error = await raises(MANIFEST_UNKNOWN, store.get(NAME, "latest"))
    assert error.detail == {"name": NAME, "reference": "latest"}
    await raises(MANIFEST_UNKNOWN, store.get(NAME, str(digest_of(b"x"))))
    await raises(DIGEST_INVALID, store.get(NAME, "sha256:nope"))
    # A corrupt tag link or a revision without its blob reads as unknown.
    body = samples.oci_image()
    await store.put(NAME, "latest", body, None)
    await driver.put_content(layout.tag_current_link(NAME, "latest"), b"garbage")
    await raises(MANIFEST_UNKNOWN, store.get(NAME, "latest"))
    await driver.delete(layout.blob_dir(digest_of(body)))
    await raises(MANIFEST_UNKNOWN, store.get(NAME, digest_of(body)))


@pytest_twisted.ensureDeferred
async def test_too_big(store: ManifestStore) -> None:
    small = ManifestStore(store.driver, store.blobs, max_size=100)
    error = await raises(MANIFEST_INVALID, small.put(NAME, "v1", samples.oci_image(), None))
    assert isinstance(error, ManifestTooLarge)
    check_manifest_size(None)
    check_manifest_size(MAX_MANIFEST_SIZE)
    with pytest.raises(ManifestTooLarge) as info:
        check_manifest_size(MAX_MANIFEST_SIZE + 1)
    assert info.value.detail["limit"] == 4 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_delete(store: ManifestStore, driver: IStorageDriver) -> None:
    await push_image_blobs(store.blobs)
    body, other = samples.oci_image(), samples.docker_image()
    digest = digest_of(body)
    for tag in ("a", "b"):
        await store.put(NAME, tag, body, None)
    await store.put(NAME, "c", other, None)
    assert sorted(await store.delete(NAME, str(digest))) == ["a", "b"]
    await raises(MANIFEST_UNKNOWN, store.get(NAME, digest))
    await raises(MANIFEST_UNKNOWN, store.get(NAME, "a"))
    assert (await store.get(NAME, "c")).body == other
    assert await store.tags.all_tags(NAME) == ["c"]
    with pytest.raises(PathNotFoundError):
        await driver.stat(layout.revision_link(NAME, digest))
    # The bytes stay for garbage collection, as with registry:2.
    assert await store.blobs.get_small(digest) == body
    await raises(MANIFEST_UNKNOWN, store.delete(NAME, digest))
    await raises(NAME_UNKNOWN, store.delete("nobody/here", digest))
    await raises(MANIFEST_INVALID, store.delete(NAME, "c"))
    # Pushing again brings it back.
    await store.put(NAME, "a", body, None)
    assert (await store.get(NAME, "a")).body == body


@pytest_twisted.ensureDeferred
async def test_delete_without_blob_data(store: ManifestStore, driver: IStorageDriver) -> None:
    await push_image_blobs(store.blobs)
    body = samples.oci_image()
    await store.put(NAME, "a", body, None)
    await driver.delete(layout.blob_dir(digest_of(body)))
    # exists() needs the data: a revision without it is unknown, as registry:2 treats it.
    await raises(MANIFEST_UNKNOWN, store.delete(NAME, digest_of(body)))


@pytest_twisted.ensureDeferred
async def test_untag(store: ManifestStore) -> None:
    await push_image_blobs(store.blobs)
    body = samples.oci_image()
    await store.put(NAME, "a", body, None)
    await store.put(NAME, "b", body, None)
    await store.untag(NAME, "a")
    await raises(MANIFEST_UNKNOWN, store.get(NAME, "a"))
    assert (await store.get(NAME, "b")).body == body
    assert (await store.get(NAME, digest_of(body))).body == body
    await raises(MANIFEST_UNKNOWN, store.untag(NAME, "a"))
    await raises(NAME_UNKNOWN, store.untag("nobody/here", "a"))
    await raises(TAG_INVALID, store.untag(NAME, "bad tag"))


@pytest_twisted.ensureDeferred
async def test_put_notes_catalog(driver: IStorageDriver, blobs: BlobStore) -> None:
    catalog = Catalog(driver)
    store = ManifestStore(driver, blobs, catalog=catalog)
    await push_image_blobs(blobs)
    await store.put(NAME, "v1", samples.oci_image(), None)
    repositories, more = await catalog.list_repositories()
    assert repositories == [NAME] and not more


@pytest_twisted.ensureDeferred
async def test_reindex_referrers(store: ManifestStore, driver: IStorageDriver) -> None:
    await push_image_blobs(store.blobs)
    await push_blob(store.blobs, NAME, samples.SIGNATURE)
    image = samples.oci_image()
    await store.put(NAME, "v1", image, None)
    signature = samples.artifact(image)
    await store.put(NAME, str(digest_of(signature)), signature, None)
    await driver.delete(f"{layout.OWN}/referrers")
    assert await store.referrers.list_referrers(NAME, digest_of(image)) == []
    assert await store.reindex_referrers(NAME) == 1
    listed = await store.referrers.list_referrers(NAME, digest_of(image))
    assert [r["digest"] for r in listed] == [str(digest_of(signature))]
    assert await store.reindex_referrers("nobody/here") == 0


@pytest_twisted.ensureDeferred
async def test_serves_registry2_schema1(store: ManifestStore, driver: IStorageDriver) -> None:
    """A schema1 manifest left by registry:2 is still served, with its media type."""
    body = samples.schema1(signed=True)
    digest = await store.blobs.put_small(body)
    await driver.put_content(layout.revision_link(NAME, digest), str(digest).encode())
    await driver.put_content(layout.tag_current_link(NAME, "old"), str(digest).encode())
    got = await store.get(NAME, "old")
    assert got.body == body and got.media_type == mt.DOCKER_SCHEMA1_SIGNED
    assert await store.delete(NAME, digest) == ["old"]


def test_parse_reference() -> None:
    digest = digest_of(b"x")
    assert parse_reference(digest) is digest
    assert parse_reference(str(digest)) == digest
    assert parse_reference("v1.0") == "v1.0"


@pytest_twisted.ensureDeferred
async def test_revision_link_must_name_the_digest(
    store: ManifestStore, driver: IStorageDriver
) -> None:
    await push_image_blobs(store.blobs)
    body = samples.oci_image()
    await store.put(NAME, "a", body, None)
    await driver.put_content(layout.revision_link(NAME, digest_of(body)), b"sha256:other")
    assert not await store.exists(NAME, digest_of(body))
    await raises(MANIFEST_UNKNOWN, store.get(NAME, "a"))


@pytest_twisted.ensureDeferred
async def test_index_repeating_a_child(store: ManifestStore) -> None:
    await push_image_blobs(store.blobs)
    child = samples.oci_image()
    await store.put(NAME, str(digest_of(child)), child, None)
    index = samples.oci_index([child, child])
    assert (await store.put(NAME, "twice", index, None)).media_type == mt.OCI_IMAGE_INDEX


@pytest_twisted.ensureDeferred
async def test_reindex_skips_what_it_cannot_read(
    store: ManifestStore, driver: IStorageDriver
) -> None:
    legacy = samples.schema1()
    digest = await store.blobs.put_small(legacy)
    await driver.put_content(layout.revision_link(NAME, digest), str(digest).encode())
    await driver.put_content(f"{layout.revisions_dir(NAME)}/sha256/not-hex/link", b"x")
    await driver.put_content(
        layout.revision_link(NAME, digest_of(b"no data")), str(digest_of(b"no data")).encode()
    )
    assert await store.reindex_referrers(NAME) == 0
    # A delete of a manifest whose subject cannot be read still works.
    bad_subject = json.dumps({"schemaVersion": 2, "subject": {"digest": "nope"}}).encode()
    digest = await store.blobs.put_small(bad_subject)
    await driver.put_content(layout.revision_link(NAME, digest), str(digest).encode())
    assert await store.delete(NAME, digest) == []


def test_recent_manifests_stay_within_their_budget() -> None:
    """Oldest out first; a manifest over the size limit is never kept."""
    recent = RecentManifests(budget=3000)
    kept = []
    for index in range(10):
        body = bytes([index]) * 1000
        manifest = StoredManifest(digest_of(body), "application/json", body)
        recent.add(manifest)
        kept.append(manifest)
    assert [recent.get(m.digest) for m in kept] == [None] * 7 + kept[7:]
    large = b"x" * (RecentManifests.LARGEST + 1)
    recent = RecentManifests(budget=10 * len(large))
    recent.add(StoredManifest(digest_of(large), "application/json", large))
    assert recent.get(digest_of(large)) is None


class _HeldAt:
    """The store's driver, holding one call (method and path) until `release`: the point at
    which another request (another worker) interleaves."""

    def __init__(self, driver: IStorageDriver, method: str, path: str, skip: int = 0) -> None:
        self._driver = driver
        self._method = method
        self._path = path
        self._skip = skip  # matching calls let through before the one held
        self.reached: Deferred[None] = Deferred()
        self._gate: Deferred[None] = Deferred()

    def release(self) -> None:
        self._gate.callback(None)

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._driver, name)
        if name != self._method:
            return call

        async def held(path: str, *args: Any, **kwargs: Any) -> Any:
            if path == self._path and not self.reached.called:
                if self._skip:
                    self._skip -= 1
                else:
                    self.reached.callback(None)
                    await self._gate
            return await call(path, *args, **kwargs)

        return held


async def _until_held(held: _HeldAt, running: Deferred[Any]) -> None:
    """Until the call is held; a run that ends without making it fails the test."""
    await DeferredList([held.reached, running], fireOnOneCallback=True, fireOnOneErrback=True)
    assert held.reached.called, "the held call was never made"


async def _every_tag_resolves(store: ManifestStore) -> list[str]:
    tags = await store.tags.all_tags(NAME)
    for tag in tags:
        await store.get(NAME, tag)  # MANIFEST_UNKNOWN: a tag naming a removed manifest
    return tags


@pytest_twisted.ensureDeferred
async def test_a_tag_pushed_while_its_manifest_is_deleted_is_removed_with_it(
    driver: IStorageDriver, blobs: BlobStore
) -> None:
    """The push sets its tag after the delete looked for tags, and finds the revision still
    there; the delete then removes the revision, and looks for tags again."""
    await push_image_blobs(blobs)
    body = samples.oci_image()
    digest = (await ManifestStore(driver, blobs).put(NAME, "a", body, None)).digest
    held = _HeldAt(driver, "delete", layout.revision_dir(NAME, digest))
    deleter, pusher = ManifestStore(held, blobs), ManifestStore(held, blobs)  # type: ignore[arg-type]
    deleting = ensureDeferred(deleter.delete(NAME, digest))
    await held.reached
    await pusher.put(NAME, "b", body, None)
    held.release()
    assert await deleting == ["a", "b"]
    assert await _every_tag_resolves(ManifestStore(driver, blobs)) == []
    await raises(MANIFEST_UNKNOWN, ManifestStore(driver, blobs).get(NAME, digest))


@pytest_twisted.ensureDeferred
async def test_a_tag_set_after_its_manifest_was_deleted_brings_the_manifest_back(
    driver: IStorageDriver, blobs: BlobStore
) -> None:
    """The whole delete runs between the push's revision and its tag: the push stands, as
    if it came after the delete, instead of leaving a tag that names nothing."""
    await push_image_blobs(blobs)
    body = samples.oci_image()
    digest = (await ManifestStore(driver, blobs).put(NAME, "a", body, None)).digest
    held = _HeldAt(driver, "put_content", layout.tag_index_link(NAME, "b", digest))
    deleter, pusher = ManifestStore(held, blobs), ManifestStore(held, blobs)  # type: ignore[arg-type]
    pushing = ensureDeferred(pusher.put(NAME, "b", body, None))
    await held.reached
    assert await deleter.delete(NAME, digest) == ["a"]
    held.release()
    await pushing
    store = ManifestStore(driver, blobs)
    assert await _every_tag_resolves(store) == ["b"]
    assert (await store.get(NAME, "b")).body == body


@pytest_twisted.ensureDeferred
async def test_a_push_that_put_the_revision_back_keeps_its_tag(
    driver: IStorageDriver, blobs: BlobStore
) -> None:
    """The push runs whole after the delete removed the revision and before the delete's
    second look for tags: it came after the delete, and its tag stands."""
    await push_image_blobs(blobs)
    body = samples.oci_image()
    digest = (await ManifestStore(driver, blobs).put(NAME, "a", body, None)).digest
    # The delete reads the revision link twice: whether it exists, then whether it came back.
    held = _HeldAt(driver, "get_content", layout.revision_link(NAME, digest), skip=1)
    deleting = ensureDeferred(ManifestStore(held, blobs).delete(NAME, digest))  # type: ignore[arg-type]
    await _until_held(held, deleting)
    await ManifestStore(driver, blobs).put(NAME, "b", body, None)
    held.release()
    assert await deleting == ["a"]
    store = ManifestStore(driver, blobs)
    assert await _every_tag_resolves(store) == ["b"]
    assert (await store.get(NAME, "b")).body == body


@pytest_twisted.ensureDeferred
async def test_a_referrer_pushed_while_it_is_deleted_leaves_no_stale_entry(
    driver: IStorageDriver, blobs: BlobStore
) -> None:
    """The push of a referrer (by digest) adds its entry after the delete removed it, and
    finds the revision still there; the delete then removes the revision: the entry left
    behind is not listed."""
    await push_image_blobs(blobs)
    await push_blob(blobs, NAME, samples.SIGNATURE)
    image = samples.oci_image()
    subject = (await ManifestStore(driver, blobs).put(NAME, "image", image, None)).digest
    signature = samples.artifact(image)
    digest = digest_of(signature)
    await ManifestStore(driver, blobs).put(NAME, str(digest), signature, None)
    held = _HeldAt(driver, "delete", layout.revision_dir(NAME, digest))
    deleting = ensureDeferred(ManifestStore(held, blobs).delete(NAME, digest))  # type: ignore[arg-type]
    await _until_held(held, deleting)
    await ManifestStore(driver, blobs).put(NAME, str(digest), signature, None)
    held.release()
    await deleting
    store = ManifestStore(driver, blobs)
    await raises(MANIFEST_UNKNOWN, store.get(NAME, digest))
    assert await store.referrers.list_referrers(NAME, subject) == []


@pytest_twisted.ensureDeferred
async def test_a_referrer_pushed_after_its_delete_decided_stays_listed(
    driver: IStorageDriver, blobs: BlobStore
) -> None:
    """The delete saw its revision gone and is about to look for tags again when the push of
    the same referrer runs whole (and finds its revision in place): the push came after the
    delete, so its referrers entry stays listed with its manifest."""
    await push_image_blobs(blobs)
    await push_blob(blobs, NAME, samples.SIGNATURE)
    image = samples.oci_image()
    subject = (await ManifestStore(driver, blobs).put(NAME, "image", image, None)).digest
    signature = samples.artifact(image)
    digest = digest_of(signature)
    await ManifestStore(driver, blobs).put(NAME, str(digest), signature, None)
    # The delete lists the tags twice: before it removes the revision, and after.
    held = _HeldAt(driver, "list", layout.tags_dir(NAME), skip=1)
    deleting = ensureDeferred(ManifestStore(held, blobs).delete(NAME, digest))  # type: ignore[arg-type]
    await _until_held(held, deleting)
    await ManifestStore(driver, blobs).put(NAME, str(digest), signature, None)
    held.release()
    await deleting
    store = ManifestStore(driver, blobs)
    assert (await store.get(NAME, digest)).body == signature
    listed = await store.referrers.list_referrers(NAME, subject)
    assert [entry["digest"] for entry in listed] == [str(digest)]


@pytest_twisted.ensureDeferred
async def test_put_small_writes_again_data_of_another_size(
    blobs: BlobStore, driver: IStorageDriver
) -> None:
    """
    Every driver stores a manifest through `BlobStore.put_small`: stored data of another size
    than the bytes put (torn, truncated) is written again; data of the same size is trusted,
    never read or hashed (a push does not pay for reading what is stored).
    """
    body = samples.oci_image()
    digest = await blobs.put_small(body)
    path = layout.blob_data(digest)
    for damaged in (body[:-7], body + b"\n", b""):
        await driver.put_content(path, damaged)
        assert await blobs.put_small(body) == digest
        assert await driver.get_content(path) == body
    same_size = bytes(len(body))
    await driver.put_content(path, same_size)
    assert await blobs.put_small(body) == digest
    assert await driver.get_content(path) == same_size


class _FullAt:
    """The store's driver, refusing the writes of one path as a full disk does."""

    def __init__(self, driver: IStorageDriver, *paths: str) -> None:
        self._driver = driver
        self._paths = paths
        directlyProvides(self, providedBy(driver))  # IEmptyFolders for the filesystem's

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    async def put_content(self, path: str, data: bytes) -> None:
        if path in self._paths:
            raise StorageFull(f"writing {path}: No space left on device")
        await self._driver.put_content(path, data)


@pytest.mark.parametrize("refused", ["index", "current"])
@pytest_twisted.ensureDeferred
async def test_a_tag_the_storage_refuses_is_as_it_was(
    driver: IStorageDriver, blobs: BlobStore, refused: str
) -> None:
    """Either write of a tag refused: a new tag is not there, a moved one names its old
    manifest with no history entry for the new one; the new manifest stays by digest (its
    revision came first), for the client's retry."""
    await push_image_blobs(blobs)
    old, new = samples.oci_image(), samples.oci_image(layers=(samples.LAYER_2,))
    await ManifestStore(driver, blobs).put(NAME, "moved", old, None)
    digest = digest_of(new)

    def path(tag: str) -> str:
        if refused == "index":
            return layout.tag_index_link(NAME, tag, digest)
        return layout.tag_current_link(NAME, tag)

    for tag in ("moved", "new"):
        with pytest.raises(StorageFull):
            await ManifestStore(_FullAt(driver, path(tag)), blobs).put(NAME, tag, new, None)
    store = ManifestStore(driver, blobs)
    assert await store.tags.all_tags(NAME) == ["moved"]
    assert (await store.get(NAME, "moved")).body == old
    history = f"{layout.tag_dir(NAME, 'moved')}/index/sha256"
    assert await driver.list(history) == [digest_of(old).hex]
    assert (await store.get(NAME, digest)).body == new
    with pytest.raises(StorageFull):
        await ManifestStore(_FullAt(driver, path("new")), blobs).put(NAME, "new", new, None)
    assert (await store.get(NAME, digest)).body == new
    assert await store.tags.all_tags(NAME) == ["moved"]


@pytest_twisted.ensureDeferred
async def test_a_push_that_set_a_tag_keeps_its_manifest(
    driver: IStorageDriver, blobs: BlobStore
) -> None:
    """``?tag=`` tags: once one is set, a later one refused leaves the manifest (the first
    tag names it) and the refused tag as it was."""
    await push_image_blobs(blobs)
    body = samples.oci_image()
    digest = digest_of(body)
    full = _FullAt(driver, layout.tag_current_link(NAME, "b"))
    with pytest.raises(StorageFull):
        await ManifestStore(full, blobs).put(NAME, "a", body, None, tags=["b"])
    store = ManifestStore(driver, blobs)
    assert await store.tags.all_tags(NAME) == ["a"]
    assert (await store.get(NAME, "a")).body == body
    assert (await store.get(NAME, digest)).body == body
