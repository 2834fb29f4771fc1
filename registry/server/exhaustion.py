"""
Out of file descriptors while accepting: one warning per episode and a pause, whoever accepts.

At the open-files limit every new connection fails the same way, and a flood of connections is
exactly when the log must stay readable.  Unchecked, each refused connection writes log lines: a
worker of ``workers = 2`` takes an ``EMFILE`` from ``adoptStreamConnection`` (``accept`` had
succeeded with the last descriptor, the adoption's ``dup`` has none left) for a peer that left,
one debug line per connection; with ``workers = 1`` Twisted's own ``tcp.Port`` writes three info
lines per connection ("EMFILE encountered ...", "EMFILE recovery: Closed socket from ...",
"Re-reserving ...").

Now both ways of accepting report to `Episodes`: the first exhaustion logs one warning, and
later ones stay silent until none has happened for `QUIET` seconds (then the next is a new
episode).  Each also takes the listening socket out of the reactor for `PAUSE` seconds, so
that a flood costs a few accept loops a second rather than one per connection; connections
that arrive meanwhile wait in the kernel's backlog.

Twisted's ``tcp.Port`` cannot be quieted through public API: it logs through a logger of its
class, with no level or switch.  Its logger is replaced per port by one whose observer is
`AcceptLog` (`registry.http.twisted_internals.route_accept_log`, checked at start-up), which
turns those three events into an episode and passes every other event on unchanged.  A filter
on the process's log observer instead would also work, but twistd owns that observer (and its
``--logger`` option), and a filter there could not pause the port that logged.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

from registry.http import twisted_internals

log = Logger()

# Connections wait in the backlog this long after an exhaustion before accepting is tried again.
PAUSE = 0.1
# An exhaustion this long after the previous one starts a new episode (and a new warning).
QUIET = 60.0
# accept(2) and dup(2) errors that mean "no descriptor or memory for another connection".
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Episodes:
    """Exhaustions of this process, one warning for each run of them less than `QUIET` apart."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None

    def exhausted(self, reason: str) -> None:
        now = self._clock()
        if self._last is None or now - self._last >= QUIET:
            log.warn(
                "cannot accept connections: {reason}; trying again every {pause} s "
                "(not logged again until it has not happened for {quiet:.0f} s)",
                reason=reason,
                pause=PAUSE,
                quiet=QUIET,
            )
        self._last = now


# One per process: descriptors are the process's, whichever port ran out of them.
episodes = Episodes()


def reason_of(code: int) -> str:
    """``too many open files`` for ``EMFILE``."""
    return os.strerror(code).lower()


# What Twisted's accept loop (twisted.internet.tcp._accept) logs at exhaustion: the start of
# each text, as twisted_internals checks them at start-up.
_TWISTED_EMFILE = ("EMFILE encountered", "EMFILE recovery", "Re-reserving EMFILE")
_TWISTED_ACCEPT_ERROR = "Could not accept new connection"


@implementer(ILogObserver)
class AcceptLog:
    """
    The observer of one Twisted listening port's accept loop: its exhaustion events become an
    episode and a pause of the port; anything else goes on to ``forward``.
    """

    def __init__(self, reactor: Any, port: Any, forward: ILogObserver) -> None:
        self._reactor = reactor
        self._port = port
        self._forward = forward
        self._resume: Any = None

    def __call__(self, event: LogEvent) -> None:
        text = str(event.get("log_format") or "")
        if text.startswith(_TWISTED_EMFILE):
            if text.startswith(_TWISTED_EMFILE[0]):  # once per accept loop that ran out
                self._exhausted(reason_of(errno.EMFILE))
            return
        if text.startswith(_TWISTED_ACCEPT_ERROR):
            code = getattr(errno, str(event.get("acceptError")), None)
            if code in EXHAUSTED:
                self._exhausted(reason_of(code))
                return
        self._forward(event)

    def _exhausted(self, reason: str) -> None:
        episodes.exhausted(reason)
        # Called as the port's accept loop ends (Twisted buffers these events until then), so
        # taking it out of the reactor here is safe.
        if self._resume is None and self._port.connected and not self._port.disconnecting:
            self._reactor.removeReader(self._port)
            self._resume = self._reactor.callLater(PAUSE, self._after_pause)

    def _after_pause(self) -> None:
        self._resume = None
        if self._port.connected and not self._port.disconnecting:
            self._reactor.addReader(self._port)


def quiet_exhaustion(reactor: Any, port: object) -> None:
    """Route a Twisted TCP (or UNIX) port's accept log through `AcceptLog`; others: nothing."""
    if isinstance(port, tcp.Port):
        twisted_internals.route_accept_log(port, lambda forward: AcceptLog(reactor, port, forward))
