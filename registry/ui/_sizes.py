"""
Repository sizes for the repository list: the bytes of the distinct blobs a repository links
(its ``_layers`` links: layers and configs, as a pull downloads them; blobs shared with other
repositories count in each).  Storage keeps no such figure, so it is summed from the links and
the blobs' sizes once per repository and remembered for ``ttl`` seconds: a page of the list
costs one listing and one ``stat`` per blob only for the repositories it shows, and only when
their figure is older than that.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs

from registry.api.digests import Digest
from registry.asyncutil import bounded_map
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.listing import digest_folders


@attrs.define
class RepositorySizes:
    driver: IStorageDriver
    clock: Any
    ttl: float = 300.0
    max_entries: int = 8192
    concurrency: int = 32
    _memo: OrderedDict[str, tuple[float, int]] = attrs.field(factory=OrderedDict, init=False)

    async def _linked(self, name: str) -> list[Digest]:
        return await digest_folders(self.driver, layout.layers_dir(name))

    async def _measure(self, name: str) -> int:
        async def one(digest: Digest) -> int:
            try:
                return (await self.driver.stat(layout.blob_data(digest))).size
            except PathNotFoundError:
                return 0  # linked, but its data was collected: nothing to download

        return sum(await bounded_map(one, await self._linked(name), self.concurrency))

    async def size(self, name: str) -> int:
        now = float(self.clock.seconds())
        known = self._memo.get(name)
        if known is not None and now - known[0] < self.ttl:
            self._memo.move_to_end(name)
            return known[1]
        total = await self._measure(name)
        self._memo[name] = (now, total)
        self._memo.move_to_end(name)
        while len(self._memo) > self.max_entries:
            self._memo.popitem(last=False)
        return total
