"""
``twistd registry`` as the supervisor of ``[http] workers``: bind, then hand over.

The listeners are bound here, with Twisted's endpoints, so that every endpoint string works
as in a single process and a port that cannot be had is the usual one line
(`registry.server.listeners`), before any worker starts; ports below 1024 are bound before
twistd drops privileges (``--uid``).  Once they are bound, this process replaces itself
(``exec``: same pid, pidfile and standard streams) with the supervisor proper
(`registry.server.supervisor`), which inherits the bound sockets and runs on the standard
library alone: it never needs Twisted, and an idle Twisted process costs some 35 MiB where
the supervisor needs about 13.  What it needs to know (the workers' command lines, the
listeners, where to log) goes to it in the ``TXREGISTRY_SUPERVISOR`` variable.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.config import Config
from registry.server import daemon_status
from registry.server.exit import StartupError, exit_after_reactor
from registry.server.listeners import Listeners
from registry.server.supervisor import HELD_ACROSS_EXEC, SPEC_ENVIRONMENT
from registry.server.workers import family_of

log = Logger()

# argv of worker ``slot`` (a ``twistd -n registry`` command line).
Command = Callable[[int], list[str]]
SUPERVISOR = "from registry.server.supervisor import main; main()"


class Handoff(Service):
    """Binds the listeners, then execs the supervisor with them (see the module)."""

    def __init__(
        self,
        reactor: Any,
        listeners: Listeners,
        debug: Listeners | None,
        settings: dict[str, Any],
        announce: Callable[[Listeners], str],
        exec_: Callable[[str, list[str], dict[str, str]], None] = os.execve,
    ) -> None:
        self.reactor = reactor
        self.listeners = listeners
        self.debug = debug
        self._settings = settings
        self._announce = announce
        self._exec = exec_

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
        d = Deferred.fromCoroutine(self._bound())
        d.addCallbacks(lambda _: self._hand_over(), self._failed)

    async def _bound(self) -> None:
        await self.listeners.wait_bound()
        if self.debug is not None:
            await self.debug.wait_bound()

    def _failed(self, failure: Failure) -> None:
        if failure.check(StartupError):
            exit_after_reactor(self.reactor, str(failure.value))
        else:
            log.failure("start-up failed", failure)
            exit_after_reactor(self.reactor, f"start-up failed: {failure.getErrorMessage()}")

    def _inherited(self, listeners: Listeners) -> list[dict[str, Any]]:
        out = []
        for description, port in zip(listeners.descriptions, listeners.ports, strict=True):
            fd = port.fileno()  # type: ignore[attr-defined]
            os.set_inheritable(fd, True)
            out.append({"description": description, "fd": fd, "family": family_of(fd)})
        return out

    def _hand_over(self) -> None:
        if daemon_status.held_signal() is not None:
            # A stop asked for before the reactor ran (a daemon's SIGTERM, held): the
            # supervisor is not started; the stop is said (`registry.server.daemon_status`).
            exit_after_reactor(self.reactor, "stopped before it served (the log says why)")
            return
        spec = dict(self._settings)
        spec["listeners"] = self._inherited(self.listeners)
        debug = self._inherited(self.debug) if self.debug is not None else []
        spec["debug"] = debug[0] if debug else None
        spec["announce"] = self._announce(self.listeners)
        # A daemon's start is reported by the supervisor, once every worker serves.
        spec["daemon_status"] = daemon_status.hand_over()
        env = dict(os.environ)
        env[SPEC_ENVIRONMENT] = json.dumps(spec)
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        # Held until the supervisor has its handlers (`registry.server.supervisor`): the
        # interpreter it starts takes a while, and until then a SIGTERM would end it without a
        # word, and a daemon's caller would wait for ever (`registry.server.daemon_status`).
        # The mask survives the exec; what arrives meanwhile is delivered once it has them.
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_ACROSS_EXEC)
        try:
            # twistd's arguments follow, unread: `ps` and `pgrep -f` then tell which
            # configuration this supervisor runs, as they do for its workers.
            self._exec(sys.executable, [sys.executable, "-c", SUPERVISOR, *sys.argv[1:]], env)
        except OSError as exc:  # E2BIG, ENOMEM...: still this process, which must not idle
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_ACROSS_EXEC)
            reason = exc.strerror or str(exc)
            exit_after_reactor(self.reactor, f"cannot start the supervisor: {reason.lower()}")


def log_target(twistd: Any, rotate_size: int, rotate_keep: int) -> dict[str, Any]:
    """Where twistd was told to log (``twistd``: its parsed options), for the supervisor; a
    file rotates as ``[log]`` says."""
    if twistd is None:
        return {"stdout": True}
    if twistd.get("syslog"):
        return {"syslog": twistd.get("prefix") or "twisted"}
    logfile = twistd.get("logfile")
    if logfile == "-" or (twistd.get("nodaemon") and not logfile):
        return {"stdout": True}
    return {
        "file": os.path.abspath(logfile or "twistd.log"),
        "rotate_size": rotate_size,
        "rotate_keep": rotate_keep,
    }


def supervise(
    reactor: Any,
    config: Config,
    count: int,
    endpoints: list[tuple[str, Any]],
    debug: list[tuple[str, Any]],
    command: Command,
    twistd: Any = None,
    ports_from_file: bool = False,
) -> Handoff:
    """The supervisor of ``count`` workers over ``endpoints`` (and the ``[debug]`` one);
    ``twistd``: twistd's parsed options (where to log, the pidfile); ``ports_from_file``:
    the listeners are the configuration's ``[http] port`` (no ``--port``), which a SIGHUP's
    check then validates and compares."""
    # The ports never accept here (the workers do): this factory is never used.
    idle = Factory.forProtocol(Protocol)
    driver = config.storage.driver

    def announce(listeners: Listeners) -> str:
        return (
            f"txregistry listening on {', '.join(listeners.descriptions)} "
            f"({', '.join(listeners.addresses())}), {driver} storage, {count} workers"
        )

    settings = {
        "count": count,
        "drain_timeout": config.http.draintimeout,
        "worker_timeout": config.http.worker_timeout,
        "commands": [command(slot) for slot in range(count)],
        "log": log_target(twistd, config.log.rotatesize, config.log.rotatekeep),
        "pidfile": (twistd.get("pidfile") or None) if twistd is not None else None,
        "ports_from_file": ports_from_file,
    }
    return Handoff(
        reactor,
        Listeners(reactor, endpoints, idle),
        Listeners(reactor, debug, idle) if debug else None,
        settings,
        announce,
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
    """``twistd -n --pidfile= ...ARGUMENTS`` with this interpreter (how workers are started:
    `registry.server.worker_twistd`, twistd without its plugin search), and its ``-O``
    flags: ``python -OO`` (or ``PYTHONOPTIMIZE=2``) leaves docstrings out of every process."""
    run = "from registry.server.worker_twistd import run; run()"
    optimize = ["-" + "O" * sys.flags.optimize] if sys.flags.optimize else []
    return [sys.executable, *optimize, "-c", run, "-n", "--pidfile=", *arguments]
