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

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.api.digests import Digest
from registry.asyncutil import bounded_map
from registry.failures import log_failure
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError

log = Logger()


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
    # In the background, the reactor gets a turn after this many tags (on local disk, about
    # 2 ms of work).
    warm_pause_every: int = 256
    _repos: OrderedDict[str, _Repository] = attrs.field(factory=OrderedDict, init=False)
    # Repositories whose dates are being read, with who waits for them.
    _loading: dict[str, list[Deferred[None]]] = attrs.field(factory=dict, init=False)
    _warm_queue: deque[str] = attrs.field(factory=deque, init=False)
    _warming: bool = attrs.field(default=False, init=False)

    @property
    def known(self) -> int:
        """Repositories whose tag dates are in memory (the storage page shows it)."""
        return len(self._repos)

    def remembers(self, name: str) -> bool:
        """Whether ``name``'s tag dates are in memory (so it was seen to exist)."""
        return name in self._repos

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

    async def _dates(
        self, name: str, tags: list[str], pause_every: int | None = None
    ) -> dict[str, float]:
        # A few workers (`bounded_map`), each awaiting one tag after another, rather than a
        # Deferred per tag: on local disk a stat answers without suspending, so a worker goes
        # through its tags at the cost of a function call (a Deferred per tag cost as much
        # again as the stats); on S3 the workers keep ``concurrency`` requests in flight.  In
        # the background (``pause_every``) they give the reactor a turn every so many tags, so
        # that requests arriving meanwhile are not held up for the whole repository.
        dates: dict[str, float] = {}
        done = 0

        async def one(tag: str) -> None:
            nonlocal done
            when = await self._stat(name, tag)
            if when is not None:
                dates[tag] = when
            done += 1
            if pause_every and done % pause_every == 0:
                await deferLater(self.clock, 0)

        await bounded_map(one, tags, self.concurrency)
        return dates

    async def _listing(self, name: str) -> list[str]:
        try:
            return await self.driver.list(layout.tags_dir(name))
        except PathNotFoundError:
            return []

    def _stale(self, name: str, now: float) -> bool:
        entry = self._repos.get(name)
        return entry is None or now - entry.listed_at >= self.relist_after

    async def _refresh(self, name: str, now: float, pause_every: int | None) -> None:
        """List ``name``'s tags and read the dates not known yet; others asking meanwhile wait
        for this one read rather than starting their own."""
        mine: list[Deferred[None]] = []
        self._loading[name] = mine
        try:
            entry = self._repos.get(name)
            listed = await self._listing(name)
            known = entry.times if entry is not None else {}
            unknown = [tag for tag in listed if tag not in known]
            fresh = await self._dates(name, unknown, pause_every)
            times = {tag: known[tag] for tag in listed if tag in known}
            times.update(fresh)
            self._repos[name] = _Repository(times, now)
            self._trim(name)
        finally:
            if self._loading.get(name) is mine:
                del self._loading[name]
            for waiter in mine:
                waiter.callback(None)

    def _trim(self, name: str) -> None:
        self._repos.move_to_end(name)
        while len(self._repos) > self.max_repositories:
            self._repos.popitem(last=False)

    async def newest_first(self, name: str) -> tuple[list[str], dict[str, float]]:
        """Every tag of ``name``, newest first (ties by name), and each tag's date."""
        now = float(self.clock.seconds())
        for _ in range(4):  # a read in progress is joined (a failed one is retried below)
            waiters = self._loading.get(name)
            if waiters is None:
                break
            waiter: Deferred[None] = Deferred()
            waiters.append(waiter)
            await waiter
        if self._stale(name, now):
            await self._refresh(name, now, None)
        entry = self._repos.get(name)
        if entry is None:  # dropped from the memo by other repositories meanwhile
            await self._refresh(name, now, None)
            entry = self._repos[name]
        self._trim(name)
        return entry.newest_first(), entry.times

    def warm(self, names: Iterable[str]) -> None:
        """
        Read the tag dates of repositories not known yet in the background (the repository
        list calls this for the repositories it shows, so that opening one is quick).  One
        repository at a time, the reactor getting a turn every ``warm_pause_every`` tags; at
        most ``max_repositories`` wait their turn, later ones are left to their first view.
        """
        for name in names:
            if len(self._warm_queue) >= self.max_repositories:
                break
            if name not in self._repos and name not in self._loading:
                self._warm_queue.append(name)
        if self._warm_queue and not self._warming:
            # Set before starting: on local disk the whole run may end before this returns.
            self._warming = True
            Deferred.fromCoroutine(self._warm_all())

    async def _warm_all(self) -> None:
        try:
            while self._warm_queue:
                name = self._warm_queue.popleft()
                if name in self._repos or name in self._loading:
                    continue
                try:
                    await self._refresh(name, float(self.clock.seconds()), self.warm_pause_every)
                except Exception:
                    # A storage failure here is the first view's to report; note it only.
                    log_failure(
                        log,
                        Failure(),
                        "reading the tag dates of {name} in the background",
                        name=name,
                    )
        finally:
            self._warming = False
