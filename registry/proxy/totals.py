"""
A cache's counters across restarts, for the web UI's cache page.

`UpstreamStats` counts from the process's start (as ``/metrics`` does: Prometheus expects
counters that reset).  The cache page wants the running total, so the counters are added to
what earlier runs saved, in ``txregistry/proxy/<upstream>/stats.json``, written every
``flush_interval`` (when they changed) and at stop, read at start.  A crash loses at most one
interval; instances sharing one storage each write their own total there, the last one wins
(as for the cache's ``state.json``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

from registry.storage import layout
from registry.storage.driver import PathNotFoundError

if TYPE_CHECKING:
    from registry.proxy.cache import ProxyCache

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
    # What earlier runs counted (read at start, never changed afterwards).
    base: dict[str, int] = attrs.field(factory=dict)
    # When the first run that saved its counters started (None: this run is the first).
    since: float | None = None
    _written: dict[str, int] | None = None
    _loaded: bool = False

    def current(self, cache: ProxyCache) -> dict[str, int]:
        """Every counter: earlier runs' and this one's."""
        live = _live(cache)
        return {key: self.base.get(key, 0) + live[key] for key in COUNTERS}

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

    async def flush(self, cache: ProxyCache) -> None:
        """Save the totals when they changed since the last write (and never before they
        were read: that would overwrite them with this run's alone)."""
        counters = self.current(cache)
        if not self._loaded or counters == self._written:
            return
        document: dict[str, Any] = {"counters": counters, "since": self.since}
        await cache.driver.put_content(
            totals_path(cache.name), json.dumps(document, sort_keys=True).encode()
        )
        self._written = counters
