"""
Slowing down password guessing, per source address.

After ``max_failures`` failed logins within ``window`` seconds (counted from the first of
them), a source gets 429 TOOMANYREQUESTS for ``cooldown`` seconds without its credentials
being checked at all (which also keeps a guesser from keeping the bcrypt threads busy).
Successful logins do not clear the record, or one valid account would let a guesser reset the
counter between attempts on another.

Memory is bounded: at most ``max_sources`` sources are tracked, counting and cooling down
together, the least recently failing forgotten first.  Each costs one small tuple beside its
key, with the fingerprints of its last few failed credentials (32 bytes at most), rather than
a timestamp per failure.  The price is a fixed window from a source's first failure rather
than a sliding one: failures straddling two windows can add up to almost twice
``max_failures`` before a refusal.

The same credentials failing again count once per window: container engines send their
stored credentials with every request and retry, so one stale password would otherwise lock
its whole address (a CI machine, a NAT) out.

Checks in flight count too (`registry.auth.controllers`): a source may have only as many
distinct credentials being checked at once as it has failures left, so a guesser cannot get
hundreds of guesses checked by sending them all before the first one failed.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime

# The count in an entry while the source is cooling down; the time is then when it ends.
_BLOCKED = -1
# Credentials that failed are told apart by a keyed hash of this many bytes (the key is this
# process's own: nothing stored can be checked against a password elsewhere), the last
# `_REMEMBERED` of them per source.
_FINGERPRINT = 8
_REMEMBERED = 4
_KEY = os.urandom(16)


def fingerprint(attempt: bytes) -> bytes:
    return hashlib.blake2b(attempt, key=_KEY, digest_size=_FINGERPRINT).digest()


@attrs.define
class FailureLimiter:
    clock: IReactorTime
    max_failures: int = 10
    window: float = 60.0
    cooldown: float = 60.0
    max_sources: int = 32768
    # source -> (since, count, seen): `count` failures since `since`, `seen` the fingerprints
    # of the last credentials that failed; or (until, _BLOCKED, b"").
    _sources: OrderedDict[str, tuple[float, int, bytes]] = attrs.field(
        factory=OrderedDict, init=False
    )

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def tracked(self) -> int:
        """How many sources are remembered (counting or cooling down); never over the cap."""
        return len(self._sources)

    def retry_after(self, source: str) -> int | None:
        """Seconds until ``source`` may try again, or None when it is not blocked."""
        entry = self._sources.get(source)
        if entry is None or entry[1] != _BLOCKED:
            return None
        remaining = entry[0] - self.clock.seconds()
        if remaining <= 0:
            del self._sources[source]
            return None
        return max(1, math.ceil(remaining))

    def room(self, source: str) -> int:
        """How many more failures ``source`` may make before it is refused (0: refused)."""
        entry = self._sources.get(source)
        if entry is None:
            return self.max_failures
        if entry[1] == _BLOCKED:  # cooling down, or a cool-down that has ended
            return 0 if entry[0] > self.clock.seconds() else self.max_failures
        if self.clock.seconds() - entry[0] >= self.window:
            return self.max_failures
        return max(0, self.max_failures - entry[1])

    def record_failure(self, source: str, attempt: bytes = b"") -> bool:
        """
        Count a failed login; True when this one starts a cool-down.  ``attempt`` (the
        credentials as sent) counts once per window: container engines send their stored
        credentials again with every request and retry, so one stale password would lock its
        whole address out; a guesser's attempts are all different and all count.
        """
        if not self.enabled:
            return False
        now = self.clock.seconds()
        entry = self._sources.pop(source, None)  # re-inserted below: now the newest
        started = False
        mark = fingerprint(attempt) if attempt else b""
        if entry is not None and entry[1] == _BLOCKED and entry[0] > now:
            value = entry  # still cooling down (checked concurrently): stays so
        elif entry is None or entry[1] == _BLOCKED or now - entry[0] >= self.window:
            value = (now, 1, mark)
        elif mark and _seen(entry[2], mark):
            value = entry  # the same credentials again: counted already
        else:
            seen = (entry[2] + mark)[-_FINGERPRINT * _REMEMBERED :]
            value = (entry[0], entry[1] + 1, seen)
        if value[1] != _BLOCKED and value[1] >= self.max_failures:
            value = (now + self.cooldown, _BLOCKED, b"")
            started = True
        self._sources[source] = value
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        return started


def _seen(seen: bytes, mark: bytes) -> bool:
    return any(seen[i : i + _FINGERPRINT] == mark for i in range(0, len(seen), _FINGERPRINT))
