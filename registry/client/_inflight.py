"""
One in-flight call per key, however many callers wait for it.

Each waiter gets its own Deferred: cancelling one waiter (its client went away) drops only that
waiter, while the call itself runs on for the others and its result is still recorded by the
call.  Per instance, never a module global, so two clients never share state.

The keys are often chosen by clients (digests, names), so the number of calls in flight at once
is capped: a new key beyond ``max_keys`` raises `Overloaded` instead of growing the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Overloaded(Exception):
    """Too many distinct calls in flight: the caller should answer "try again later"."""


DEFAULT_MAX_KEYS = 4096


class Inflight(Generic[K, V]):
    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._waiting: dict[K, list[Deferred[V]]] = {}
        self.max_keys = max_keys
        self.started = 0

    def __len__(self) -> int:
        return len(self._waiting)

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        mine: Deferred[V] = Deferred(lambda d: self._forget(key, d))
        waiters = self._waiting.get(key)
        if waiters is None:
            if len(self._waiting) >= self.max_keys:
                raise Overloaded(f"{len(self._waiting)} calls in flight")
            self._waiting[key] = [mine]
            self.started += 1
            Deferred.fromCoroutine(self._call(key, call))
        else:
            waiters.append(mine)
        return await mine

    def _forget(self, key: K, d: Deferred[V]) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and d in waiters:
            waiters.remove(d)

    async def _call(self, key: K, call: Callable[[], Awaitable[V]]) -> None:
        try:
            result = await call()
        except Exception as exc:  # CancelledError included: every waiter sees the same outcome
            for waiter in self._waiting.pop(key, []):
                waiter.errback(exc)
            return
        for waiter in self._waiting.pop(key, []):
            waiter.callback(result)
