"""Small async helpers shared across the registry."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def shielded(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """
    Run ``coro`` to completion even if whoever awaits the result is cancelled.

    Klein cancels a handler when its client disconnects; work that must not stop half-way
    (committing an upload, filling the cache) runs shielded, so the cancellation only stops the
    waiting, never the work.
    """
    work = Deferred.fromCoroutine(coro)
    waiter: Deferred[T] = Deferred()

    def deliver(result: Any) -> None:
        if not waiter.called:
            waiter.callback(result)
        elif hasattr(result, "trap"):
            return None  # the waiter was cancelled; the failure was logged by the work itself
        return None

    work.addBoth(deliver)
    return waiter
