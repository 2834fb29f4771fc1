"""
The replication service: one `SyncService` per enabled ``[sync:NAME]``, children of the
registry's service tree, started once storage has been probed.

Each sync runs on its own schedule: the first run within ``first_run_within`` after start
(at a random moment, so several syncs do not all start at once), then ``interval`` after the
previous run finished, give or take a tenth (jitter), so there is never more than one run of
a sync at a time.  A stop cancels the run in flight: uploads it had open are cancelled, and the
next start begins a new run that skips whatever is already complete (see
`registry.sync.copier`).

Every run logs one line when it starts and one when it ends (with its counts), and one line
per error; errors never stop a run, they are counted and the run goes on with the next tag.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.api.errors import RegistryError
from registry.asyncutil import within_time
from registry.client import ClientError, RegistryClient
from registry.config import Config
from registry.handlers.context import RegistryContext
from registry.logtext import one_line
from registry.storage import layout
from registry.storage.driver import PathNotFoundError, StorageError
from registry.sync.abandoned import UploadMarks
from registry.sync.config import SyncConfig, parse_syncs
from registry.sync.copier import Copier, CopyError
from registry.sync.planner import (
    catalog_names,
    check_names,
    plain_names,
    plan_tag,
    select_tags,
    target_name,
)
from registry.sync.sides import LocalSide, RemoteSide, RepositoryMissing
from registry.sync.status import RunReport, SyncStatus
from registry.sync.throttle import Throttle

log = Logger()

# Later runs wait ``interval`` times 1 ± this.
JITTER = 0.1


# How often a run in progress saves its state (what /sync/status shows in other workers).
PROGRESS_SAVE_INTERVAL = 1.0


def state_path(name: str) -> str:
    return f"{layout.OWN}/sync/{name}/state.json"


def describe(exc: BaseException) -> str:
    """One line for an expected failure (the remote, the content, storage)."""
    if isinstance(exc, RegistryError):
        return f"{exc.code.value}: {exc.message}"[:300]
    return str(exc)[:300] or type(exc).__name__


EXPECTED = (ClientError, RegistryError, CopyError, StorageError, ValueError, RepositoryMissing)


class SyncService(Service):
    """Runs one sync on its schedule and keeps its `SyncStatus`."""

    def __init__(
        self,
        settings: SyncConfig,
        ctx: RegistryContext,
        status: SyncStatus,
        client: RegistryClient,
        reactor: Any,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.status = status
        self.client = client
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.throttle = Throttle(reactor, settings.bandwidth)
        self.marks = UploadMarks(ctx.driver, settings.name)
        self._timer: Any = None
        self._run: Deferred[None] | None = None
        self._starting: Deferred[None] | None = None
        self._saving: Deferred[None] | None = None

    # -- schedule

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._starting = Deferred.fromCoroutine(self._restore())
        self.ctx.sync.reading(self._starting)
        self._starting.addErrback(self._restore_failed)
        # Scheduled whatever the restore met (a stop that came first: `_schedule` does nothing).
        self._starting.addCallback(
            lambda _: self._schedule(self.rng.uniform(0, self.settings.first_run_within))
        )

    def _restore_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # cancelled by a stop: nothing to report
            log.failure("sync {sync}: restoring its state failed", failure, sync=self.settings.name)

    async def _restore(self) -> None:
        """Take back the saved status; a run that was still going when the process died is
        recorded as ``interrupted`` and the uploads it had open are cancelled."""
        settings = self.settings
        try:
            data = await self.ctx.driver.get_content(state_path(settings.name))
        except PathNotFoundError:
            data = None
        except StorageError as exc:
            log.warn(
                "sync {sync}: cannot read its saved state: {reason}",
                sync=settings.name,
                reason=str(exc),
            )
            data = None
        # Uploads first: once the status shows the interrupted run, its uploads are gone.
        try:
            cancelled = await self.marks.cancel_abandoned(self.ctx.uploads)
        except StorageError as exc:
            # The sync runs all the same (its schedule must not hang on this); the next start
            # looks again, and the uploads' own expiry removes them meanwhile.
            log.warn(
                "sync {sync}: cannot look for the uploads of a run that never ended: {reason}",
                sync=settings.name,
                reason=str(exc),
            )
            cancelled = []
        interrupted = self.status.restore(data) if data is not None else None
        if interrupted is not None:
            await self._save()
            log.warn(
                "sync {sync}: the run started at {started} never ended (the registry stopped "
                "without ending it); recorded as interrupted, {uploads} open uploads cancelled",
                sync=settings.name,
                started=interrupted.started,
                uploads=len(cancelled),
                sync_event="run_interrupted",
            )

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        self.status.next_run = self.reactor.seconds() + delay
        self._timer = self.reactor.callLater(delay, self._start_run)

    def _start_run(self) -> None:
        self._timer = None
        self._run = Deferred.fromCoroutine(self._run_and_forget())
        self._run.addBoth(self._after_run)

    def _after_run(self, result: object) -> None:
        self._run = None
        if isinstance(result, Failure) and not result.check(CancelledError):
            # Expected failures are counted and logged inside the run: this is a defect.
            log.failure("sync {sync}: run failed", result, sync=self.settings.name)
        interval = self.settings.interval
        self._schedule(interval * self.rng.uniform(1 - JITTER, 1 + JITTER))
        if self.running:
            # The run saved its state before this next run was chosen: save it again, so the
            # workers that answer /sync/status from it show ``next_run`` too.
            self._saving = Deferred.fromCoroutine(self._save())

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.status.next_run = None
        if self._run is not None:
            running = self._run
            running.cancel()
            waiter: Deferred[None] = Deferred()
            running.addBoth(lambda _: waiter.callback(None))
            await waiter
        if self._saving is not None and not self._saving.called:
            await self._saving  # a short write (`_save` logs its failures): not cancelled
        self.status.state = "stopped"
        await self.client.close()

    # -- one run

    async def _run_and_forget(self) -> None:
        await self.run_once()

    async def run_once(self) -> RunReport:
        """One pass over every selected repository and tag."""
        settings = self.settings
        report = self.status.begin(self.reactor.seconds())
        log.info(
            "sync {sync}: run started ({direction} {remote})",
            sync=settings.name,
            direction=settings.direction,
            remote=settings.remote,
            sync_event="run_started",
        )
        # The other worker processes answer /sync/status from the saved state: keep it current.
        self.throttle.counted = lambda amount: report.counts.add("bytes_transferred", amount)
        progress = LoopingCall(lambda: Deferred.fromCoroutine(self._save()))
        progress.clock = self.reactor
        progress.start(PROGRESS_SAVE_INTERVAL, now=True)
        result = "failed"
        try:
            if settings.direction == "pull" and self.ctx.config.maintenance.readonly:
                raise CopyError("this registry is read-only ([maintenance] readonly)")
            local, remote = LocalSide(self.ctx), RemoteSide(self.client)
            source, target = (remote, local) if settings.direction == "pull" else (local, remote)
            copier = Copier(
                source,
                target,
                self.throttle,
                report.counts,
                DeferredSemaphore(settings.concurrency),
                settings.referrers,
                self.marks,
            )
            names = await self._repositories(source, report)
            workers = DeferredSemaphore(settings.concurrency)
            runs = [workers.run(self._repository_later, copier, report, name) for name in names]
            outcomes = await DeferredList(runs, consumeErrors=True)
            failures = [value for ok, value in outcomes if not ok]
            for failure in failures:
                # Cancelled (the service is stopping: a cancelled DeferredList cancels its
                # members and fires with their outcomes), or a defect, logged with its
                # traceback by `_after_run`.
                assert isinstance(failure, Failure)
                failure.raiseException()
            result = "ok" if report.counts.values["errors"] == 0 else "failed"
        except CancelledError:
            result = "stopped"
        except EXPECTED as exc:
            self._error(report, "", exc)
        finally:
            progress.stop()
            self.throttle.counted = None
            self.status.end(report, self.reactor.seconds(), result)
            await self._save()
        log.info(
            "sync {sync}: run finished, {result}: {manifests} manifests, {blobs} blobs "
            "({bytes} bytes) copied, {blobs_skipped} blobs already there, "
            "{tags_up_to_date}/{tags_checked} tags up to date, {errors} errors",
            sync=settings.name,
            result=result,
            sync_event="run_finished",
            duration=(report.finished or 0) - report.started,
            **report.counts.values,
        )
        return report

    def _repository_later(self, copier: Copier, report: RunReport, name: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._repository(copier, report, name))

    async def _repositories(self, source: LocalSide | RemoteSide, report: RunReport) -> list[str]:
        """Every plain name of ``repositories``, tried whether or not a catalog lists it, and
        the catalog's names the globs match; a catalog that cannot be read is an error of the
        run, and the plain names are tried all the same."""
        names = set(plain_names(self.settings))
        try:
            names.update(await catalog_names(source, self.settings))
        except EXPECTED as exc:
            if not names:
                raise
            self._error(report, "", exc)
        return sorted(names)

    async def _repository(self, copier: Copier, report: RunReport, name: str) -> None:
        """One repository's selected tags; an error in one tag (its HEAD, its copy) is that
        tag's, and the next is copied all the same."""
        settings = self.settings
        destination = target_name(settings, name)
        try:
            check_names(name, destination)
            tags = await select_tags(copier.source, settings, name)
        except EXPECTED as exc:
            self._error(report, name, exc)
            return
        report.counts.add("repositories")
        for tag in tags:
            try:
                plan = await plan_tag(copier.source, copier.target, name, destination, tag)
                if plan is None:
                    continue  # gone from the source since it was listed
                report.counts.add("tags_checked")
                if plan.up_to_date:
                    report.counts.add("tags_up_to_date")
                else:
                    await copier.copy_tag(name, destination, plan.tag)
                    log.info(
                        "sync {sync}: copied {source}:{tag} to {target} ({digest})",
                        sync=settings.name,
                        source=name,
                        target=destination,
                        tag=plan.tag,
                        digest=str(plan.source),
                        sync_event="tag_copied",
                    )
                if settings.referrers:
                    await copier.copy_referrers(name, destination, plan.source)
            except EXPECTED as exc:
                self._error(report, f"{name}:{tag}", exc)

    def _error(self, report: RunReport, where: str, exc: BaseException) -> None:
        # Escaped: a remote chooses its error messages, the names in its catalog and its tags;
        # a line break among them would write a log line of its own.
        reason = one_line(describe(exc))
        message = f"{one_line(where, 400)}: {reason}" if where else reason
        report.error(message)
        log.warn(
            "sync {sync}: {message}",
            sync=self.settings.name,
            message=message,
            sync_event="error",
        )

    async def _save(self) -> None:
        try:
            await self.ctx.driver.put_content(state_path(self.settings.name), self.status.saved())
        except StorageError as exc:
            log.warn(
                "sync {sync}: cannot save its state: {reason}",
                sync=self.settings.name,
                reason=str(exc),
            )


def make_client(settings: SyncConfig, reactor: Any) -> RegistryClient:
    return RegistryClient(
        reactor,
        settings.remote,
        credentials=settings.credentials,
        tls=settings.tls,
        timeout=settings.timeout,
        user_agent="txregistry-sync",
    )


def add_statuses(config: Config, ctx: RegistryContext) -> list[SyncConfig]:
    """A status on ``ctx.sync`` for every ``[sync:NAME]``, enabled or not; the settings."""
    settings_list = parse_syncs(config)
    for settings in settings_list:
        ctx.sync.syncs[settings.name] = SyncStatus(
            name=settings.name,
            direction=settings.direction,
            remote=settings.remote,
            enabled=settings.enabled,
            interval=settings.interval,
            state="idle" if settings.enabled else "disabled",
        )
    return settings_list


async def refresh_from_storage(ctx: RegistryContext, within: float) -> None:
    """In a process that does not run the syncs: each status as its last saved state, read
    side by side, waiting at most ``within`` seconds (storage that hangs must not hang the
    answer: a state read later is taken then, for the next answer)."""

    async def refresh(name: str, status: SyncStatus) -> None:
        try:
            status.restore(await ctx.driver.get_content(state_path(name)), live=True)
        except (PathNotFoundError, StorageError):
            return

    reads = [Deferred.fromCoroutine(refresh(n, s)) for n, s in ctx.sync.syncs.items()]
    await within_time(DeferredList(reads, consumeErrors=True), within, ctx.reactor)


class DisabledSync(Service):
    """
    A sync with ``enabled = false``: it runs nothing, but its status goes on showing what its
    saved state says (runs, last success, totals), as the docs promise across restarts; the
    state is left as it is for when the sync is enabled again.
    """

    def __init__(self, ctx: RegistryContext, status: SyncStatus) -> None:
        self.ctx = ctx
        self.status = status
        self._reading: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reading = Deferred.fromCoroutine(self._read())
        self.ctx.sync.reading(self._reading)
        # Cancelled by a stop that came first: nothing to report.
        self._reading.addErrback(lambda failure: failure.trap(CancelledError) and None)

    async def _read(self) -> None:
        name = self.status.name
        try:
            data = await self.ctx.driver.get_content(state_path(name))
        except PathNotFoundError:
            return
        except StorageError as exc:
            log.warn(
                "sync {sync}: cannot read its saved state: {reason}", sync=name, reason=str(exc)
            )
            return
        self.status.restore(data)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._reading is not None and not self._reading.called:
            self._reading.cancel()


def add_replication(
    config: Config, ctx: RegistryContext, reactor: Any, parent: MultiService
) -> list[SyncService]:
    """Start a `SyncService` under ``parent`` for every enabled ``[sync:NAME]``; every one,
    disabled or not, gets a status on ``ctx.sync``."""
    services = []
    for settings in add_statuses(config, ctx):
        status = ctx.sync.syncs[settings.name]
        if not settings.enabled:
            DisabledSync(ctx, status).setServiceParent(parent)  # type: ignore[no-untyped-call]
            continue
        service = SyncService(settings, ctx, status, make_client(settings, reactor), reactor)
        service.setServiceParent(parent)  # type: ignore[no-untyped-call]
        services.append(service)
        log.info(
            "sync {sync}: {direction} {remote} every {interval}s",
            sync=settings.name,
            direction=settings.direction,
            remote=settings.remote,
            interval=settings.interval,
        )
    return services
