"""
Timers that keep their delays when the system clock is set back.

Twisted's reactor tells time by the wall clock (``time.time``) and keeps each timer as the
wall-clock moment it is due.  When NTP, an operator or a VM resumed from a snapshot sets the
clock back by an hour, every timer already scheduled fires an hour late: upstream timeouts,
idle connections, the cache's flushes and evictions, the heartbeat that tells a second
instance this one is alive (which then starts beside it).  The reactor cannot notice by itself:
it sleeps until the next timer, which is now an hour away.

`ClockGuard` compares the wall clock with the monotonic one once a second, from a thread that
wakes the reactor (``callFromThread``).  A step back of more than a second moves every
pending timer (public ``IReactorTime.getDelayedCalls`` and ``IDelayedCall.reset``) so that it
is due after what it had left; a step forward is only reported (the timers due meanwhile run
at once, and ages measured on the wall clock, such as the cache's ``ttl``, jumped with it).
Either is one warning line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

# How often the clocks are compared, and the step below which nothing is done (the two clocks
# drift apart by microseconds a second, and NTP slews small corrections gradually).
INTERVAL = 1.0
TOLERANCE = 1.0


class ClockGuard(Service):
    """See the module docstring."""

    def __init__(
        self,
        reactor: Any,
        wall: Callable[[], float] = time.time,
        steady: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
    ) -> None:
        self.reactor = reactor
        self._wall = wall
        self._steady = steady
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (wall(), steady())

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._last = (self._wall(), self._steady())
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="registry-clock", daemon=True)
        self._thread.start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stop.set()  # the thread ends within an interval; it holds nothing

    def _tick(self) -> None:
        # Event.wait measures on the monotonic clock: a step of the wall clock does not
        # change how often this runs.
        while not self._stop.wait(self._interval):
            self.reactor.callFromThread(self.check)

    def check(self) -> None:
        """Compare the clocks (on the reactor thread); move the timers after a step back."""
        wall, steady = self._wall(), self._steady()
        last_wall, last_steady = self._last
        expected = last_wall + (steady - last_steady)
        self._last = (wall, steady)
        step = wall - expected
        if step < -TOLERANCE:
            moved = 0
            for call in self.reactor.getDelayedCalls():
                # What it had left on the clock as it was, from now on the clock as it is.
                call.reset(max(0.0, call.getTime() - expected))
                moved += 1
            log.warn(
                "the system clock went back {seconds:.0f}s: {moved} timers moved to keep"
                " their delays",
                seconds=-step,
                moved=moved,
            )
        elif step > TOLERANCE:
            log.warn(
                "the system clock jumped forward {seconds:.0f}s: timers due meanwhile ran at"
                " once, and ages measured on it (the cache's ttl, upload ages) jumped with it",
                seconds=step,
            )
