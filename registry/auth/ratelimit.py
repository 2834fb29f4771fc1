"""
Slowing down password and token guessing, per source address.

After ``max_failures`` failed logins within ``window`` seconds, a source gets 429
TOOMANYREQUESTS for ``cooldown`` seconds without its credentials being checked at all (which
also keeps a guesser from keeping the bcrypt threads busy).  Successful logins do not clear the
record, or one valid account would let a guesser reset the counter between attempts on another.
Memory is bounded: at most ``max_sources`` sources are tracked, the least recently failing
forgotten first.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

import attrs
from twisted.internet.interfaces import IReactorTime


@attrs.define
class FailureLimiter:
    clock: IReactorTime
    max_failures: int = 10
    window: float = 60.0
    cooldown: float = 60.0
    max_sources: int = 65536
    _failures: OrderedDict[str, deque[float]] = attrs.field(factory=OrderedDict, init=False)
    _blocked: dict[str, float] = attrs.field(factory=dict, init=False)

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def retry_after(self, source: str) -> int | None:
        """Seconds until ``source`` may try again, or None when it is not blocked."""
        until = self._blocked.get(source)
        if until is None:
            return None
        remaining = until - self.clock.seconds()
        if remaining <= 0:
            del self._blocked[source]
            return None
        return max(1, math.ceil(remaining))

    def record_failure(self, source: str) -> bool:
        """Count a failed login; True when this one starts a cool-down."""
        if not self.enabled:
            return False
        now = self.clock.seconds()
        times = self._failures.pop(source, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            self._blocked[source] = now + self.cooldown
            times.clear()
            self._prune_blocked(now)
            return True
        self._failures[source] = times
        while len(self._failures) > self.max_sources:
            self._failures.popitem(last=False)
        return False

    def _prune_blocked(self, now: float) -> None:
        if len(self._blocked) > self.max_sources:
            for source, until in list(self._blocked.items()):
                if until <= now:
                    del self._blocked[source]
