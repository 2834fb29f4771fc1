"""
A table whose keys clients choose, kept to a fixed size and a maximum age.

The pull-through cache remembers things per repository name, tag or token scope, and every one
of those is chosen by whoever sends requests: a table that only grows would let a client grow
the process's memory by asking for distinct names.  `BoundedMap` drops the least recently used
entry beyond ``max_entries`` and treats an entry older than its expiry as absent (expired
entries are also swept out now and then, so they do not sit there until asked for again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """At most ``max_entries`` entries, each forgotten at its expiry (``max_age`` seconds after
    it was put, unless `put` names another time); reading an entry makes it recently used."""

    def __init__(self, clock: IReactorTime, max_entries: int, max_age: float | None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self.max_entries = max_entries
        self.max_age = max_age
        self._entries: OrderedDict[K, tuple[V, float | None]] = OrderedDict()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and self._clock.seconds() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, expires_at: float | None = None) -> None:
        now = self._clock.seconds()
        if expires_at is None and self.max_age is not None:
            expires_at = now + self.max_age
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        self._sweep(now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return entry[0] if entry is not None else None

    def clear(self) -> None:
        self._entries.clear()

    def _sweep(self, now: float) -> None:
        """Drop expired entries, at most once a second: each sweep walks the whole table."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        expired = [k for k, (_, at) in self._entries.items() if at is not None and now >= at]
        for key in expired:
            del self._entries[key]
