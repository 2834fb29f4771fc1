"""Whether a repository exists: the one rule the manifest, tag and catalog logic share."""

from __future__ import annotations

from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError


async def repository_exists(driver: IStorageDriver, name: str) -> bool:
    """
    A repository exists while its folder holds anything (registry:2's rule: it never deletes
    repository folders itself, so a repository whose content was all deleted still exists).
    """
    try:
        await driver.stat(layout.repository(name))
    except PathNotFoundError:
        return False
    return True
