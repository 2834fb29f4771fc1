"""
A cache's counters across restarts, for the web UI's cache page.

`UpstreamStats` counts from the process's start (as ``/metrics`` does: Prometheus expects
counters that reset).  The cache page wants the running total, so the counters are added to
what earlier runs saved, in ``txregistry/proxy/<upstream>/stats.json``, written every
``flush_interval`` (when they changed) and at stop, read at start.  A crash loses at most one
interval.

In a fleet, the totals are the fleet's: every flush adds what this process counted since the
last one to the counters in Redis (`registry.proxy.fleet.counters`) and takes back the sum,
which the page shows with this process's counts since then added; ``stats.json`` keeps a copy
of that sum, from which the counters in Redis are seeded again if Redis loses them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from registry.proxy.fleet._redis import RedisUnavailable, log_redis
from registry.storage import layout
from registry.storage.driver import PathNotFoundError

if TYPE_CHECKING:
    from registry.proxy.cache import ProxyCache

log = Logger()

COUNTERS = (
    "hits",
    "misses",
    "served_bytes",
    "upstream_bytes",
    "upstream_errors",
    "stale_served",
    "evictions",
    "evicted_bytes",
)


def totals_path(upstream: str) -> str:
    return f"{layout.OWN}/proxy/{upstream}/stats.json"


def _live(cache: ProxyCache) -> dict[str, int]:
    stats = cache.stats
    return {
        "hits": stats.hits,
        "misses": stats.misses,
        "served_bytes": stats.served_bytes,
        "upstream_bytes": cache.client.bytes_received,
        "upstream_errors": stats.upstream_errors,
        "stale_served": stats.stale_served,
        "evictions": stats.evictions,
        "evicted_bytes": stats.evicted_bytes,
    }


@attrs.define
class CacheTotals:
    # What earlier runs counted (read at start; in a fleet, the fleet's counters as of this
    # process's last flush).
    base: dict[str, int] = attrs.field(factory=dict)
    # When the first run that saved its counters started (None: this run is the first).
    since: float | None = None
    _written: dict[str, int] | None = None
    _loaded: bool = False
    # This process's counters as they were when ``base`` was last taken from the fleet: what
    # of them ``base`` already holds.
    _included: dict[str, int] = attrs.field(factory=dict)

    def current(self, cache: ProxyCache) -> dict[str, int]:
        """Every counter: earlier runs' (or the fleet's) and this one's."""
        live = _live(cache)
        return {
            key: self.base.get(key, 0) + live[key] - self._included.get(key, 0) for key in COUNTERS
        }

    async def load(self, cache: ProxyCache, now: float) -> None:
        """Read what earlier runs saved; a missing or damaged file starts from zero."""
        self.since = now
        try:
            saved = json.loads(await cache.driver.get_content(totals_path(cache.name)))
        except (PathNotFoundError, ValueError):
            saved = None
        self._loaded = True
        if not isinstance(saved, dict):
            return
        counters = saved.get("counters")
        if isinstance(counters, dict):
            self.base = {
                k: v for k, v in counters.items() if k in COUNTERS and isinstance(v, int) and v >= 0
            }
        since = saved.get("since")
        if isinstance(since, int | float):
            self.since = float(since)
            if self.base == counters:
                # The file holds what a flush would write until this run counts something:
                # not written again for nothing (on a full disk that write only fails).
                self._written = {key: self.base.get(key, 0) for key in COUNTERS}

    async def flush(self, cache: ProxyCache) -> None:
        """Save the totals when they changed since the last write (and never before they
        were read: that would overwrite them with this run's alone); in a fleet, add this
        process's counts to the fleet's first."""
        if not self._loaded:
            return
        if cache.counters is not None:
            try:
                await self._exchange(cache)
            except RedisUnavailable as exc:
                # The counts stay in this process and go with the next flush; the file is
                # written meanwhile.  A stop before Redis is back loses them from the fleet's
                # counters (the next start takes the fleet's figures from Redis).
                log_redis(
                    log,
                    exc,
                    "proxy {upstream}: adding the counters to Redis failed (kept for the next "
                    "flush; lost if this instance stops first): {e}",
                    upstream=cache.name,
                    e=str(exc),
                )
        counters = self.current(cache)
        if counters == self._written:
            return
        document: dict[str, Any] = {"counters": counters, "since": self.since}
        await cache.driver.put_content(
            totals_path(cache.name), json.dumps(document, sort_keys=True).encode()
        )
        self._written = counters

    async def _exchange(self, cache: ProxyCache) -> None:
        assert cache.counters is not None
        live = _live(cache)
        deltas = {key: live[key] - self._included.get(key, 0) for key in COUNTERS}
        seed = {key: self.base.get(key, 0) for key in COUNTERS}
        since = self.since if self.since is not None else 0.0
        fleet, started = await cache.counters.add(seed, since, deltas)
        self.base, self._included = fleet, live
        if started is not None:
            self.since = started
