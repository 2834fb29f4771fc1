"""
Per-sync metrics, read from the `SyncBoard` at each scrape (no bookkeeping of their own).

Only the process that runs the syncs reports them.  With ``[http] workers`` above 1 the other
workers hold copies of the statuses read back from storage (for ``/sync/status``), refreshed
only when asked: reporting them too would have the supervisor's merged scrape count each sync
once per worker, from copies of any age (`registry.ops.metrics_tree` also takes the largest
value of each ``txregistry_sync_`` sample rather than the sum, so a replaced worker's last
counts and its successor's, read back from the same saved state, are not added up either).
"""

from __future__ import annotations

from collections.abc import Iterator

from registry.ops.prometheus import (
    CollectorRegistry,
    CounterMetricFamily,
    Family,
    GaugeMetricFamily,
)
from registry.sync.status import SyncBoard

_COUNTERS = {
    "manifests": ("manifests_copied", "Manifests copied (indexes, images and referrers)."),
    "blobs": ("blobs_copied", "Blobs copied."),
    "bytes": ("bytes_copied", "Bytes of blobs copied."),
    "blobs_skipped": ("blobs_skipped", "Blobs not copied because the receiving side had them."),
    "tags_checked": ("tags_checked", "Tags compared between the two sides."),
    "tags_up_to_date": ("tags_up_to_date", "Tags found with the same digest on both sides."),
    "errors": ("errors", "Errors (each also logged and shown in the status)."),
}


class _SyncCollector:
    def __init__(self, board: SyncBoard) -> None:
        self._board = board

    def describe(self) -> Iterator[Family]:
        return self._families()

    def collect(self) -> Iterator[Family]:
        if self._board.from_storage:  # copies of another process's statuses: see above
            return iter(())
        return self._families()

    def _families(self) -> Iterator[Family]:
        syncs = sorted(self._board.syncs.items())
        for key, (name, help_text) in _COUNTERS.items():
            family = CounterMetricFamily(f"txregistry_sync_{name}", help_text, labels=["sync"])
            for sync, status in syncs:
                family.add_metric([sync], status.totals.get(key, 0))
            yield family
        runs = CounterMetricFamily(
            "txregistry_sync_runs",
            "Runs finished, by result (ok, failed, or stopped by a stop of the registry).",
            labels=["sync", "result"],
        )
        running = GaugeMetricFamily(
            "txregistry_sync_running", "1 while a run is in progress.", labels=["sync"]
        )
        success = GaugeMetricFamily(
            "txregistry_sync_last_success_timestamp_seconds",
            "When the last run without errors finished (Unix time; absent before the first).",
            labels=["sync"],
        )
        duration = GaugeMetricFamily(
            "txregistry_sync_last_run_duration_seconds",
            "How long the last finished run took.",
            labels=["sync"],
        )
        for sync, status in syncs:
            failed, stopped = status.failed_runs, status.stopped_runs
            runs.add_metric([sync, "ok"], max(0, status.runs - failed - stopped))
            runs.add_metric([sync, "failed"], failed)
            runs.add_metric([sync, "stopped"], stopped)
            running.add_metric([sync], 1 if status.current is not None else 0)
            if status.last_success is not None:
                success.add_metric([sync], status.last_success)
            last = status.last
            if last is not None and last.finished is not None:
                duration.add_metric([sync], last.finished - last.started)
        yield from (runs, running, success, duration)


def register_sync_metrics(registry: CollectorRegistry, board: SyncBoard) -> None:
    """Expose every sync's counters in ``registry``."""
    registry.register(_SyncCollector(board))
