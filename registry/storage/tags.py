"""
Tags: the ``_manifests/tags/<tag>`` folders registry:2 keeps per repository.

``current/link`` is the digest the tag points at; ``index/<alg>/<hex>/link`` records every
digest the tag ever pointed at (registry:2 writes it; its garbage collector reads it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from registry.api.digests import Digest
from registry.api.errors import NAME_UNKNOWN, RegistryError
from registry.storage import layout
from registry.storage.blobs import damaged
from registry.storage.driver import IStorageDriver, NotAFileError, PathNotFoundError
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
        """Point ``tag`` at ``digest``: the index link first, so history is never behind."""
        data = str(digest).encode()
        await self.driver.put_content(layout.tag_index_link(name, tag, digest), data)
        await self.driver.put_content(layout.tag_current_link(name, tag), data)
        self._notify(name, tag, digest)

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
