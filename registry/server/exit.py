"""
Failing start-up the way service managers understand: one line on stderr, a non-zero status.

twistd catches ``Exception`` around start-up and prints a traceback, swallows everything raised
inside the running reactor, and exits 0 after the reactor stops.  So a failure found before the
reactor runs raises `SystemExit` (which twistd lets through), and one found while it runs (the
storage probe needs the reactor) stops the reactor and sets the status at interpreter exit.
The line goes to the process's real stderr: twistd redirects ``sys.stderr`` into its log.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
from typing import NoReturn

from registry.server import daemon_status

PREFIX = "txregistry: "
EXIT_STARTUP_FAILED = 1


class StartupError(Exception):
    """Start-up cannot go on; the message names the cause in one line (no prefix)."""


def print_line(message: str) -> None:
    """Write ``txregistry: message`` as one line to the process's real stderr."""
    line = PREFIX + " ".join(message.split()) + "\n"
    stream = sys.__stderr__
    if stream is None:  # no stderr at all (a daemon): nothing to write to
        return
    stream.write(line)
    stream.flush()


def tell_supervisor(message: str) -> bool:
    """
    In a worker of ``[http] workers > 1``: send the start-up failure over the control pipe
    too, so that the supervisor can name the cause in its own log (a SIGHUP whose new worker
    cannot start, say because the certificate files were replaced by a bad pair).  Written
    straight to the pipe's descriptor: the process is about to exit.  True when the
    supervisor logs it (a worker replaced while the registry serves), so that the worker
    does not print the same cause again on every retry.
    """
    from registry.server.worker_env import CONTROL_OUT, WORKER_ENVIRONMENT

    spec = os.environ.get(WORKER_ENVIRONMENT)
    if not spec:
        return False
    try:
        parsed = json.loads(spec)
        slot = parsed["worker"]
    except (ValueError, KeyError, TypeError):
        return False
    reason = " ".join(message.split())
    line = json.dumps({"op": "failed", "worker": slot, "pid": os.getpid(), "reason": reason})
    try:
        os.write(CONTROL_OUT, b"\n" + line.encode() + b"\n")  # after whatever half line is there
    except OSError:
        return False
    return parsed.get("failures_logged") is True


def tell_checked(workers: int, listeners: list[tuple[str, str, str]]) -> None:
    """In a SIGHUP's configuration check (``[http] workers > 1``): tell the supervisor what
    only a restart applies: the number of workers the configuration now asks for, and each
    listening address it changed (key, asked for, served)."""
    from registry.server.worker_env import CONTROL_OUT

    line = json.dumps({"op": "checked", "workers": workers, "listeners": listeners})
    with contextlib.suppress(OSError):
        os.write(CONTROL_OUT, b"\n" + line.encode() + b"\n")


def twistd_pidfile(argv: list[str]) -> str:
    """
    The pid file twistd was told to write (``--pidfile PATH``, ``--pidfile=PATH``; empty:
    none), from its own options, which come before the plugin's name; ``twistd.pid`` by
    default, as twistd has it.
    """
    path = "twistd.pid"
    for index, word in enumerate(argv[1:], start=1):
        if not word.startswith("-"):
            break  # the plugin's name: the rest are its options
        if word.startswith("--pidfile="):
            path = word.removeprefix("--pidfile=")
        elif word == "--pidfile" and index + 1 < len(argv):
            path = argv[index + 1]
    return path


def _remove_own_pidfile() -> None:
    """
    twistd removes its pid file after a start-up failure it catches (an ``Exception``), not
    after the `SystemExit` that leaves with one line: left behind, naming a process that is
    gone, a later process given that pid would make the next start refuse ("Another twistd
    server is running").  Removed only when it names this process.
    """
    path = twistd_pidfile(sys.argv)
    if not path:
        return
    with contextlib.suppress(OSError, ValueError):
        with open(path) as file:
            if int(file.read().strip()) != os.getpid():
                return
        os.unlink(path)


def exit_now(message: str) -> NoReturn:
    """Before the reactor runs: print the line and leave with a failure status."""
    if not tell_supervisor(message):
        print_line(message)
    if daemon_status.pending():  # (a daemon's stderr is /dev/null: its log says it too)
        _log_error(message)
        daemon_status.failed(message)
    _remove_own_pidfile()
    raise SystemExit(EXIT_STARTUP_FAILED)


def _exit_with(status: int) -> None:
    # Runs last among the atexit handlers registered before it: flush what they would have.
    logging.shutdown()
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(status)


def exit_after_reactor(reactor: object, message: str) -> None:
    """While the reactor runs: print the line, stop the reactor, exit non-zero afterwards.
    The cause goes to the log too: a daemon's (``--logfile``) would otherwise end with the
    stop and no word of why."""
    _log_error(message)
    if not tell_supervisor(message):
        print_line(message)
    daemon_status.failed(message)
    atexit.register(_exit_with, EXIT_STARTUP_FAILED)
    reactor.stop()  # type: ignore[attr-defined]


def _log_error(message: str) -> None:
    from twisted.logger import Logger

    Logger(namespace="registry.server.exit").error(
        "start-up failed: {reason}", reason=" ".join(message.split())
    )


def exit_with_status_after_reactor(status: int) -> None:
    """Exit with ``status`` once twistd is done (the reactor stopped, its pid file removed):
    a stop that cut connections (128 + the signal's number), which a script must be able to
    tell from a drained one (0)."""
    atexit.register(_exit_with, status)
