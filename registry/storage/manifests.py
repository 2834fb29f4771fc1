"""
Manifests in a repository: push (validate, check references, store), pull, delete.

A manifest is stored the registry:2 way: its bytes as a blob, exactly as pushed (its digest
is over those bytes), plus ``_manifests/revisions/<alg>/<hex>/link`` saying the repository
has it; tags point at revisions.  Its media type is read back from the stored bytes, as
registry:2 does, so no side file can disagree with the content (a process remembers the bytes
and type of manifests it served lately by digest, `RecentManifests`, which no write can make
stale).

Write order matters to concurrent readers: blob data, then the revision link, then the
referrers index, then the tag; a reader following a tag therefore always finds the rest.
Deletion goes the other way round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import attrs
from twisted.internet.threads import deferToThread
from zope.interface import Interface, implementer

from registry.api import mediatypes
from registry.api.digests import Digest, digest_of
from registry.api.errors import (
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    RegistryError,
)
from registry.api.names import check_tag
from registry.manifests import (
    DEFAULT_INDEX_POLICY,
    DEFAULT_URL_POLICY,
    IndexPolicy,
    ParsedManifest,
    UrlPolicy,
    load_json_object,
    parse_manifest,
    stored_media_type,
)
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.gcguard import GcGuard
from registry.storage.listing import digest_folders
from registry.storage.referrers import ReferrersIndex, referrer_descriptor
from registry.storage.repositories import repository_exists, revision_linked
from registry.storage.tags import TagStore

# The distribution-spec asks registries to accept at least 4 MiB; registry:2 also uses 4 MiB.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


class ManifestTooLarge(RegistryError):
    """MANIFEST_INVALID for a body over the size limit (the handler answers it with 413)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            MANIFEST_INVALID,
            {"size": length, "limit": limit},
            f"manifest too big: {length} bytes, the limit is {limit}",
        )


class IndexChildUnknown(RegistryError):
    """
    A manifest an index references that the repository lacks: MANIFEST_BLOB_UNKNOWN, as the
    spec requires of a manifest refused for naming "a manifest or blob that does not exist"
    (and registry:2 answers); the message and detail say it is a manifest.  400: the push is
    incomplete, the repository is not missing.
    """

    def __init__(self, digest: Digest, media_type: str) -> None:
        super().__init__(
            MANIFEST_BLOB_UNKNOWN,
            {"digest": str(digest), "mediaType": media_type},
            f"index references manifest {digest} unknown to this repository",
        )


def check_manifest_size(length: int | None, limit: int = MAX_MANIFEST_SIZE) -> None:
    """
    Refuse a manifest body longer than ``limit`` (`ManifestTooLarge`), before reading it when
    its length is known.  ``None`` (length unknown) passes.
    """
    if length is not None and length > limit:
        raise ManifestTooLarge(length, limit)


def parse_reference(reference: str | Digest) -> Digest | str:
    """A digest (DIGEST_INVALID when malformed) or a tag (TAG_INVALID when malformed)."""
    if isinstance(reference, Digest):
        return reference
    if Digest.is_digest(reference):
        return Digest.parse(reference)
    return check_tag(reference)


def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """Each tag checked (TAG_INVALID for the first bad one), duplicates dropped, order kept."""
    return tuple(dict.fromkeys(check_tag(tag) for tag in tags))


@attrs.frozen
class PutResult:
    """
    What a manifest PUT stored: its digest and media type, the subject it refers to, and the
    tags set by ``?tag=`` parameters (the handler turns them into response headers).
    """

    digest: Digest
    media_type: str
    subject: Digest | None
    tags: tuple[str, ...] = ()


@attrs.frozen
class StoredManifest:
    """A manifest to serve: the bytes as pushed, their digest and media type."""

    digest: Digest
    media_type: str
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)


class IManifestStore(Interface):
    """What handlers need of manifests; the pull-through cache provides it too."""

    def get(name: str, reference: str | Digest) -> Awaitable[StoredManifest]:
        """By tag or digest; MANIFEST_UNKNOWN, or NAME_UNKNOWN for an unknown repository."""

    def put(
        name: str,
        reference: str | Digest,
        body: bytes,
        content_type: str | None,
        tags: Sequence[str] = (),
    ) -> Awaitable[PutResult]:
        """
        Validate and store; the errors are those of the distribution-spec's PUT.  ``tags``
        (the ``?tag=`` parameters) are pointed at the manifest too, after the reference's own
        tag; all are checked before anything is stored.
        """

    def delete(name: str, digest: str | Digest) -> Awaitable[list[str]]:
        """Delete a manifest and the tags pointing at it (returned)."""

    def untag(name: str, tag: str) -> Awaitable[None]:
        """Delete a tag only; MANIFEST_UNKNOWN when there is no such tag."""


# Manifests from this size on are parsed and validated in a thread: at the largest allowed
# (4 MiB, tens of thousands of descriptors) that takes the better part of a second, which
# on the reactor thread every other request of the process would wait.  Smaller ones are
# parsed in place: the thread hop would cost more than the parse.
PARSE_IN_THREAD = 256 * 1024


async def _parsed(body: bytes, content_type: str | None, url_policy: UrlPolicy) -> ParsedManifest:
    if len(body) < PARSE_IN_THREAD:
        return parse_manifest(body, content_type, url_policy)
    parsed: ParsedManifest = await deferToThread(parse_manifest, body, content_type, url_policy)
    return parsed


def _subject_of(body: bytes) -> Digest | None:
    """The subject digest of stored bytes, leniently (they may predate our validation)."""
    try:
        document = load_json_object(body)
        subject = document.get("subject")
        if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
            return Digest.parse(subject["digest"])
    except RegistryError:
        pass
    return None


class RecentManifests:
    """
    The bytes and media type of manifests served lately, by digest, within a byte budget.

    A digest names its bytes for good, so an entry can never be stale: what a pull still
    checks on storage every time is that the repository has the manifest (its revision link,
    which a delete through any worker removes first) and, for a tag, where the tag points now.
    What it saves is the blob read and the JSON parse for the media type on each pull.  Bytes
    that do not hash to their digest are not remembered: damaged storage (served as read) is
    rewritten by a push of the manifest (`BlobStore.put_small`), which the next pull reads.
    (A schema1 manifest registry:2 signed is named by its payload's digest: read each time.)
    """

    # Larger manifests (big indexes) are read each time: they would crowd out the rest.
    LARGEST = 64 * 1024

    def __init__(self, budget: int = 2 * 1024 * 1024) -> None:
        self._budget = budget
        self._used = 0
        self._entries: dict[Digest, StoredManifest] = {}

    def get(self, digest: Digest) -> StoredManifest | None:
        return self._entries.get(digest)

    def add(self, manifest: StoredManifest) -> None:
        size = manifest.size
        if size > self.LARGEST or manifest.digest in self._entries:
            return
        if digest_of(manifest.body, manifest.digest.algorithm) != manifest.digest:
            return
        # Oldest first out (dicts keep insertion order): a bounded loop, at most every entry.
        while self._entries and self._used + size > self._budget:
            oldest = next(iter(self._entries))
            self._used -= self._entries.pop(oldest).size
        self._entries[manifest.digest] = manifest
        self._used += size


@implementer(IManifestStore)
@attrs.define
class ManifestStore:
    driver: IStorageDriver
    blobs: BlobStore
    tags: TagStore = attrs.field(
        default=attrs.Factory(lambda self: TagStore(self.driver), takes_self=True)
    )
    referrers: ReferrersIndex = attrs.field(
        default=attrs.Factory(lambda self: ReferrersIndex(self.driver), takes_self=True)
    )
    # When set, a manifest push records its repository in the catalog index.
    catalog: Catalog | None = None
    url_policy: UrlPolicy = DEFAULT_URL_POLICY
    index_policy: IndexPolicy = DEFAULT_INDEX_POLICY
    # False: an image manifest may name a config or layers the repository does not have
    # (sparse images: a mirror that leaves layers out); they stay unknown when pulled.
    blobs_required: bool = True
    max_size: int = MAX_MANIFEST_SIZE
    recent: RecentManifests = attrs.field(factory=RecentManifests)

    async def _unknown(self, name: str, reference: str | Digest) -> RegistryError:
        if not await repository_exists(self.driver, name):
            return RegistryError(NAME_UNKNOWN, {"name": name})
        return RegistryError(MANIFEST_UNKNOWN, {"name": name, "reference": str(reference)})

    async def exists(self, name: str, digest: Digest) -> bool:
        """Whether the repository has the manifest: its revision link and its bytes."""
        return await self._linked(name, digest) and await self.blobs.exists(digest) is not None

    async def _linked(self, name: str, digest: Digest) -> bool:
        """Whether the repository's revision link for ``digest`` is there."""
        return await revision_linked(self.driver, name, digest)

    async def resolve(self, name: str, reference: str | Digest) -> Digest:
        """The digest a tag or digest reference names in the repository, if it has it."""
        ref = parse_reference(reference)
        digest = await self.tags.resolve(name, ref) if isinstance(ref, str) else ref
        if digest is None or not await self.exists(name, digest):
            raise await self._unknown(name, reference)
        return digest

    async def get(self, name: str, reference: str | Digest) -> StoredManifest:
        # The hot path of every pull: link, then the bytes; a missing blob shows up as a failed
        # read, so no separate existence check (one file operation fewer per request).
        ref = parse_reference(reference)
        digest = await self.tags.resolve(name, ref) if isinstance(ref, str) else ref
        if digest is None or not await self._linked(name, digest):
            raise await self._unknown(name, reference)
        manifest = self.recent.get(digest)
        if manifest is not None:
            return manifest
        try:
            body = await self.blobs.get_small(digest)
        except RegistryError:
            raise await self._unknown(name, reference) from None
        manifest = StoredManifest(digest, stored_media_type(body), body)
        self.recent.add(manifest)
        return manifest

    async def put(
        self,
        name: str,
        reference: str | Digest,
        body: bytes,
        content_type: str | None,
        tags: Sequence[str] = (),
    ) -> PutResult:
        check_manifest_size(len(body), self.max_size)
        ref = parse_reference(reference)
        extra_tags = check_tags(tags)
        manifest = await _parsed(body, content_type, self.url_policy)
        if isinstance(ref, Digest):
            digest = digest_of(body, ref.algorithm)
            if digest != ref:
                raise RegistryError(
                    DIGEST_INVALID,
                    {"expected": str(ref), "actual": str(digest)},
                    "manifest digest does not match the digest in the URL",
                )
        else:
            digest = digest_of(body)
        await self._check_references(name, manifest)
        await self.blobs.put_small(body, digest.algorithm)
        # Whether this push adds the revision: one that fails below takes back only its own.
        existed = await self._linked(name, digest)
        await self.driver.put_content(layout.revision_link(name, digest), str(digest).encode())
        await self._kept_by_collector(name, digest, manifest, existed)
        if manifest.subject is not None:
            descriptor = referrer_descriptor(manifest, digest, len(body))
            await self.referrers.add(name, manifest.subject.digest, descriptor)
        own_tag = (ref,) if isinstance(ref, str) else ()
        new_tags = dict.fromkeys((*own_tag, *extra_tags))
        for tag in new_tags:
            # The link holds the digest as pushed (sha512 included), so a GET by tag answers
            # with the digest the client knows the manifest by.  A tag write that fails (a
            # full disk) leaves that tag as it was (`TagStore.set`); the manifest stays,
            # pullable by digest, for the client's retry.  Taking its revision back would
            # race a push of the same manifest acknowledged meanwhile in another worker.
            await self.tags.set(name, tag, digest)
        if not await self._linked(name, digest):
            # A delete of this manifest ran meanwhile (another request, another worker) and
            # removed the revision after it had looked for tags and referrers: the tags just
            # set would name a manifest the repository no longer has, listed and never
            # pullable.  The push stands, as if it came after the delete: the revision, its
            # referrers entry and its tags again (the delete's second look may have taken
            # the tags; see `delete`).
            await self.driver.put_content(layout.revision_link(name, digest), str(digest).encode())
            if manifest.subject is not None:
                descriptor = referrer_descriptor(manifest, digest, len(body))
                await self.referrers.add(name, manifest.subject.digest, descriptor)
            for tag in new_tags:
                await self.tags.set(name, tag, digest)
        if self.catalog is not None:
            await self.catalog.note_repository(name)
        subject = manifest.subject.digest if manifest.subject is not None else None
        return PutResult(digest, manifest.media_type, subject, extra_tags)

    async def _check_references(self, name: str, manifest: ParsedManifest) -> None:
        """
        Config and layers must be blobs of this repository (foreign layers excepted) unless
        ``blobs_required`` is off, index children manifests of this repository, as far as
        ``index_policy`` asks (a sparse index may leave platforms out).  The subject need not
        exist (the spec lets a referrer arrive before its subject).
        """
        seen: set[Digest] = set()
        for descriptor in manifest.blob_references:
            if descriptor.is_foreign or descriptor.digest in seen:
                continue
            seen.add(descriptor.digest)
            if await self._blob_available(name, descriptor.digest):
                continue
            if str(descriptor.digest) == mediatypes.OCI_EMPTY_DIGEST:
                # The empty config's content is known: store it rather than fail a client
                # that did not upload the two bytes.
                await self.blobs.put_small(mediatypes.OCI_EMPTY_CONTENT)
                await self.blobs.link(name, descriptor.digest)
                continue
            if not self.blobs_required:
                continue
            raise RegistryError(
                MANIFEST_BLOB_UNKNOWN,
                {"digest": str(descriptor.digest), "mediaType": descriptor.media_type},
                f"manifest references blob {descriptor.digest} unknown to this repository",
            )
        for child in manifest.manifests:
            if child.digest in seen or not self.index_policy.must_exist(child):
                continue
            seen.add(child.digest)
            if not await self.exists(name, child.digest):
                raise IndexChildUnknown(child.digest, child.media_type)

    async def _kept_by_collector(
        self, name: str, digest: Digest, manifest: ParsedManifest, existed: bool
    ) -> None:
        """
        After the revision is written: a garbage collection running now keeps what the
        manifest refers to, or this push fails before any tag moves, naming the blob it
        lost (`registry.storage.gcguard`), and takes back the revision it added, so that
        nothing points at a missing blob; the client then uploads it again.
        """
        referred = [digest]
        referred += [d.digest for d in manifest.blob_references if not d.is_foreign]
        children = [child.digest for child in manifest.manifests]
        referred += children
        # The revisions the put needs: its own (a re-put of an untagged manifest the
        # collector is deleting) and its children's; the subject need not exist.
        gone, deleting = await GcGuard(self.driver).protect_manifest(
            name, referred, [digest, *children]
        )
        if not gone and not deleting:
            return
        if not existed:
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(layout.revision_dir(name, digest))
        if gone:
            raise RegistryError(
                MANIFEST_BLOB_UNKNOWN,
                {"digest": str(gone[0]), "reason": "deleted by a garbage collection"},
                f"manifest references blob {gone[0]} that a garbage collection was deleting:"
                " push it again",
            )
        raise RegistryError(
            MANIFEST_BLOB_UNKNOWN,
            {"digest": str(deleting[0]), "reason": "deleted by a garbage collection"},
            f"manifest {deleting[0]} was being deleted from {name} by a garbage collection:"
            " push it again",
        )

    async def _blob_available(self, name: str, digest: Digest) -> bool:
        return await self.blobs.is_linked(name, digest) and (
            await self.blobs.exists(digest) is not None
        )

    async def delete(self, name: str, digest: str | Digest) -> list[str]:
        ref = parse_reference(digest)
        if not isinstance(ref, Digest):
            raise RegistryError(
                MANIFEST_INVALID, {"reference": ref}, "delete a manifest by digest, or untag"
            )
        if not await self.exists(name, ref):
            raise await self._unknown(name, ref)
        try:
            body: bytes | None = await self.blobs.get_small(ref)
        except RegistryError:
            body = None
        # Tags first: a delete cut short (a kill) leaves an untagged manifest, never a tag
        # naming a removed one.
        removed = await self._untag_all(name, ref)
        subject = _subject_of(body) if body is not None else None
        if subject is not None:
            await self.referrers.remove(name, subject, ref)
        with contextlib.suppress(PathNotFoundError):
            await self.driver.delete(layout.revision_dir(name, ref))
        # A push of the same manifest may have set a tag after the first look and checked its
        # revision before it went: looked for again, now that the revision is gone.  Unless a
        # push put the revision back meanwhile (`put`): that push came after this delete, and
        # its tags stand.  (A referrers entry such a push added is not listed without its
        # revision: `ReferrersIndex.page`.)
        if not await self._linked(name, ref):
            removed += [tag for tag in await self._untag_all(name, ref) if tag not in removed]
        return removed

    async def _untag_all(self, name: str, digest: Digest) -> list[str]:
        removed = []
        for tag in await self.tags.tags_for(name, digest):
            if await self.tags.remove(name, tag):
                removed.append(tag)
        return removed

    async def untag(self, name: str, tag: str) -> None:
        check_tag(tag)
        if not await self.tags.remove(name, tag):
            raise await self._unknown(name, tag)

    async def reindex_referrers(self, name: str) -> int:
        """
        Rebuild the repository's referrers index from its manifests: for data pushed or
        deleted by another program (registry:2, older txregistry).  Entries whose referrer
        is no longer a manifest of the repository go.  An operations task, not a request
        path.  Returns how many referrers are indexed.
        """
        indexed: dict[str, set[str]] = {}  # subject -> referrers
        for digest in await self._revisions(name):
            try:
                body = await self.blobs.get_small(digest)
                manifest = parse_manifest(body, None, DEFAULT_URL_POLICY)
            except RegistryError:
                continue
            if manifest.subject is not None:
                descriptor = referrer_descriptor(manifest, digest, len(body))
                await self.referrers.add(name, manifest.subject.digest, descriptor)
                indexed.setdefault(str(manifest.subject.digest), set()).add(str(digest))
        for subject, referrers in (await self.referrers.edges(name)).items():
            for referrer in referrers - indexed.get(subject, set()):
                gone = Digest.parse(referrer)
                # Looked at again: a push writes the revision's link before its entry here,
                # so an entry whose link is there now was pushed during this walk.
                if not await self._has_revision(name, gone):
                    await self.referrers.remove(name, Digest.parse(subject), gone)
        return sum(len(referrers) for referrers in indexed.values())

    async def _has_revision(self, name: str, digest: Digest) -> bool:
        try:
            await self.driver.stat(layout.revision_link(name, digest))
        except PathNotFoundError:
            return False
        return True

    async def _revisions(self, name: str) -> list[Digest]:
        """Revision folders holding their ``link``: registry:2's delete removes only that."""
        return [
            digest
            for digest in await digest_folders(self.driver, layout.revisions_dir(name))
            if await self._has_revision(name, digest)
        ]


# Written once every repository's referrers were indexed (`ensure_referrers_index`,
# `txregistry reindex-referrers`); a registry:2 data directory has none.
REFERRERS_COMPLETE = f"{layout.OWN}/referrers-complete"


async def ensure_referrers_index(
    store: ManifestStore, repositories: Callable[[], Awaitable[list[str]]]
) -> tuple[int, int] | None:
    """
    Index the referrers of every repository (``repositories()`` lists them) unless that was
    done before: the referrers API then answers for manifests another program pushed
    (registry:2 keeps no index).  Returns how many referrers in how many repositories, None
    when it was done before (the usual case: one ``stat``, no walk).
    """
    try:
        await store.driver.stat(REFERRERS_COMPLETE)
        return None
    except PathNotFoundError:
        pass
    names = await repositories()
    count = 0
    for name in names:
        count += await store.reindex_referrers(name)
    await store.driver.put_content(REFERRERS_COMPLETE, b"1")
    return count, len(names)
