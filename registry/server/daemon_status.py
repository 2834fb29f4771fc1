"""
``twistd registry`` without ``-n``: the exit status of the command that daemonized is the
registry's start-up, as with ``-n``.

twistd daemonizes by forking; the process the command started waits on a pipe until the
daemon writes ``0`` (started: it exits 0) or ``1 <reason>`` (it prints the reason and exits
1).  twistd itself writes ``0`` as soon as the services' ``startService`` returned, which is
before the registry listens on a port it could not bind in the supervisor, probes its
storage or has its workers serving: a registry failing then left the command with status 0.
And a start-up failure that leaves with one line (`registry.server.exit.exit_now`, a
``SystemExit``) wrote nothing at all, so the command waited forever (the waiting process
holds both ends of the pipe).

So the registry takes the pipe over from twistd (``statusPipe`` in twistd's options, set
once it daemonized; `take_over` leaves None there, so twistd writes nothing) and writes to it
itself: `started` when it serves (the line ``txregistry listening on``; with several
workers, once every worker serves: the supervisor, which the pipe follows across its exec,
writes it), `failed` with the line naming the cause otherwise.  Whatever is written first
counts; the pipe is closed after it.  twistd reads at most 100 bytes and prints them as
``An error has occurred: b'<reason>'`` followed by a hint to read the log.  A longer reason
(a long storage path) would be cut there, so the line the registry prints with ``-n``
(``txregistry: <reason>``) is printed first, whole, on the command's own stderr: a copy of it
is kept from before twistd forked (`keep_terminal`) until the start is reported, then closed,
so that the daemon holds no terminal or pipe of whoever started it (an ``ssh`` session would
wait for it).

This module uses only the standard library: the supervisor imports it after its exec.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
from collections.abc import MutableMapping
from typing import Any

# How much of a reason twistd's waiting process reads (its ``os.read(pipe, 100)``).
_READ_BY_TWISTD = 100
# The stop signals a daemon holds until its serving process handles them (`keep_terminal`,
# `take_over`, `release_signals`).
HELD_UNTIL_HANDLED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
# The process that ran ``twistd`` (`keep_terminal`), and a signal its daemon held (`_hold`).
_command_pid: int | None = None
_held: int | None = None
_fd: int | None = None
# The stderr of the command that daemonized (`keep_terminal`).
_terminal: int | None = None


def keep_terminal(twistd_options: MutableMapping[str, Any] | None) -> None:
    """Before twistd daemonizes (``makeService``), when it will: a copy of stderr, where the
    line naming a failed start is printed whole."""
    global _terminal
    if twistd_options is None or twistd_options.get("nodaemon") or _terminal is not None:
        return
    with contextlib.suppress(OSError):
        _terminal = os.dup(2)
    # Until its reactor runs, the daemon twistd forks has no handler for these: their default
    # would end it unheard (from the moment its pid file names it), its caller waiting for
    # ever.  A handler set before the fork is the daemon's too: there it holds the signal
    # until `release_signals`; in the command itself (before the fork, or waiting for the
    # daemon) the signal does what it always did.
    global _command_pid
    _command_pid = os.getpid()
    for signum in HELD_UNTIL_HANDLED:
        signal.signal(signum, _hold)


def _hold(signum: int, frame: Any) -> None:
    global _held
    if os.getpid() == _command_pid:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _held is None:
        _held = signum


def take_over(twistd_options: MutableMapping[str, Any] | None) -> None:
    """In the daemon (after twistd forked): the status pipe is ours from now on."""
    global _fd
    if twistd_options is None:
        return
    fd = twistd_options.get("statusPipe")
    if not isinstance(fd, int):
        _close_terminal()  # not a daemon after all
        return
    twistd_options["statusPipe"] = None
    _fd = fd
    atexit.register(_ended_before_serving)
    # From here the signals wait in the kernel: the reactor's handlers, installed when it
    # runs, must not take a stop that an exec into the supervisor would then lose; the
    # serving process releases them (`release_signals`), the supervisor once its handlers
    # are in (the mask survives the exec).
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_UNTIL_HANDLED)


def release_signals() -> None:
    """The serving process handles its signals now: one the daemon held (`keep_terminal`)
    is delivered again, to them."""
    global _held
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_UNTIL_HANDLED)
    held, _held = _held, None
    if held is not None:
        os.kill(os.getpid(), held)


def held_signal() -> int | None:
    """The signal the daemon held, not yet delivered (a stop asked for before it served)."""
    return _held


def adopt(handed: dict[str, int] | None) -> None:
    """In the supervisor, after its exec: what the daemon handed over (`hand_over`)."""
    global _fd, _terminal
    if not handed:
        return
    with contextlib.suppress(OSError):
        # The workers' processes must not hold them.
        for fd in handed.values():
            os.set_inheritable(fd, False)
        _fd = handed.get("pipe")
        _terminal = handed.get("terminal")
        atexit.register(_ended_before_serving)


def hand_over() -> dict[str, int] | None:
    """Before the exec into the supervisor: the pipe's descriptor and the copy of stderr,
    kept open across it."""
    if _fd is None:
        return None
    handed = {"pipe": _fd, **({"terminal": _terminal} if _terminal is not None else {})}
    for fd in handed.values():
        os.set_inheritable(fd, True)
    return handed


def pending() -> bool:
    """Whether a process waits to hear how the start went."""
    return _fd is not None


def _close_terminal() -> None:
    global _terminal
    terminal, _terminal = _terminal, None
    if terminal is not None:
        with contextlib.suppress(OSError):
            os.close(terminal)


def _say(data: bytes) -> None:
    global _fd
    fd, _fd = _fd, None
    _close_terminal()
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, data[:_READ_BY_TWISTD])
    with contextlib.suppress(OSError):
        os.close(fd)


def started() -> None:
    """The registry serves: the command that daemonized exits 0."""
    _say(b"0")


def failed(reason: str) -> None:
    """Start-up failed: the command that daemonized prints ``reason`` and exits 1."""
    if _fd is None:
        return
    line = " ".join(reason.split()) or "start-up failed"
    if _terminal is not None:
        with contextlib.suppress(OSError):
            os.write(_terminal, f"txregistry: {line}\n".encode(errors="backslashreplace"))
    _say(b"1 " + line.encode("ascii", "backslashreplace"))


def _ended_before_serving() -> None:
    """At exit, when nothing was said: the process ended before it served (stopped while
    starting, or a failure that left no line)."""
    failed("stopped before it served (the log says why)")
