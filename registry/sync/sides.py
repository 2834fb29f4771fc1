"""
The two ends of a sync, behind one shape: this registry (`LocalSide`) and the remote one
(`RemoteSide`).  The planner and the copier ask either side the same questions (which
repositories, which tags, what digest a tag names, whether a blob or manifest is there) and
never know which is which; only moving a blob's bytes depends on the direction
(`registry.sync.transfer`).

`LocalSide` works through the registry's own stores, the ones the HTTP handlers use: an upload
is started, appended to and committed with its digest checked, and a manifest is put through
`IManifestStore.put`, which parses it and checks every blob and child it names, exactly as for
a client's push.  Going through the registry's own HTTP port instead would need the
registry's address and credentials for itself, and an authenticated registry would have to
grant the sync a user: the stores need neither, and validate the same way.
"""

from __future__ import annotations

from typing import Any

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.api.names import check_name
from registry.client import NotFound, RegistryClient
from registry.client.walk import FetchedManifest
from registry.handlers.context import RegistryContext

# A catalog or tag list page asked of the local stores.
_PAGE = 1000


class RepositoryMissing(Exception):
    """The side has no such repository (its tag list answers that it does not know it)."""


class LocalSide:
    """This registry, through its stores.  Every repository name is checked as a request's
    is (NAME_INVALID) before a store sees it: the stores take a name as a storage path, and a
    sync's names come from a remote's catalog (``team/app/_manifests/tags`` would be stored
    inside ``team/app``'s own folders)."""

    label = "local"

    def __init__(self, ctx: RegistryContext) -> None:
        self.ctx = ctx

    async def repositories(self) -> list[str]:
        names: list[str] = []
        last: str | None = None
        for _ in range(1_000_000):  # bounded: each page moves `last` forward
            page, more = await self.ctx.catalog.list_repositories(_PAGE, last)
            names.extend(page)
            if not more or not page:
                break
            last = page[-1]
        return names

    async def tags(self, name: str) -> list[str]:
        """The repository's tags; `RepositoryMissing` when there is no such repository."""
        check_name(name)
        try:
            tags, _ = await self.ctx.tags.list_tags(name)
        except RegistryError as exc:
            raise RepositoryMissing(f"no repository {name} here ({exc.code.value})") from None
        return tags

    async def tag_digest(self, name: str, tag: str) -> Digest | None:
        check_name(name)
        try:
            return (await self.ctx.manifests.get(name, tag)).digest
        except RegistryError:
            return None

    async def manifest(self, name: str, reference: str | Digest) -> FetchedManifest:
        stored = await self.ctx.manifests.get(check_name(name), reference)
        return FetchedManifest(stored.body, stored.media_type, stored.digest)

    async def has_manifest(self, name: str, digest: Digest) -> bool:
        check_name(name)
        try:
            await self.ctx.manifests.get(name, digest)
        except RegistryError:
            return False
        return True

    async def put_manifest(self, name: str, reference: str, body: bytes, media_type: str) -> None:
        await self.ctx.manifests.put(check_name(name), reference, body, media_type)

    async def has_blob(self, name: str, digest: Digest) -> bool:
        """True when the repository can serve the blob; a blob stored for another repository
        is linked here (a local mount), so its bytes are not fetched again."""
        check_name(name)
        if await self.ctx.blobs.is_linked(name, digest):
            return await self.ctx.blobs.exists(digest) is not None
        if await self.ctx.blobs.exists(digest) is None:
            return False
        await self.ctx.blobs.link(name, digest)
        return True

    async def blob_size(self, name: str, digest: Digest) -> int:
        return (await self.ctx.blobs.stat(check_name(name), digest)).size

    async def referrers(self, name: str, digest: Digest) -> list[dict[str, Any]]:
        return await self.ctx.referrers.list_referrers(check_name(name), digest)


class RemoteSide:
    """The remote registry, through the public client."""

    label = "remote"

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    async def repositories(self) -> list[str]:
        return [name async for name in self.client.all_repositories(page_size=_PAGE)]

    async def tags(self, name: str) -> list[str]:
        """The repository's tags; `RepositoryMissing` when the remote answers 404 (an unknown
        repository, or a ``remote`` that is not a registry's address)."""
        try:
            return [tag async for tag in self.client.all_tags(name, page_size=_PAGE)]
        except NotFound as exc:
            raise RepositoryMissing(f"the remote has no repository {name} ({exc})") from None

    async def tag_digest(self, name: str, tag: str) -> Digest | None:
        # A HEAD: Docker Hub does not count it against the pull rate limit.
        found = await self.client.head_manifest(name, tag)
        return found.digest if found is not None else None

    async def manifest(self, name: str, reference: str | Digest) -> FetchedManifest:
        got = await self.client.get_manifest(name, str(reference))
        assert got.body is not None
        return FetchedManifest(got.body, got.media_type, got.digest)

    async def has_manifest(self, name: str, digest: Digest) -> bool:
        return await self.client.head_manifest(name, str(digest)) is not None

    async def put_manifest(self, name: str, reference: str, body: bytes, media_type: str) -> None:
        await self.client.put_manifest(name, reference, body, media_type)

    async def has_blob(self, name: str, digest: Digest) -> bool:
        return await self.client.blob_exists(name, digest) is not None

    async def referrers(self, name: str, digest: Digest) -> list[dict[str, Any]]:
        # A remote without the referrers API (registry:2 before v3) is asked for the
        # subject's fallback tag (``sha256-<hex>``), where clients that push to it (cosign,
        # oras, a push of this registry's) list the referrers, as `txregistry copy
        # --referrers` reads it: a pull whose tag filters leave that tag out still brings
        # them along.
        return await self.client.referrers(name, digest, tag_schema=True) or []


Side = LocalSide | RemoteSide
