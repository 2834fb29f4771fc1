"""
Readiness checks, as registry:2's health package has them for its storage driver and HTTP
dependencies: each check is an async probe; `HealthChecker` runs the ones asked for, at most
once per ``cache_for`` seconds each (a load balancer polling every second costs one probe per
period, however many ask), gives each probe ``timeout`` seconds, and reports every check by
name.

Probes run detached from the request that asked: a caller that goes away stops waiting, the
probe finishes for the next caller.  Nothing here blocks: the storage probe goes through the
driver's async API and the upstream probe through the pull-through cache's HTTP client.

Liveness (the process is serving) needs no check: answering is the proof.

A check may also pass *degraded* (its probe raises `Degraded`): the dependency serves part of
what it should, and the answers say so while readiness stays 200.  The storage check does on a
full disk: pulls are served (registry:2's storage check only reads, so it stays ready too) and
writes answer 503, so taking the instance out of a load balancer would stop the pulls for
nothing; monitoring sees ``degraded`` and the reason.

Once the process stops (`HealthChecker.stopping`), readiness fails with a `DRAINING` check of
its own, without waiting for a probe: the registry's port refuses connections from then on,
and a load balancer that probes ``[debug] addr`` must take the instance out at once.  A worker
process (``[http] workers`` above 1) asks the supervisor first (`HealthChecker.instance_stopping`):
when only that worker is being replaced (a rolling restart), the other workers serve, and its
`DRAINING` check is degraded instead, readiness 200.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from registry import procinfo
from registry.server.probe import probe_storage
from registry.storage import layout
from registry.storage.driver import (
    QUIET_RETRIES,
    IStorageDriver,
    PathNotFoundError,
    StorageError,
    StorageFull,
)

_log = Logger()

Probe = Callable[[], Awaitable[Any]]

STORAGE = "storage"
# The check readiness fails with while the process stops (it is not one of `checks`).
DRAINING = "draining"
# The storage probes whose payloads a probe may read back (`storage_probe`): a minute's worth
# at the default cache of 2 s, more than the probes a hung storage holds back.
PROBES_REMEMBERED = 32


class CheckFailed(Exception):
    """A probe's verdict that its dependency is not usable; the message says why."""


class Degraded(Exception):
    """A probe's verdict that its dependency serves, but not all of it (the message says
    what fails): the check passes, reported ``degraded`` with that reason."""


@attrs.frozen
class CheckResult:
    name: str
    ok: bool
    # Why the check fails, or (``ok`` and degraded) what fails while it passes.
    error: str | None
    checked_at: float
    degraded: bool = False

    def as_json(self) -> dict[str, Any]:
        if self.ok and not self.degraded:
            return {"status": "ok"}
        return {"status": "degraded" if self.ok else "failing", "error": self.error}


@attrs.frozen
class HealthCheck:
    """A named probe: it succeeds when the dependency is usable, and raises otherwise."""

    name: str
    probe: Probe
    # Part of readiness (``/health/ready``); the storage check alone also answers ``/health``.
    readiness: bool = True
    # Set: a failure of the probe (a timeout included) passes as degraded, with this said
    # after the reason: the dependency's outage leaves the instance serving (an upstream's,
    # while the cache serves what it holds).
    failure_degrades: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]


@attrs.define(eq=False)
class HealthChecker:
    clock: IReactorTime
    cache_for: float = 2.0
    timeout: float = 2.0
    checks: list[HealthCheck] = attrs.field(factory=list)
    _results: dict[str, CheckResult] = attrs.field(factory=dict)
    _waiters: dict[str, list[Deferred[CheckResult]]] = attrs.field(factory=dict)
    # Set once the process stops: what it still does, for the `DRAINING` check's error.
    _stopping: Callable[[], str] | None = attrs.field(default=None, init=False)
    # With several workers: asked as this process stops, whether the whole instance does (the
    # supervisor's answer); None: a single process, which is the instance.
    instance_stopping: Callable[[], Awaitable[bool]] | None = attrs.field(default=None, init=False)

    def add(self, check: HealthCheck) -> None:
        """Add a check (other components: an upstream, a notification endpoint)."""
        if any(existing.name == check.name for existing in self.checks):
            raise ValueError(f"a health check named {check.name!r} exists already")
        self.checks.append(check)

    def stopping(self, doing: Callable[[], str]) -> None:
        """
        The process stops (it no longer accepts on the registry's port): from now on
        readiness leads with a failing `DRAINING` check whose error is ``doing()`` at the
        time of asking.  The other checks go on being reported as they are.
        """
        self._stopping = doing

    async def run(self, names: Iterable[str] | None = None) -> list[CheckResult]:
        """The results of the checks named (default: every readiness check), in order."""
        wanted = set(names) if names is not None else None
        chosen = [
            check
            for check in self.checks
            if (check.name in wanted if wanted is not None else check.readiness)
        ]
        waiting = [self._result(check) for check in chosen]
        draining = None
        if wanted is None and self._stopping is not None:
            draining = Deferred.fromCoroutine(self._draining(self._stopping))
        results = [await d for d in waiting]
        if draining is not None:
            results.insert(0, await draining)
        return results

    async def _draining(self, doing: Callable[[], str]) -> CheckResult:
        """The `DRAINING` check: failing, unless only this worker stops (asked afresh each
        time, within ``timeout``: the answer turns once the supervisor is told to stop)."""
        whole = True
        if self.instance_stopping is not None:
            asking: Deferred[bool] = Deferred.fromCoroutine(_awaited(self.instance_stopping))
            timer = self.clock.callLater(self.timeout, asking.cancel)
            try:
                whole = await asking
            except Exception:  # no answer in time (a CancelledError too): the instance stops
                whole = True
            finally:
                if timer.active():
                    timer.cancel()
        if whole:
            return CheckResult(DRAINING, False, doing(), self.clock.seconds())
        return CheckResult(
            DRAINING,
            True,
            f"this worker is being replaced ({doing()}); the other workers serve",
            self.clock.seconds(),
            degraded=True,
        )

    def _result(self, check: HealthCheck) -> Deferred[CheckResult]:
        cached = self._results.get(check.name)
        if cached is not None and self.clock.seconds() - cached.checked_at < self.cache_for:
            return _fired(cached)
        mine: Deferred[CheckResult] = Deferred()
        waiters = self._waiters.get(check.name)
        if waiters is not None:
            waiters.append(mine)  # a probe is running: wait for its answer
            return mine
        self._waiters[check.name] = [mine]
        Deferred.fromCoroutine(self._probe(check)).addCallback(self._done)
        return mine

    def _done(self, result: CheckResult) -> None:
        before = self._results.get(result.name)
        self._results[result.name] = result
        # One line when a check turns bad (with its reason) and one when it recovers: not one
        # per probe while it stays so (a load balancer asks every few seconds).
        state = _state(result)
        if state != (_state(before) if before is not None else "ok"):
            if state == "failing":
                _log.warn(
                    "health check {check} failing: {reason}", check=result.name, reason=result.error
                )
            elif state == "degraded":
                _log.warn(
                    "health check {check} degraded (still passing): {reason}",
                    check=result.name,
                    reason=result.error,
                )
            else:
                _log.info("health check {check} ok again", check=result.name)
        for waiter in self._waiters.pop(result.name, []):
            if not waiter.called:  # a waiter may have been cancelled (its client left)
                waiter.callback(result)

    async def _probe(self, check: HealthCheck) -> CheckResult:
        running: Deferred[Any] = Deferred.fromCoroutine(_awaited(check.probe))
        timer: IDelayedCall = self.clock.callLater(self.timeout, running.cancel)
        error: str | None = None
        degraded = False
        try:
            await running
        except Degraded as exc:
            error, degraded = _describe(exc), True
        except CancelledError as exc:
            # What the probe was waiting on, when it says (S3: "about to try again after:
            # connection refused"): the reason a person needs, not just the time limit.
            waiting = " ".join(str(exc).split())
            error = f"no answer within {self.timeout:g}s" + (f" ({waiting})" if waiting else "")
        except Exception as exc:
            error = _describe(exc)
        finally:
            if timer.active():
                timer.cancel()
        if error is not None and not degraded and check.failure_degrades:
            error, degraded = f"{error} ({check.failure_degrades})", True
        ok = error is None or degraded
        return CheckResult(check.name, ok, error, self.clock.seconds(), degraded)

    def last_results(self) -> list[CheckResult]:
        """What the checks said last (for metrics), without probing."""
        return [self._results[c.name] for c in self.checks if c.name in self._results]


def _state(result: CheckResult) -> str:
    return "failing" if not result.ok else "degraded" if result.degraded else "ok"


def _fired(result: CheckResult) -> Deferred[CheckResult]:
    d: Deferred[CheckResult] = Deferred()
    d.callback(result)
    return d


async def _awaited(probe: Probe) -> Any:
    return await probe()


def probe_name() -> str:
    """This process's probe file name: instances sharing a bucket do not overwrite each other."""
    raw = f"{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:200]


HEALTH_DIR = f"{layout.OWN}/health"
# Probe files of this host read by one sweep: a start does bounded work however many killed
# processes left one (the next start takes the rest).
SWEEP_AT_MOST = 64
_LEGACY_PAYLOAD = b"txregistry storage probe "


def _left_by_gone_process(name: str, content: bytes, host: str) -> bool:
    """Whether the probe file ``name`` (``<host>-<pid>``, `probe_name`) holding ``content`` was
    written by a process of this host and pid namespace that no longer runs."""
    pid_text = name[len(host) + 1 :]
    if not name.startswith(host + "-") or not pid_text.isdigit():
        return False
    if content.startswith(_LEGACY_PAYLOAD):
        # Written before probes named their writer: the name's pid, judged as the project's
        # records without a start time and namespace are.
        return procinfo.gone(int(pid_text), None, None)
    try:
        record = json.loads(content)
        pid, started, namespace = record["pid"], record.get("started"), record.get("pidns")
    except (ValueError, KeyError, TypeError):
        return False
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if record.get("boot") != procinfo.boot_id():
        # Another machine of the same host name (cloned, or containers given one name:
        # their root pid namespaces look the same), or an earlier boot: its pid means
        # nothing here.
        return False
    if not isinstance(started, int | None) or not isinstance(namespace, str | None):
        return False
    return procinfo.gone(pid, started, namespace)


async def sweep_probe_files(driver: IStorageDriver) -> int:
    """
    Remove the probe files (`storage_probe`) that processes of this host killed before they
    could remove their own (`forget_storage_probe`) left: those of processes that no longer
    run in this pid namespace.  Other hosts' files, and other namespaces' (containers sharing
    the host name), are left alone: their pids mean nothing here, and removing a live
    process's file between its write and its read-back would fail its check.  Reads at most
    `SWEEP_AT_MOST` files; returns how many were removed.
    """
    host = probe_name().rsplit("-", 1)[0]
    own = probe_name()
    try:
        names = await driver.list(HEALTH_DIR)
    except PathNotFoundError:
        return 0
    mine = [name for name in names if name.startswith(host + "-") and name != own]
    removed = 0
    # A sample, not the first ones listed: files never judged gone (another namespace's, a
    # live process's) would otherwise fill every start's share.
    for name in random.sample(mine, min(len(mine), SWEEP_AT_MOST)):
        path = f"{HEALTH_DIR}/{name}"
        try:
            content = await driver.get_content(path)
        except PathNotFoundError:
            continue  # its process stopped meanwhile, or another sweep took it
        if _left_by_gone_process(name, content, host):
            with contextlib.suppress(PathNotFoundError):
                await driver.delete(path)
            removed += 1
    return removed


async def sweep_probe_files_logged(driver: IStorageDriver) -> None:
    """`sweep_probe_files` at start: one line when it removed any; a storage that fails it
    (it passed the start-up probe) only leaves the files to the next start."""
    QUIET_RETRIES.set(True)
    try:
        removed = await sweep_probe_files(driver)
    except StorageError as exc:
        _log.info("storage probe files of stopped processes left for now: {error}", error=exc)
        return
    if removed:
        _log.info(
            "removed {count} storage probe file(s) left by processes of this host that no"
            " longer run",
            count=removed,
        )


def forget_storage_probe(driver: IStorageDriver, reactor: Any) -> Deferred[None]:
    """
    Remove this process's probe file (`storage_probe`) as it stops: named after the
    process, each start would otherwise leave one more behind.  Best effort, and quick: a
    storage that does not answer within a few seconds keeps the file (a few bytes).
    """

    async def remove() -> None:
        QUIET_RETRIES.set(True)
        with contextlib.suppress(Exception):
            await driver.delete(f"{HEALTH_DIR}/{probe_name()}")

    removing = Deferred.fromCoroutine(remove())
    removing.addTimeout(_FORGET_WITHIN, reactor)
    removing.addErrback(lambda failure: None)
    return removing


_FORGET_WITHIN = 3.0


class ProbeFileCleanup(Service):
    """Removes the process's storage probe file when the registry stops (`forget_storage_probe`)."""

    def __init__(self, driver: IStorageDriver, reactor: Any) -> None:
        self._driver = driver
        self._reactor = reactor

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return forget_storage_probe(self._driver, self._reactor)


def storage_probe(driver: IStorageDriver, writable: bool = True) -> Probe:
    """
    Write a small file under the registry's own folder and read it back (a read-only mount, a
    storage root that is no longer a folder, refused S3 credentials all fail it); with
    ``writable`` false (``[maintenance] readonly``, where storage may be mounted read-only on
    purpose) only look at the root.  A full disk is `Degraded` while the root can still be
    looked at: pulls are served, only writes answer 503 (the module docstring).
    """
    path = f"{HEALTH_DIR}/{probe_name()}"
    # What the last probes wrote: a late write of one that timed out is no lost write.
    written: deque[bytes] = deque(maxlen=PROBES_REMEMBERED)

    async def probe() -> None:
        # The check reports through its answer and its own lines, not each S3 retry's.
        QUIET_RETRIES.set(True)
        try:
            await probe_storage(driver, readonly=not writable, path=path, earlier=written)
        except StorageFull as exc:
            await probe_storage(driver, readonly=True)  # raises when reads fail too
            raise Degraded(f"{exc} (pulls are served; pushes answer 503)") from None

    return probe


def loaded_probe(loaded: Callable[[], bool], what: str) -> Probe:
    """Ready once ``loaded()`` says so (state read back from storage at start)."""

    async def probe() -> None:
        if not loaded():
            raise CheckFailed(f"{what} is still loading")

    return probe


def upstream_probe(
    ping: Callable[[], Awaitable[int]], rate_limits: Callable[[], str | None] = lambda: None
) -> Probe:
    """An upstream is ready when ``GET /v2/`` answers below 500 (401 asks for a token: fine);
    degraded while it rate-limits the cache (``rate_limits``: what it holds back, in words):
    its ``/v2/`` answers, but images not cached are answered 429 meanwhile."""

    async def probe() -> None:
        status = await ping()
        if status >= 500:
            raise CheckFailed(f"GET /v2/ answered {status}")
        limited = rate_limits()
        if limited is not None:
            raise Degraded(f"the upstream rate-limits this cache: {limited}")

    return probe
