"""
Garbage-collection results for the metrics.  ``txregistry gc`` runs in a process of its own, so
it leaves a short report in storage (``<root>/txregistry/gc/last-run.json``) and every registry
serving that storage exposes it as ``txregistry_gc_last_run_*`` gauges, read at most once per
``refresh_every`` seconds, when scraped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from twisted.internet.interfaces import IReactorTime

from registry.ops.gc import GCStats
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError

REPORT_PATH = f"{layout.OWN}/gc/last-run.json"

# (report key, metric suffix, help)
_GAUGES = (
    ("finished_at", "timestamp_seconds", "When the last garbage collection finished (Unix time)."),
    ("duration", "duration_seconds", "How long the last garbage collection ran."),
    ("blobs_deleted", "blobs_deleted", "Blobs the last garbage collection deleted."),
    ("bytes_freed", "bytes_freed", "Bytes the last garbage collection freed."),
    ("revisions_deleted", "manifests_deleted", "Manifests it deleted (--delete-untagged)."),
    ("errors", "errors", "Errors the last garbage collection met while deleting."),
)


async def record_run(
    driver: IStorageDriver, stats: GCStats, finished_at: float, duration: float
) -> None:
    """Write the report of a finished (not dry) run for the registries to expose."""
    report = {
        "finished_at": finished_at,
        "duration": duration,
        "blobs_deleted": stats.blobs_deleted,
        "bytes_freed": stats.bytes_freed,
        "revisions_deleted": stats.revisions_deleted,
        "errors": len(stats.errors),
    }
    await driver.put_content(REPORT_PATH, json.dumps(report).encode())


class GCReport:
    """A prometheus_client collector of the last run's report (nothing before a first run)."""

    def __init__(self, refresh_every: float = 30.0) -> None:
        self.refresh_every = refresh_every
        self.report: dict[str, float] = {}
        self._read_at: float | None = None

    async def refresh(self, driver: IStorageDriver, clock: IReactorTime) -> None:
        """Re-read the report if the last read is older than ``refresh_every``."""
        now = clock.seconds()
        if self._read_at is not None and now - self._read_at < self.refresh_every:
            return
        self._read_at = now
        try:
            data: Any = json.loads(await driver.get_content(REPORT_PATH))
        except (PathNotFoundError, ValueError):
            return
        if isinstance(data, dict):
            self.report = {
                key: float(value)
                for key, value in data.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            }

    def describe(self) -> Iterator[Metric]:
        for _key, suffix, help in _GAUGES:
            yield GaugeMetricFamily(f"txregistry_gc_last_run_{suffix}", help)

    def collect(self) -> Iterator[Metric]:
        for key, suffix, help in _GAUGES:
            if key in self.report:
                yield GaugeMetricFamily(
                    f"txregistry_gc_last_run_{suffix}", help, value=self.report[key]
                )
