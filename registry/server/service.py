"""
The registry's root service: start-up in a fixed order, and a stop that drains.

Start: bind every listener (a failure stops start-up), start the children (thread pools,
timers), probe the storage, then accept connections and log "listening".  Under twistd
(``privilegedStartService`` was called) a failure prints one line and exits non-zero; a
caller that only calls ``startService`` (tests, embedding) asks `RegistryService.when_ready`
instead, which fails with that line as a `StartupError`.

Stop (SIGTERM, or ``stopService``): readiness fails from then on (`HealthChecker.stopping`:
the ``[debug] addr`` listener answers until the children stop), stop accepting, let requests
in flight finish for up to the drain timeout (`ConnectionTracker.drain`), flush state (upload
hash states), then stop the children.  Under twistd, SIGTERM then exits 0: a requested, clean
stop.

A single process under twistd (``[http] workers = 1``: no supervisor) handles SIGINT and
SIGQUIT as the supervisor does (`registry.server.supervisor`), so that the two set-ups answer
Ctrl-C alike: SIGINT drains like SIGTERM and exits 0; a second SIGINT during the drain (Ctrl-C
twice), or SIGQUIT at any time, cuts the connections still open, with one line, and exits
with 128 + the signal's number (130, 131).  Twisted's own SIGINT handler stopped the reactor
again at the second one, which raised `ReactorNotRunning` inside the reactor (a traceback)
and left the drain running.  Workers leave both signals to their supervisor.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.failures import log_failure
from registry.server import daemon_status
from registry.server.drain import IDLE_GRACE, ConnectionTracker
from registry.server.exit import StartupError, exit_after_reactor, exit_with_status_after_reactor
from registry.server.listeners import Listeners

if TYPE_CHECKING:
    from registry.ops.health import HealthChecker

log = Logger()


class RegistryService(MultiService):
    """The root of the service tree: listeners, start-up checks and draining around it."""

    def __init__(
        self,
        reactor: Any,
        listeners: Listeners,
        tracker: ConnectionTracker,
        probe: Callable[[], Awaitable[None]],
        announce: Callable[[], None],
        drain_timeout: float,
        flush: Callable[[], Awaitable[None]] | None = None,
        health: HealthChecker | None = None,
        interrupts: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._reactor = reactor
        self.listeners = listeners
        self.tracker = tracker
        self._probe = probe
        self._announce = announce
        self.drain_timeout = drain_timeout
        self._flush = flush
        self._health = health
        self._under_twistd = False
        self._stop_requested = False
        # SIGINT and SIGQUIT are this process's own (no supervisor; see the module).
        self._interrupts = interrupts
        self._cutting = False  # a second SIGINT or a SIGQUIT: connections cut, no drain
        # Fires once the registry accepts connections; fails with StartupError.
        self.ready: Deferred[None] = Deferred()
        # Start-up's outcome for `when_ready`: None while starting, else a success or why not.
        self._outcome: Failure | bool | None = None
        self._waiting: list[Deferred[None]] = []

    def privilegedStartService(self) -> None:
        self._under_twistd = True
        self.listeners.bind_or_exit()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        self.listeners.bind()  # done already under twistd
        super().startService()  # type: ignore[no-untyped-call]
        self._reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        if self._under_twistd and self._interrupts:
            # Now: the reactor has installed its own SIGINT handler, which this replaces.
            signal.signal(signal.SIGINT, self._sigint)
            signal.signal(signal.SIGQUIT, self._sigquit)
        # A daemon held SIGTERM from before twistd forked (`registry.server.daemon_status`):
        # handled from now on.  (A supervisor's handoff holds it across its exec instead: a
        # stop requested before the exec would be lost after it.)
        daemon_status.release_signals()
        d = Deferred.fromCoroutine(self._checks())
        d.addCallbacks(self._started, self._failed)

    async def _checks(self) -> None:
        await self.listeners.wait_bound()
        await self._probe()

    def _started(self, _: object) -> None:
        if not self.running:
            self._settle(Failure(StartupError("stopped before start-up finished")))
            return
        self.listeners.open()
        if self._under_twistd:
            signal.signal(signal.SIGTERM, self._sigterm)
        self._announce()
        self.ready.callback(None)
        self._settle(True)

    def _failed(self, failure: Failure) -> None:
        message = (
            str(failure.value)
            if failure.check(StartupError)
            else f"start-up failed: {failure.getErrorMessage()}"
        )
        if not failure.check(StartupError):
            log.failure("start-up failed", failure)
        if self._under_twistd:
            exit_after_reactor(self._reactor, message)
        self.ready.errback(StartupError(message))
        self.ready.addErrback(lambda _: None)  # the caller may not be listening
        self._settle(Failure(StartupError(message)))

    def when_ready(self) -> Deferred[None]:
        """
        A new Deferred with start-up's outcome, whenever it is asked: fires once the registry
        accepts connections, fails with `StartupError` naming the cause.  (`ready` itself is
        the chain start-up work hangs off, and its failure is consumed there.)
        """
        d: Deferred[None] = Deferred()
        if self._outcome is None:
            self._waiting.append(d)
        else:
            self._fire(d, self._outcome)
        return d

    def _settle(self, outcome: Failure | bool) -> None:
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._fire(d, outcome)

    @staticmethod
    def _fire(d: Deferred[None], outcome: Failure | bool) -> None:
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(None)

    def _sigterm(self, signum: int, frame: Any) -> None:
        # Twisted's own handler would make twistd kill itself with SIGTERM once stopped; a
        # drained, requested stop is a success.
        self._reactor.callFromThread(self._stop_once)

    def _sigint(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._interrupted, signal.SIGINT)

    def _sigquit(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._interrupted, signal.SIGQUIT)

    def _stop_once(self, signum: int = signal.SIGTERM) -> None:
        name = signal.Signals(signum).name
        if self._stop_requested:
            if not self._cutting:  # a second SIGTERM keeps the drain (service managers)
                log.info(
                    "{name} again: still draining (at most {timeout:g} s)",
                    name=name,
                    timeout=self.drain_timeout,
                )
            return
        self._stop_requested = True
        log.info("{name}: no longer accepting; draining requests in flight", name=name)
        with contextlib.suppress(ReactorNotRunning):  # already stopping for another reason
            self._reactor.stop()

    def _interrupted(self, signum: int) -> None:
        """
        SIGINT: a drain, as SIGTERM; SIGINT again during a stop (Ctrl-C twice), or SIGQUIT:
        stop at once, and exit with 128 + the signal's number, as the supervisor of workers
        does, in the same words.
        """
        if signum == signal.SIGINT and not self._stop_requested:
            self._stop_once(signum)
            return
        if self._cutting:
            return
        self._cutting = True
        status = 128 + signum
        again = " again" if self._stop_requested and signum == signal.SIGINT else ""
        log.warn(
            "{name}{again}: stopping now, cutting every connection (exit status {status})",
            name=signal.Signals(signum).name,
            again=again,
            status=status,
        )
        self._stop_requested = True
        exit_with_status_after_reactor(status)
        self.cut()

    def cut(self) -> None:
        """Stop at once: connections still open are cut, not drained (a worker whose
        supervisor was sent a second SIGINT, or SIGQUIT).  What follows the drain (state
        written down, the parts stopped in order) still runs."""
        self.tracker.cut()
        with contextlib.suppress(ReactorNotRunning):  # stopping already (its SIGTERM)
            self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _idle_grace(self) -> float:
        """How long keep-alive connections idle at the drain may still bring a request
        (`registry.server.drain`): `IDLE_GRACE` when only this worker stops (a rolling
        restart: the other workers serve, and a client's next request must not be lost in
        between), none when the whole instance stops or when the supervisor does not say."""
        health = self._health
        if health is None or health.instance_stopping is None or self._cutting:
            return 0.0
        asking: Deferred[bool] = Deferred.fromCoroutine(_asked(health.instance_stopping))
        timer = self._reactor.callLater(ASK_LIMIT, asking.cancel)
        try:
            whole = await asking
        except Exception:  # (a CancelledError too: no answer in time)
            return 0.0
        finally:
            if timer.active():
                timer.cancel()
        return 0.0 if whole else IDLE_GRACE

    async def _stop(self) -> None:
        if self._health is not None:
            self._health.stopping(self._doing)
        await self.listeners.stop_listening()
        await self.tracker.drain(self.drain_timeout, idle_grace=await self._idle_grace())
        if self._flush is not None:
            try:
                await self._flush()
            except Exception:
                log_failure(log, Failure(), "flushing state before stopping failed")
        await self._stop_children()

    def _doing(self) -> str:
        return f"stopping: draining {self.tracker.requests} request(s)"

    async def _stop_children(self) -> None:
        Service.stopService(self)
        await stop_in_order(self, self._reactor)


# How often a stop that takes long says what it still waits for.
STOP_REPORT_EVERY = 10.0
# How long a draining worker waits for the supervisor to say whether the whole instance stops.
ASK_LIMIT = 2.0


async def _asked(question: Callable[[], Awaitable[bool]]) -> bool:
    return await question()


def _part_name(service: object) -> str:
    return getattr(service, "name", None) or type(service).__name__


async def stop_in_order(parent: MultiService, clock: Any) -> None:
    """
    Stop ``parent``'s children one after the other, the last started first, each once the
    one started after it has stopped: a part stopping may still use what was started before
    it (the upload purge's storage walk needs the storage thread pool).  Twisted's
    `MultiService` stops them all at once, so the pool stopped under a purge in progress
    and the purge, and with it the stop, waited forever.  Every `STOP_REPORT_EVERY` seconds
    a stop that takes long says which part it waits for.
    """
    current: list[str] = []

    def report() -> None:
        log.warn("stopping: still waiting for {part}", part=", ".join(current))

    reporter = LoopingCall(report)
    reporter.clock = clock
    reporter.start(STOP_REPORT_EVERY, now=False)
    try:
        for child in reversed(list(parent)):
            current[:] = [_part_name(child)]
            try:
                await maybeDeferred(child.stopService)
            except CancelledError:
                raise  # whoever waits for the stop gave up: so does the stop
            except Exception:
                log_failure(log, Failure(), "stopping {part} failed", part=current[0])
    finally:
        reporter.stop()


class OrderedMultiService(MultiService):
    """A `MultiService` whose children stop one after the other (see `stop_in_order`)."""

    def __init__(self, clock: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._clock = clock

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(stop_in_order(self, self._clock))
