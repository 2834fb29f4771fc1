"""
Listings of the registry's folders that every reader walks the same way.

Several folders of the layout hold one sub-folder per digest, ``<root>/<alg>/<hex>``: a
repository's revisions and layer links, the referrers index's subjects.  Garbage collection,
the manifest store, the referrers index and the UI all list them; this is the one walk, which
treats a missing folder as empty and skips names that are not digests (a stray file left by a
person or another tool is no reason to fail).
"""

from __future__ import annotations

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.storage.driver import IStorageDriver, PathNotFoundError


async def list_or_empty(driver: IStorageDriver, path: str) -> list[str]:
    """The names in folder ``path``; none when it does not exist."""
    try:
        return await driver.list(path)
    except PathNotFoundError:
        return []


async def digest_folders(driver: IStorageDriver, root: str) -> list[Digest]:
    """The digests of the ``<root>/<alg>/<hex>`` folders, in listing order."""
    found: list[Digest] = []
    for algorithm in await list_or_empty(driver, root):
        for hex_ in await list_or_empty(driver, f"{root}/{algorithm}"):
            try:
                found.append(Digest.parse(f"{algorithm}:{hex_}"))
            except RegistryError:
                continue
    return found
