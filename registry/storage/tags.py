"""
Tags: the ``_manifests/tags/<tag>`` folders registry:2 keeps per repository.

``current/link`` is the digest the tag points at; ``index/<alg>/<hex>/link`` records every
digest the tag ever pointed at (registry:2 writes it; its garbage collector reads it).

A tag is written as registry:2 writes it, the index link, then ``current/link``, so that
either registry reads what the other wrote; a write of the two that fails (a full disk) takes
back what the first left (`TagStore._take_back`), so that the tag is as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import attrs
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from registry.api.digests import Digest
from registry.api.errors import NAME_UNKNOWN, RegistryError
from registry.storage import layout
from registry.storage.blobs import damaged
from registry.storage.driver import (
    IEmptyFolders,
    IStorageDriver,
    NotAFileError,
    PathNotFoundError,
    StorageError,
)
from registry.storage.pagination import paginate, parse_count
from registry.storage.repositories import repository_exists

log = Logger()


class ITagStore(Interface):
    """Tag listing as handlers need it; the pull-through cache provides it too."""

    max_page = Attribute("The largest ``n`` honoured (None: no bound); more gets a Link.")

    def list_tags(
        name: str, n: int | str | None = None, last: str | None = None
    ) -> Awaitable[tuple[list[str], bool]]:
        """
        Sorted tags after ``last`` (exclusive), at most ``n``, and whether more follow.
        NAME_UNKNOWN for an unknown repository, PAGINATION_NUMBER_INVALID for a bad ``n``.
        """


@implementer(ITagStore)
@attrs.define
class TagStore:
    driver: IStorageDriver
    # Bound on ``n`` (None: no bound); larger requests get a shorter page and a Link.
    max_page: int | None = None
    # Called with (repository, tag, digest or None when removed) after each change made through
    # this store, so in-process indexes (the UI's tag dates) stay current without rescans.
    observers: list[Callable[[str, str, Digest | None], None]] = attrs.field(factory=list)

    def _notify(self, name: str, tag: str, digest: Digest | None) -> None:
        for observer in self.observers:
            observer(name, tag, digest)

    async def resolve(self, name: str, tag: str) -> Digest | None:
        """
        The digest ``tag`` points at, or None when there is no such tag.  A damaged link (a
        folder, bytes that are no digest) is a missing tag for readers, with one line for the
        operator; a push repairs it.
        """
        path = layout.tag_current_link(name, tag)
        try:
            text = await self.driver.get_content(path)
        except PathNotFoundError:
            return None
        except NotAFileError as exc:
            damaged(exc)
            return None
        try:
            return Digest.parse(text.decode("ascii", "replace").strip())
        except RegistryError:
            log.warn("storage damaged at {path}: not a digest: {text!r}", path=path, text=text[:80])
            return None

    async def set(self, name: str, tag: str, digest: Digest) -> None:
        """
        Point ``tag`` at ``digest``: the index link first, so history is never behind.  A
        write that fails leaves the tag as it was (`_take_back`), and raises.
        """
        data = str(digest).encode()
        index = layout.tag_index_link(name, tag, digest)
        recorded = await self._there(index)
        try:
            await self.driver.put_content(index, data)
            await self.driver.put_content(layout.tag_current_link(name, tag), data)
        except StorageError as exc:
            await self._take_back(name, tag, digest, recorded, exc)
            raise
        self._notify(name, tag, digest)

    async def _there(self, path: str) -> bool:
        try:
            await self.driver.stat(path)
        except PathNotFoundError:
            return False
        return True

    async def _take_back(
        self, name: str, tag: str, digest: Digest, recorded: bool, error: StorageError
    ) -> None:
        """
        After a write of `set` failed: ``current/link`` is whole, the old one or none (a
        file is replaced by a rename), but the index link may be written, and on a
        filesystem the folders of both writes made.  Left there, a new tag would be a folder
        the tag list shows and no pull can follow (registry:2 lists tag folders as well), a
        moved one would have a history entry for a digest it never named.  So the entry goes
        unless it was there before or the tag names ``digest`` now (another request set it
        meanwhile), then the folders left empty up to the tag's own.  Deletes need no room,
        so this works on the disk the write found full.  It is the price of registry:2's
        order, kept because it keeps the history never behind ``current`` (what a garbage
        collection keeps when a tag's link names no manifest, `registry.ops.gc`), where
        ``current`` first would need nothing taken back but leave a tag without its entry.
        A take-back that fails is one warning: the write's failure is what is answered.
        """
        try:
            if not recorded and await self.resolve(name, tag) != digest:
                with contextlib.suppress(PathNotFoundError):
                    await self.driver.delete(layout.tag_index_dir(name, tag, digest))
            folders = IEmptyFolders(self.driver, None)
            if folders is not None:
                keep = layout.tags_dir(name)
                await folders.remove_empty_folders(layout.tag_index_dir(name, tag, digest), keep)
                await folders.remove_empty_folders(layout.tag_current_dir(name, tag), keep)
        except StorageError as exc:
            log.warn(
                "tag {tag} of {name}: its write failed ({error}), and taking it back too: {reason}",
                tag=tag,
                name=name,
                error=str(error),
                reason=str(exc),
            )

    async def remove(self, name: str, tag: str) -> bool:
        """Delete the tag's folder; False when there was no such tag."""
        try:
            await self.driver.delete(layout.tag_dir(name, tag))
        except PathNotFoundError:
            return False
        self._notify(name, tag, None)
        return True

    async def all_tags(self, name: str) -> list[str]:
        """Every tag folder of the repository, sorted ([] when none)."""
        try:
            names = await self.driver.list(layout.tags_dir(name))
        except PathNotFoundError:
            return []
        return sorted(names)

    async def tags_for(self, name: str, digest: Digest) -> list[str]:
        """The tags currently pointing at ``digest``."""
        return [tag for tag in await self.all_tags(name) if await self.resolve(name, tag) == digest]

    async def list_tags(
        self, name: str, n: int | str | None = None, last: str | None = None
    ) -> tuple[list[str], bool]:
        count = parse_count(n, self.max_page)
        tags = await self.all_tags(name)
        if not tags and not await repository_exists(self.driver, name):
            raise RegistryError(NAME_UNKNOWN, {"name": name})
        return paginate(tags, count, last)
