"""
Garbage-collection results for the metrics.  ``txregistry gc`` runs in a process of its own, so
it records each run in storage (`registry.ops.gcstatus`, also what the web UI shows) and every
registry serving that storage exposes the record as ``txregistry_gc_last_run_*`` gauges, read
at most once per ``refresh_every`` seconds, when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.ops import gcstatus
from registry.ops.prometheus import Family, GaugeMetricFamily
from registry.storage.driver import IStorageDriver, StorageError

log = Logger()

# (metric suffix, help)
_GAUGES = (
    ("timestamp_seconds", "When the last garbage collection finished (Unix time)."),
    ("duration_seconds", "How long the last garbage collection ran."),
    ("dry_run", "1 when the last garbage collection was a dry run (nothing deleted)."),
    ("blobs_deleted", "Blobs the last garbage collection deleted."),
    ("bytes_freed", "Bytes the last garbage collection freed."),
    ("manifests_deleted", "Manifests it deleted (--delete-untagged)."),
    ("errors", "Errors the last garbage collection met while deleting."),
    ("blobs_stored", "Blobs left in storage after the last garbage collection."),
    ("bytes_stored", "Bytes of the blobs left in storage after the last garbage collection."),
)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _gauges(status: dict[str, object]) -> dict[str, float]:
    """The gauges' values from a recorded run (`gcstatus.record`'s keys)."""
    values = {
        "timestamp_seconds": _number(status.get("finished")),
        "dry_run": _number(status.get("dry_run")),
        "blobs_deleted": _number(status.get("blobs_deleted")),
        "bytes_freed": _number(status.get("bytes_freed")),
        "manifests_deleted": _number(status.get("manifests_deleted")),
        "errors": _number(status.get("errors")),
        "blobs_stored": _number(status.get("blobs_stored")),
        "bytes_stored": _number(status.get("bytes_stored")),
    }
    started, finished = _number(status.get("started")), values["timestamp_seconds"]
    if started is not None and finished is not None:
        values["duration_seconds"] = finished - started
    return {key: value for key, value in values.items() if value is not None}


class GCReport:
    """
    A collector of the last recorded run (nothing before a first run).  A scrape waits at
    most ``wait`` seconds for the record's read: when the storage hangs or is down, the
    metrics answer at once with the values last read (they are needed most then), and the
    read goes on or fails on its own (the storage's health check says why).
    """

    def __init__(self, refresh_every: float = 30.0, wait: float = 1.0) -> None:
        self.refresh_every = refresh_every
        self.wait = wait
        self.report: dict[str, float] = {}
        self._read_at: float | None = None
        self._reading: Deferred[None] | None = None

    async def refresh(self, driver: IStorageDriver, clock: IReactorTime) -> None:
        """Re-read the record if the last read is older than ``refresh_every``."""
        now = clock.seconds()
        if self._reading is None:
            if self._read_at is not None and now - self._read_at < self.refresh_every:
                return
            self._read_at = now
            reading = Deferred.fromCoroutine(self._read(driver))
            self._reading = reading
            reading.addBoth(self._read_ended)
        waiter: Deferred[None] = Deferred()

        def wake(_: object = None) -> object:
            if not waiter.called:
                waiter.callback(None)
            return _

        timer = clock.callLater(self.wait, wake)
        if self._reading is not None:
            self._reading.addBoth(wake)
        else:
            wake()
        await waiter
        if timer.active():
            timer.cancel()

    async def _read(self, driver: IStorageDriver) -> None:
        try:
            status = await gcstatus.last(driver)
        except StorageError:
            return  # kept: the last values read
        if status is not None:
            self.report = _gauges(status)

    def _read_ended(self, result: object) -> None:
        self._reading = None
        if isinstance(result, Failure):
            log.failure("reading the last garbage collection's record failed", result)

    def describe(self) -> Iterator[Family]:
        for suffix, help in _GAUGES:
            yield GaugeMetricFamily(f"txregistry_gc_last_run_{suffix}", help)

    def collect(self) -> Iterator[Family]:
        for suffix, help in _GAUGES:
            if suffix in self.report:
                yield GaugeMetricFamily(
                    f"txregistry_gc_last_run_{suffix}", help, value=self.report[suffix]
                )
