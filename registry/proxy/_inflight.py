"""
One in-flight call per key, however many callers wait for it.

Each waiter gets its own Deferred: cancelling one waiter (its client went away) drops only that
waiter, while the call itself runs on for the others and its result is still recorded by the
call.  Per instance, never a module global, so two clients never share state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Inflight(Generic[K, V]):
    def __init__(self) -> None:
        self._waiting: dict[K, list[Deferred[V]]] = {}
        self.started = 0

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        mine: Deferred[V] = Deferred(lambda d: self._forget(key, d))
        waiters = self._waiting.get(key)
        if waiters is None:
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
