"""
What a run copies: the source's repositories that the globs select, their tags that the tag
filters select, and of those the tags whose digest differs on the receiving side.

Comparing digests is what makes a sync incremental: a tag that names the same digest on both
sides is up to date (its manifest was validated against complete content when it was put), so
a run with nothing new upstream sends no manifest and no blob, only a HEAD per tag.
"""

from __future__ import annotations

import attrs

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.api.names import check_name, check_tag
from registry.sync.config import SyncConfig
from registry.sync.filters import is_glob, literal_prefix, map_name
from registry.sync.sides import RepositoryMissing, Side


@attrs.frozen
class TagPlan:
    tag: str
    source: Digest
    target: Digest | None

    @property
    def up_to_date(self) -> bool:
        return self.source == self.target


class InvalidName(ValueError):
    """A repository name that no registry may hold (NAME_INVALID): one a remote's catalog
    lists, or the name it would get on the receiving side."""


def check_names(name: str, destination: str) -> None:
    """Refuse a repository whose name, or whose name on the receiving side, is not a valid
    repository name (the check a push's URL gets): a remote's catalog may list anything
    (``Team/App``, ``team/app/_manifests/tags``), and such a name written to this
    registry's storage would land inside another repository's folders."""
    try:
        check_name(name)
    except RegistryError as exc:
        reason = (exc.detail or {}).get("reason", "")
        raise InvalidName(f"not a valid repository name ({reason}); skipped") from None
    try:
        check_name(destination)
    except RegistryError as exc:
        reason = (exc.detail or {}).get("reason", "")
        raise InvalidName(
            f"its name on the receiving side is not a valid repository name ({reason}), "
            f"skipped: {destination[:300]}"
        ) from None


def plain_names(config: SyncConfig) -> tuple[str, ...]:
    """The globs that are plain repository names (no wildcard): tried directly, whether or
    not a catalog lists them."""
    return tuple(glob for glob in config.repositories.globs if not is_glob(glob))


async def catalog_names(source: Side, config: SyncConfig) -> list[str]:
    """The names of the source's catalog that a glob matches; none, and no catalog read,
    when every glob is a plain name (a registry without a catalog: Docker Hub)."""
    if config.repositories.literal_names is not None:
        return []
    return [name for name in await source.repositories() if config.repositories.matches(name)]


def target_name(config: SyncConfig, name: str) -> str:
    """A repository's name on the receiving side (``destination``, ``strip_prefix``)."""
    strip = literal_prefix(config.repositories.globs) if config.strip_prefix else ""
    return map_name(name, strip, config.destination)


async def select_tags(source: Side, config: SyncConfig, name: str) -> list[str]:
    """The repository's tags the tag filters select.  A repository the remote does not have
    is an error when a pull's ``repositories`` names it (a typo, a ``remote`` that is no
    registry: a run copying nothing must not end ``ok``); it has no tags when it came from the
    catalog (deleted since it was listed), or when a push names a local repository not pushed
    yet (a sync set up before its first image)."""
    try:
        tags = await source.tags(name)
    except RepositoryMissing:
        if source.label == "remote" and name in plain_names(config):
            raise
        tags = []
    return config.tags.select(tags)


async def plan_tag(
    source: Side, target: Side, name: str, destination: str, tag: str
) -> TagPlan | None:
    """One tag with its digest on both sides (each asked for when the tag's turn comes: a
    failure is that tag's alone); None when it vanished from the source meanwhile.  A tag
    that is no valid tag (a remote's list may hold anything) is refused before it is asked
    for."""
    check_tag(tag)
    digest = await source.tag_digest(name, tag)
    if digest is None:
        return None
    return TagPlan(tag, digest, await target.tag_digest(destination, tag))
