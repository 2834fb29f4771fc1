"""
Tag dates, newest first, without a scan per page.

Storage keeps no tag dates besides the modification time of each tag's ``current/link``, so
sorting a repository's tags by date means one ``stat`` per tag.  That is done once per
repository and remembered here: later pages list the tag folder (one call) and ``stat`` only
tags not seen before; changes made by this process arrive through `TagStore.observers` as they
happen.  A tag moved by *another* process (several instances on S3) keeps its old date here
until this process restarts or the entry is dropped from the bounded memo.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults

from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError


@attrs.define
class _Repository:
    times: dict[str, float]
    listed_at: float
    order: list[str] | None = None

    def newest_first(self) -> list[str]:
        if self.order is None:
            self.order = sorted(self.times, key=lambda tag: (-self.times[tag], tag))
        return self.order


@attrs.define
class TagTimes:
    driver: IStorageDriver
    clock: Any
    # How long a repository's tag listing is trusted before it is listed again (tags pushed
    # by other processes show up after at most this long).
    relist_after: float = 10.0
    # Repositories remembered (each costs ~100 bytes per tag).
    max_repositories: int = 256
    # Tag links examined at once (S3: requests in flight).
    concurrency: int = 64
    _repos: OrderedDict[str, _Repository] = attrs.field(factory=OrderedDict, init=False)

    def observe(self, name: str, tag: str, digest: Digest | None) -> None:
        """A `TagStore` observer: a tag set now, or removed."""
        entry = self._repos.get(name)
        if entry is None:
            return
        if digest is None:
            entry.times.pop(tag, None)
        else:
            entry.times[tag] = float(self.clock.seconds())
        entry.order = None

    async def _stat(self, name: str, tag: str) -> float | None:
        try:
            info = await self.driver.stat(layout.tag_current_link(name, tag))
        except PathNotFoundError:
            return None
        return info.modified

    async def _dates(self, name: str, tags: list[str]) -> dict[str, float]:
        # A few workers, each awaiting one tag after another, rather than a Deferred per tag:
        # on local disk a stat answers without suspending, so a worker goes through its tags
        # at the cost of a function call (a Deferred per tag cost as much again as the stats);
        # on S3 the workers keep ``concurrency`` requests in flight.
        dates: dict[str, float] = {}
        pending = iter(tags)

        async def worker() -> None:
            for tag in pending:
                when = await self._stat(name, tag)
                if when is not None:
                    dates[tag] = when

        workers = min(len(tags), self.concurrency)
        await gatherResults(
            [Deferred.fromCoroutine(worker()) for _ in range(workers)], consumeErrors=True
        )
        return dates

    async def _listing(self, name: str) -> list[str]:
        try:
            return await self.driver.list(layout.tags_dir(name))
        except PathNotFoundError:
            return []

    async def newest_first(self, name: str) -> tuple[list[str], dict[str, float]]:
        """Every tag of ``name``, newest first (ties by name), and each tag's date."""
        now = float(self.clock.seconds())
        entry = self._repos.get(name)
        if entry is None or now - entry.listed_at >= self.relist_after:
            listed = await self._listing(name)
            known = entry.times if entry is not None else {}
            fresh = await self._dates(name, [tag for tag in listed if tag not in known])
            times = {tag: known[tag] for tag in listed if tag in known}
            times.update(fresh)
            entry = _Repository(times, now)
            self._repos[name] = entry
        self._repos.move_to_end(name)
        while len(self._repos) > self.max_repositories:
            self._repos.popitem(last=False)
        return entry.newest_first(), entry.times
