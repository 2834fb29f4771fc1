"""
The supervisor of ``[http] workers`` processes (see `registry.server.workers` for the design).

Start: bind every listener (a failure is the usual one line, exit 1), start worker 0 and wait
until it serves (it probes the storage: a failure there is its one line, and the supervisor
exits 1 without adding another), then start the others, and log "listening" once all serve.

Supervision: a worker that exits is replaced in the same slot (same worker number, so the
same notification queue), after a pause that doubles with each exit in a row of that slot
(0.5 s up to 30 s) and resets once a replacement serves.  Each exit is one log line.

Signals:

- SIGTERM (or SIGINT): close the supervisor's copies of the listening sockets, send SIGTERM
  to every worker (each drains its requests for up to ``[http] draintimeout``), wait for all
  of them, exit 0.  A worker still running ten seconds past the drain timeout is killed.
- SIGHUP: a rolling restart.  One worker at a time is drained and replaced by a new process,
  which reads the configuration file and certificates again; the next waits until the new
  one serves.  The listeners themselves and the number of workers stay as they are.

Questions the workers ask (over their control pipe): the whole tree's metrics (asked of every
serving worker and merged, `registry.ops.metrics_tree`) and how many workers serve (readiness).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone, ReactorNotRunning
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.config import Config
from registry.server.control import Channel
from registry.server.exit import StartupError, exit_after_reactor, exit_quietly_after_reactor
from registry.server.listeners import Listeners
from registry.server.workers import (
    CONTROL_IN,
    CONTROL_OUT,
    ENVIRONMENT,
    FIRST_LISTENER_FD,
    Inherited,
    WorkerSpec,
    family_of,
)

log = Logger()

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Past the drain timeout, how long a worker may take to exit before it is killed.
STOP_GRACE = 10.0
# How long a started worker may take to serve (imports, storage probe) before a rolling
# restart moves on anyway.
START_TIMEOUT = 120.0
# A worker's own scrape, inside a worker's question (which waits ASK_TIMEOUT = 5 s).
SCRAPE_TIMEOUT = 3.0

# argv of worker ``slot`` (a ``twistd -n registry`` command line).
Command = Callable[[int], list[str]]


def _describe_end(reason: Failure) -> str:
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        return f"killed by {signal.Signals(signal_number).name}"
    return f"exit status {getattr(value, 'exitCode', None)}"


class WorkerProcess(ProcessProtocol):
    """One worker process seen from the supervisor."""

    def __init__(self, supervisor: Supervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid = 0
        self.serving = False
        self.served: Deferred[None] = Deferred()
        self.ended: Deferred[Failure] = Deferred()
        self.channel = Channel(self._write, supervisor.handlers(), supervisor.reactor)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.writeToChild(CONTROL_IN, data)

    def connectionMade(self) -> None:
        self.pid = int(self.transport.pid)  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == CONTROL_OUT:
            self.channel.data_received(data)

    def signal(self, name: str) -> None:
        with contextlib.suppress(Exception):  # exited already
            self.transport.signalProcess(name)  # type: ignore[union-attr]

    def processEnded(self, reason: Failure) -> None:
        self.channel.lost()
        self.supervisor._ended(self, reason)
        if not self.served.called:
            self.served.errback(reason)
            self.served.addErrback(lambda _: None)
        self.ended.callback(reason)


class Supervisor(Service):
    """Binds the listeners, runs ``count`` workers over them, replaces those that exit."""

    def __init__(
        self,
        reactor: Any,
        listeners: Listeners,
        count: int,
        command: Command,
        drain_timeout: float,
        announce: Callable[[Listeners, int], None],
        debug: Listeners | None = None,
    ) -> None:
        self.reactor = reactor
        self.listeners = listeners
        self.debug = debug
        self.count = count
        self._command = command
        self.drain_timeout = drain_timeout
        self._announce = announce
        self.workers: dict[int, WorkerProcess] = {}
        self.restarts = 0
        self._failures: dict[int, int] = {}
        self._respawns: dict[int, Any] = {}
        self._started = False  # every worker served once: start-up is over
        self._stopping = False
        self._rolling: Deferred[None] | None = None
        self._holding: set[int] = set()  # slots a rolling restart replaces itself
        self._specs: dict[int, WorkerSpec] = {}

    # Start

    def privilegedStartService(self) -> None:
        self.listeners.bind_or_exit()
        if self.debug is not None:
            self.debug.bind_or_exit()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        self.listeners.bind()  # done already under twistd
        if self.debug is not None:
            self.debug.bind()
        super().startService()  # type: ignore[no-untyped-call]
        self.reactor.callWhenRunning(self._begin)

    def _begin(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(self._start_failed)

    async def _start(self) -> None:
        await self.listeners.wait_bound()
        if self.debug is not None:
            await self.debug.wait_bound()
        first = self._spawn(0)
        try:
            await first.served
        except Exception:
            # Worker 0 said why on stderr (storage probe, configuration): one line, exit 1.
            if not self._stopping:
                exit_quietly_after_reactor(self.reactor)
            return
        others = [self._spawn(slot).served for slot in range(1, self.count)]
        results = await DeferredList(others, consumeErrors=True)
        if not all(ok for ok, _ in results):
            if not self._stopping:
                exit_quietly_after_reactor(self.reactor)
            return
        self._started = True
        self._announce(self.listeners, self.count)

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(StartupError):
            exit_after_reactor(self.reactor, str(failure.value))
        else:
            log.failure("start-up failed", failure)
            exit_after_reactor(self.reactor, f"start-up failed: {failure.getErrorMessage()}")

    def _spec(self, slot: int) -> tuple[WorkerSpec, dict[int, Any]]:
        child_fds: dict[int, Any] = {0: 0, 1: 1, 2: 2, CONTROL_IN: "w", CONTROL_OUT: "r"}
        inherited = []
        fd = FIRST_LISTENER_FD
        bound = zip(self.listeners.descriptions, self.listeners.ports, strict=True)
        for description, port in bound:
            own = port.fileno()  # type: ignore[attr-defined]
            child_fds[fd] = own
            inherited.append(Inherited(description, fd, family_of(own)))
            fd += 1
        debug = None
        if self.debug is not None and self.debug.ports:
            own = self.debug.ports[0].fileno()  # type: ignore[attr-defined]
            child_fds[fd] = own
            debug = Inherited(self.debug.descriptions[0], fd, family_of(own))
        return WorkerSpec(slot, self.count, tuple(inherited), debug, os.getpid()), child_fds

    def _spawn(self, slot: int) -> WorkerProcess:
        spec, child_fds = self._spec(slot)
        env = dict(os.environ)
        env[ENVIRONMENT] = spec.to_environ()
        worker = WorkerProcess(self, slot)
        argv = self._command(slot)
        self.reactor.spawnProcess(worker, argv[0], argv, env=env, childFDs=child_fds)
        self.workers[slot] = worker
        return worker

    # Questions from workers

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "ready": self._worker_ready,
            "tree_metrics": self._tree_metrics,
            "tree_ready": self._tree_ready,
        }

    def _worker_ready(self, message: dict[str, Any]) -> None:
        worker = self.workers.get(int(message["worker"]))
        if worker is None or worker.pid != int(message["pid"]):
            return
        worker.serving = True
        self._failures.pop(worker.slot, None)
        log.info("worker {worker} (pid {pid}) serving", worker=worker.slot, pid=worker.pid)
        if not worker.served.called:
            worker.served.callback(None)

    async def _tree_metrics(self, message: dict[str, Any]) -> str:
        # prometheus_client, imported at the first scrape: a supervisor at rest holds no
        # more than it needs to supervise.
        from registry.ops.metrics_tree import WorkerScrape, tree_text

        serving = [w for w in self.workers.values() if w.serving]
        asked = [w.channel.request("metrics", SCRAPE_TIMEOUT) for w in serving]
        scrapes = []
        for answered, result in await DeferredList(asked, consumeErrors=True):
            if answered:
                scrapes.append(WorkerScrape(result["worker"], result["pid"], result["text"]))
        return tree_text(scrapes, self.count, self.restarts).decode()

    def _tree_ready(self, message: dict[str, Any]) -> dict[str, int]:
        ready = sum(1 for w in self.workers.values() if w.serving)
        return {"ready": ready, "workers": self.count}

    # Supervision

    def _ended(self, worker: WorkerProcess, reason: Failure) -> None:
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        how = _describe_end(reason)
        if self._stopping or worker.slot in self._holding:
            log.info(
                "worker {worker} (pid {pid}) stopped: {how}",
                worker=worker.slot,
                pid=worker.pid,
                how=how,
            )
            return
        if not self._started and not worker.serving:
            return  # a start-up failure: `_start` ends the process
        failures = self._failures.get(worker.slot, 0)
        self._failures[worker.slot] = failures + 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2**failures)
        expected = reason.check(ProcessDone) is not None
        log.warn(
            "worker {worker} (pid {pid}) exited: {how}; replacing it in {delay:g} s "
            "({failures} exit(s) in a row)",
            worker=worker.slot,
            pid=worker.pid,
            how=how if not expected else "exit status 0",
            delay=delay,
            failures=failures + 1,
        )
        self._respawns[worker.slot] = self.reactor.callLater(delay, self._respawn, worker.slot)

    def _respawn(self, slot: int) -> None:
        self._respawns.pop(slot, None)
        if self._stopping or slot in self.workers:
            return
        self.restarts += 1
        self._spawn(slot)

    # SIGHUP: rolling restart

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._hup)

    def _hup(self) -> None:
        if self._stopping:
            return
        if self._rolling is not None:
            log.info("SIGHUP: a rolling restart is running already")
            return
        self._rolling = Deferred.fromCoroutine(self._roll())
        self._rolling.addErrback(lambda f: log.failure("rolling restart failed", f))
        self._rolling.addBoth(self._rolled)

    def _rolled(self, _: object) -> None:
        self._rolling = None

    async def _roll(self) -> None:
        log.info("SIGHUP: restarting the {count} workers one at a time", count=self.count)
        for slot in range(self.count):
            if self._stopping:
                return
            self._holding.add(slot)
            try:
                old = self.workers.get(slot)
                if old is not None:
                    old.signal("TERM")
                    await self._ended_within(old, self.drain_timeout + STOP_GRACE)
                pending = self._respawns.pop(slot, None)
                if pending is not None and pending.active():
                    pending.cancel()
                if self._stopping:
                    return
                self.restarts += 1
                new = self._spawn(slot)
            finally:
                self._holding.discard(slot)
            timer = self.reactor.callLater(START_TIMEOUT, new.served.cancel)
            try:
                await new.served
            except Exception:
                log.warn("SIGHUP: worker {worker} did not start; going on", worker=slot)
            finally:
                if timer.active():
                    timer.cancel()
        log.info("SIGHUP: every worker restarted")

    async def _ended_within(self, worker: WorkerProcess, limit: float) -> None:
        waiting: Deferred[None] = Deferred()

        def wake(result: object = None) -> object:
            if not waiting.called:
                waiting.callback(None)
            return result

        worker.ended.addBoth(wake)
        timer = self.reactor.callLater(limit, wake)
        await waiting
        if timer.active():
            timer.cancel()
        if not worker.ended.called:
            log.warn(
                "worker {worker} (pid {pid}) still running after {limit:g} s: killing it",
                worker=worker.slot,
                pid=worker.pid,
                limit=limit,
            )
            worker.signal("KILL")
            await worker.ended

    # Stop

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._stop_requested, signal.Signals(signum).name)

    def _stop_requested(self, name: str) -> None:
        if self._stopping:
            log.info("{signal} again: still draining the workers", signal=name)
            return
        log.info("{signal}: draining every worker", signal=name)
        with contextlib.suppress(ReactorNotRunning):
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for pending in self._respawns.values():
            if pending.active():
                pending.cancel()
        self._respawns.clear()
        # The workers keep their own copies of the sockets until they have stopped accepting:
        # closing ours now lets the kernel refuse connections once the last worker closes.
        await self.listeners.stop_listening()
        if self.debug is not None:
            await self.debug.stop_listening()
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        await DeferredList(
            [
                Deferred.fromCoroutine(self._ended_within(w, self.drain_timeout + STOP_GRACE))
                for w in workers
            ]
        )
        log.info("every worker stopped")


def supervise(
    reactor: Any,
    config: Config,
    count: int,
    endpoints: list[tuple[str, Any]],
    debug: list[tuple[str, Any]],
    command: Command,
) -> Supervisor:
    """The supervisor of ``count`` workers over ``endpoints`` (and the ``[debug]`` one)."""
    # The supervisor's ports never accept (the workers do): this factory is never used.
    idle = Factory.forProtocol(Protocol)
    driver = config.storage.driver

    def announce(listeners: Listeners, workers: int) -> None:
        log.info(
            "txregistry listening on {ports} ({addresses}), {driver} storage, {workers} workers",
            ports=", ".join(listeners.descriptions),
            addresses=", ".join(listeners.addresses()),
            driver=driver,
            workers=workers,
        )

    return Supervisor(
        reactor,
        Listeners(reactor, endpoints, idle),
        count,
        command,
        config.http.draintimeout,
        announce,
        debug=Listeners(reactor, debug, idle) if debug else None,
    )


def worker_command(config_file: str | None, storage: str | None, twistd: Any) -> Command:
    """
    The command line of worker ``slot``: ``twistd -n registry`` with the supervisor's
    ``--config`` and ``--storage``, and twistd's logging options (``twistd``: the parsed
    ``twistd`` options, None when not run by twistd).
    """
    arguments = []
    if config_file:
        arguments += ["--config", os.path.abspath(config_file)]
    if storage:
        arguments += ["--storage", os.path.abspath(storage)]

    def command(slot: int) -> list[str]:
        logging: list[str] = []
        if twistd is not None:
            logfile = twistd.get("logfile") or (None if twistd.get("nodaemon") else "twistd.log")
            if twistd.get("syslog"):
                logging = ["--syslog", f"--prefix={twistd.get('prefix') or 'twisted'}"]
            elif logfile and logfile != "-":
                # One file per worker: each rotates its own (a shared one would be rotated
                # under the others' feet).
                logging = [f"--logfile={os.path.abspath(logfile)}.worker{slot}"]
        return twistd_command([*logging, "registry", *arguments])

    return command


def twistd_command(arguments: list[str]) -> list[str]:
    """``twistd -n --pidfile= ...ARGUMENTS`` with this interpreter (how workers are started)."""
    run = "from twisted.scripts.twistd import run; run()"
    return [sys.executable, "-c", run, "-n", "--pidfile=", *arguments]
