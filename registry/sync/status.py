"""
What each sync is doing and has done: the run in progress, the last run, the last success,
and totals since the first run.  One `SyncStatus` per ``[sync:NAME]`` on a `SyncBoard`,
which the ``/sync/status`` route, the metrics and the service share.

The status is also kept in storage (``txregistry/sync/<name>/state.json``, which registry:2
ignores), written at the end of every run and read back at start: after a restart the status
still says when the last successful run was, and the totals go on from where they were.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList

from registry.asyncutil import within_time

COUNTERS = (
    "repositories",
    "tags_checked",
    "tags_up_to_date",
    "manifests",
    "blobs",
    "blobs_skipped",
    "bytes",
    "bytes_transferred",
    "errors",
)
# Errors kept in the status of one run (each is also logged).
MAX_ERRORS = 20


@attrs.define
class RunCounts:
    """The counters of one run; every increment also goes to the sync's totals."""

    totals: dict[str, int] = attrs.field(factory=dict)
    values: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(COUNTERS, 0))

    def add(self, counter: str, amount: int = 1) -> None:
        self.values[counter] += amount
        self.totals[counter] = self.totals.get(counter, 0) + amount


@attrs.define
class RunReport:
    """One run: when, how it ended (``running``, ``ok``, ``failed``, ``stopped``, or
    ``interrupted``: its process died during it), its counters and its first errors."""

    started: float
    finished: float | None = None
    result: str = "running"
    counts: RunCounts = attrs.field(factory=RunCounts)
    errors: list[str] = attrs.field(factory=list)

    def error(self, message: str) -> None:
        self.counts.add("errors")
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def as_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "finished": self.finished,
            "result": self.result,
            **self.counts.values,
            "error_messages": list(self.errors),
        }

    @classmethod
    def from_json(cls, data: Any) -> RunReport | None:
        if not isinstance(data, dict) or not isinstance(data.get("started"), int | float):
            return None
        counts = RunCounts()
        for name in COUNTERS:
            value = data.get(name)
            if isinstance(value, int):
                counts.values[name] = value
        finished = data.get("finished")
        errors = data.get("error_messages")
        return cls(
            started=float(data["started"]),
            finished=float(finished) if isinstance(finished, int | float) else None,
            result=str(data.get("result", "failed")),
            counts=counts,
            errors=[str(e) for e in errors[:MAX_ERRORS]] if isinstance(errors, list) else [],
        )


@attrs.define
class SyncStatus:
    """One sync's state as the status route shows it."""

    name: str
    direction: str
    remote: str
    enabled: bool
    interval: float
    state: str = "idle"  # idle, running, disabled, stopped
    runs: int = 0
    current: RunReport | None = None
    last: RunReport | None = None
    last_success: float | None = None
    next_run: float | None = None
    totals: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(COUNTERS, 0))
    failed_runs: int = 0
    # Runs ended by a stop of the registry (not ok: they did not finish their work; not
    # failed: nothing went wrong).  ``runs`` counts them too.
    stopped_runs: int = 0

    def begin(self, now: float) -> RunReport:
        report = RunReport(started=now, counts=RunCounts(totals=self.totals))
        self.current = report
        self.state = "running"
        self.next_run = None
        return report

    def end(self, report: RunReport, now: float, result: str) -> None:
        report.finished = now
        report.result = result
        self.runs += 1
        self.current = None
        self.last = report
        self.state = "idle"
        if result == "ok":
            self.last_success = now
        elif result == "failed":
            self.failed_runs += 1
        elif result == "stopped":
            self.stopped_runs += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "direction": self.direction,
            "remote": self.remote,
            "enabled": self.enabled,
            "interval": self.interval,
            "state": self.state,
            "runs": self.runs,
            "failed_runs": self.failed_runs,
            "stopped_runs": self.stopped_runs,
            "last_success": self.last_success,
            "next_run": self.next_run,
            "current": self.current.as_json() if self.current is not None else None,
            "last": self.last.as_json() if self.last is not None else None,
            "totals": dict(self.totals),
        }

    def saved(self) -> bytes:
        """What `restore` reads back after a restart."""
        return json.dumps(
            {
                "last": self.last.as_json() if self.last is not None else None,
                # For the processes that do not run the syncs (see `SyncBoard.from_storage`).
                "state": self.state,
                "current": self.current.as_json() if self.current is not None else None,
                "next_run": self.next_run,
                "last_success": self.last_success,
                "runs": self.runs,
                "failed_runs": self.failed_runs,
                "stopped_runs": self.stopped_runs,
                "totals": self.totals,
            },
            sort_keys=True,
        ).encode()

    def restore(self, data: bytes, live: bool = False) -> RunReport | None:
        """
        Take back a saved state; anything unreadable in it is ignored.  ``live``: also what
        the running process is doing now (a run in progress, the next run), which a restart
        must not take back as its own.

        Not ``live`` (the process that runs the sync, at start): a run saved as in progress
        died with its process (``kill -9``, a crash).  It becomes the last run, ``interrupted``
        and counted as failed (its counts are in the totals already); returned so the caller
        can save and log it.  None otherwise.  A disabled sync takes back only what it did: a
        run that died is recorded once the sync is enabled again (with its uploads cancelled).
        """
        try:
            saved = json.loads(data)
        except ValueError:
            return None
        if not isinstance(saved, dict):
            return None
        self.last = RunReport.from_json(saved.get("last"))
        if live and self.enabled:  # a disabled sync is disabled whatever it was doing before
            self.current = RunReport.from_json(saved.get("current"))
            if saved.get("state") in ("idle", "running", "disabled", "stopped"):
                self.state = saved["state"]
            next_run = saved.get("next_run")
            self.next_run = float(next_run) if isinstance(next_run, (int, float)) else None
        success = saved.get("last_success")
        self.last_success = float(success) if isinstance(success, int | float) else None
        for key in ("runs", "failed_runs", "stopped_runs"):
            if isinstance(saved.get(key), int):
                setattr(self, key, saved[key])
        totals = saved.get("totals")
        if isinstance(totals, dict):
            for name in COUNTERS:
                if isinstance(totals.get(name), int):
                    self.totals[name] = totals[name]
        died = RunReport.from_json(saved.get("current"))
        if live or not self.enabled or saved.get("state") != "running" or died is None:
            return None
        died.result = "interrupted"
        died.error("interrupted: the registry stopped without ending this run")
        self.runs += 1
        self.failed_runs += 1
        self.last = died
        return died


@attrs.define
class SyncBoard:
    """Every sync's status, by name (empty when no ``[sync:NAME]`` is configured)."""

    syncs: dict[str, SyncStatus] = attrs.field(factory=dict)
    # This process does not run the syncs (a worker other than the first, see
    # registry/server/workers.py): its statuses are read back from each sync's saved state,
    # which the running process writes at the end of every run.
    from_storage: bool = False
    # Saved states still being read back at start: the status and the metrics wait for them,
    # so the first answer after a restart shows the saved runs, not a blank status.
    _reading: list[Deferred[None]] = attrs.field(factory=list, init=False)

    def reading(self, work: Deferred[Any]) -> None:
        """Answers wait until ``work`` (a service reading its saved state) has ended, however
        it ends; its result goes on down its chain untouched."""
        ended: Deferred[None] = Deferred()

        def passthrough(result: object) -> object:
            ended.callback(None)
            return result

        work.addBoth(passthrough)
        self._reading = [d for d in self._reading if not d.called] + [ended]

    async def restored(self, within: float, clock: Any) -> None:
        """Wait for every saved state being read back at start, at most ``within`` seconds:
        storage that hangs or is down at start must not hang the answers that report on it
        (they then show what is known)."""
        waiting = [d for d in self._reading if not d.called]
        self._reading = waiting
        if waiting:
            # (A DeferredList passes each one's result on: the next waiter sees it fired.)
            await within_time(DeferredList(waiting), within, clock)

    def as_json(self) -> dict[str, Any]:
        return {"syncs": {name: status.as_json() for name, status in sorted(self.syncs.items())}}
