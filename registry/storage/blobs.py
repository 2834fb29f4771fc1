"""
Blobs: content stored once under its digest, and per-repository links that let a repository
serve it.

A blob is visible in a repository when both its data file and the repository's ``_layers`` link
exist (registry:2's rule).  Manifests are blobs too; their repository link is the
``_manifests/revisions`` one, handled by the manifest store.
"""

from __future__ import annotations

from collections.abc import Awaitable

import attrs
from twisted.logger import Logger
from twisted.web.iweb import IBodyProducer
from zope.interface import Interface, implementer

from registry.api.digests import Digest, digest_of
from registry.api.errors import BLOB_UNKNOWN, RegistryError
from registry.storage import layout
from registry.storage.driver import IStorageDriver, NotAFileError, PathNotFoundError

log = Logger()


def damaged(error: NotAFileError) -> None:
    """One line for the operator: the client gets "unknown", which is not the whole story."""
    log.warn("{error}", error=error)


@attrs.frozen
class BlobInfo:
    digest: Digest
    size: int


class IBlobStore(Interface):
    """Every blob operation handlers use; the pull-through cache's wrapper provides it too.

    Complete on purpose: a wrapper (the pull-through one) implements each method itself, and
    ``verifyObject`` in the tests catches a method added here and not there, so a new write
    can never reach a read-only cache by inheritance."""

    def exists(digest: Digest) -> Awaitable[BlobInfo | None]:
        """The blob's stored data whatever repository links it, or None (for mounts: the
        caller checks access to a repository that links it first)."""

    def is_linked(name: str, digest: Digest) -> Awaitable[bool]:
        """Whether repository ``name`` links the blob (the data may still be missing)."""

    def stat(name: str, digest: Digest) -> Awaitable[BlobInfo]:
        """Size of a blob the repository may serve; RegistryError BLOB_UNKNOWN otherwise."""

    def open(
        name: str, digest: Digest, offset: int, length: int | None
    ) -> Awaitable[IBodyProducer]:
        """A producer of the blob's bytes; BLOB_UNKNOWN when it is not served here."""

    def redirect_url(name: str, digest: Digest) -> Awaitable[str | None]:
        """A URL the client may fetch the blob from directly, or None."""

    def link(name: str, digest: Digest) -> Awaitable[None]:
        """Make an existing blob visible in repository ``name`` (commit, mount)."""

    def unlink(name: str, digest: Digest) -> Awaitable[None]:
        """Remove the blob from the repository (the data stays for garbage collection)."""


def _unknown(name: str, digest: Digest) -> RegistryError:
    return RegistryError(BLOB_UNKNOWN, {"name": name, "digest": str(digest)})


@implementer(IBlobStore)
@attrs.define
class BlobStore:
    driver: IStorageDriver

    async def exists(self, digest: Digest) -> BlobInfo | None:
        """
        The blob's global data, whatever repository holds it.  A folder at the data's path is
        no blob: answered as one, clients would skip uploading it and pull nothing; unknown,
        the next push of those bytes replaces it.
        """
        path = layout.blob_data(digest)
        try:
            info = await self.driver.stat(path)
        except PathNotFoundError:
            return None
        if info.is_dir:
            damaged(NotAFileError(path))
            return None
        return BlobInfo(digest, info.size)

    async def is_linked(self, name: str, digest: Digest) -> bool:
        try:
            link = await self.driver.get_content(layout.layer_link(name, digest))
        except PathNotFoundError:
            return False
        except NotAFileError as exc:
            damaged(exc)
            return False
        return link.decode("ascii", "replace").strip() == str(digest)

    async def stat(self, name: str, digest: Digest) -> BlobInfo:
        if not await self.is_linked(name, digest):
            raise _unknown(name, digest)
        info = await self.exists(digest)
        if info is None:
            raise _unknown(name, digest)
        return info

    async def open(
        self, name: str, digest: Digest, offset: int = 0, length: int | None = None
    ) -> IBodyProducer:
        if not await self.is_linked(name, digest):
            raise _unknown(name, digest)
        try:
            return await self.driver.reader(layout.blob_data(digest), offset, length)
        except PathNotFoundError:
            raise _unknown(name, digest) from None
        except NotAFileError as exc:
            damaged(exc)
            raise _unknown(name, digest) from None

    async def redirect_url(self, name: str, digest: Digest) -> str | None:
        return await self.driver.redirect_url(layout.blob_data(digest), "GET")

    async def link(self, name: str, digest: Digest) -> None:
        await self.driver.put_content(layout.layer_link(name, digest), str(digest).encode())

    async def unlink(self, name: str, digest: Digest) -> None:
        try:
            await self.driver.delete(layout.layer_link(name, digest).rsplit("/", 1)[0])
        except PathNotFoundError:
            raise _unknown(name, digest) from None

    async def put_small(self, data: bytes, algorithm: str = "sha256") -> Digest:
        """
        Store a small blob (a manifest, a config) given whole; idempotent.  Stored already
        with the same size, it is kept as it is (not read back: a push does not pay for
        hashing what is stored).  Stored with another size, the stored bytes are damaged (torn
        by a crash without fsync, truncated by hand) and fail every pull's digest check: these
        replace them, written as any file is (whole, in one rename or one S3 PUT), as an
        upload of a blob does (`registry.storage.uploads`).
        """
        digest = digest_of(data, algorithm)
        stored = await self.exists(digest)
        if stored is not None and stored.size == len(data):
            return digest
        path = layout.blob_data(digest)
        if stored is not None:
            log.warn(
                "storage repaired at {path}: {stored} bytes stored, the blob written has {size}",
                path=path,
                stored=stored.size,
                size=len(data),
            )
        await self.driver.put_content(path, data)
        return digest

    async def get_small(self, digest: Digest) -> bytes:
        """The whole content of a small blob (manifests); BLOB_UNKNOWN when missing."""
        try:
            return await self.driver.get_content(layout.blob_data(digest))
        except PathNotFoundError:
            raise RegistryError(BLOB_UNKNOWN, {"digest": str(digest)}) from None
        except NotAFileError as exc:
            damaged(exc)
            raise RegistryError(BLOB_UNKNOWN, {"digest": str(digest)}) from None
