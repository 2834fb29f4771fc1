"""Whether a repository exists: the one rule the manifest, tag and catalog logic share."""

from __future__ import annotations

from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.blobs import damaged
from registry.storage.driver import IStorageDriver, NotAFileError, PathNotFoundError

# Folders that make their parent a repository: manifests and tags, or layer links (the live
# catalog notes a repository at its first blob link too).  registry:2 2.8 looks for
# _manifests, earlier versions for _layers; neither counts a folder holding only _uploads (a
# push started, or an upload purged).
REPOSITORY_MARKERS = frozenset({"_manifests", "_layers"})


def holds_repository(children: list[str]) -> bool:
    """Whether a folder with these entries is a repository (`REPOSITORY_MARKERS`)."""
    return not REPOSITORY_MARKERS.isdisjoint(children)


async def repository_exists(driver: IStorageDriver, name: str) -> bool:
    """
    A repository exists while its folder holds manifests or layer links, even if all its
    content was deleted since (registry:2 never deletes those folders itself).
    """
    try:
        children = await driver.list(layout.repository(name))
    except PathNotFoundError:
        return False
    return holds_repository(children)


async def revision_linked(driver: IStorageDriver, name: str, digest: Digest) -> bool:
    """Whether the repository has manifest ``digest``: its revision link, naming it."""
    try:
        link = await driver.get_content(layout.revision_link(name, digest))
    except PathNotFoundError:
        return False
    except NotAFileError as exc:
        damaged(exc)
        return False
    return link.decode("ascii", "replace").strip() == str(digest)
