"""
Timers that keep their delays when the system clock is set back.

Twisted's reactor tells time by the wall clock (``time.time``) and keeps each timer as the
wall-clock moment it is due.  When NTP, an operator or a VM resumed from a snapshot sets the
clock back by an hour, every timer already scheduled fired an hour late: upstream timeouts,
idle connections, the cache's flushes and evictions, the heartbeat that tells a second
instance this one is alive (which then started beside it).

`guard_clock` puts a check in front of the reactor's clock (its ``seconds``, which the reactor
itself and every timer read): each reading compares the wall clock with the monotonic one.
A step of more than a second, either way, moves every pending timer (``getDelayedCalls``,
``reset``: public ``IReactorTime`` and ``IDelayedCall``) so that it is due after what it had
left, before the reading that saw the step is returned, so no timer is ever scheduled on the
new clock and then moved.  (Either way: a clock set back, then set right, moved every timer
back and then left them all an hour overdue.)  The reactor notices soon enough: it sleeps for
durations, not until moments, so it wakes when its next timer was due and reads the clock
then; and it is woken (``callFromThread``) to compute its sleep again, which it may have
begun with the moment read before the step.  Ages measured on the wall clock (the cache's
``ttl``, upload ages) still jump with a step forward.  A step is one warning line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python import threadable

log = Logger()

# The step below which nothing is done (the two clocks drift apart by microseconds a second,
# and NTP slews small corrections gradually).
TOLERANCE = 1.0


class ClockGuard:
    """The checking clock of one reactor (module docstring); see `guard_clock`."""

    def __init__(
        self,
        reactor: Any,
        wall: Callable[[], float] = time.time,
        steady: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reactor = reactor
        self._wall = wall
        self._steady = steady
        self._last = (wall(), steady())

    def seconds(self) -> float:
        wall = self._wall()
        if not threadable.isInIOThread():
            return wall  # timers belong to the reactor thread, and so does this state
        steady = self._steady()
        last_wall, last_steady = self._last
        expected = last_wall + (steady - last_steady)
        self._last = (wall, steady)  # first: moving a timer reads the clock again
        step = wall - expected
        if abs(step) > TOLERANCE:
            self._stepped(expected, step)
        return wall

    def _stepped(self, expected: float, step: float) -> None:
        moved = 0
        for call in self.reactor.getDelayedCalls():
            # What it had left on the clock as it was, from now on the clock as it is.
            call.reset(max(0.0, call.getTime() - expected))
            moved += 1
        # The reactor may have read its next timer's moment before this reading (it sleeps
        # for that moment minus now): woken, it computes its sleep again.
        self.reactor.callFromThread(lambda: None)
        if step < 0:
            log.warn(
                "the system clock went back {seconds:.0f}s: {moved} timers moved to keep"
                " their delays",
                seconds=-step,
                moved=moved,
            )
        else:
            log.warn(
                "the system clock jumped forward {seconds:.0f}s: {moved} timers moved to keep"
                " their delays; ages measured on it (the cache's ttl, upload ages) jumped with"
                " it",
                seconds=step,
                moved=moved,
            )


def guard_clock(reactor: Any) -> ClockGuard:
    """Put a `ClockGuard` in front of ``reactor``'s clock (once per reactor: an in-process
    registry started again, as the tests do, finds it there)."""
    current = getattr(reactor.seconds, "__self__", None)
    if isinstance(current, ClockGuard):
        return current
    guard = ClockGuard(reactor)
    reactor.seconds = guard.seconds
    return guard
