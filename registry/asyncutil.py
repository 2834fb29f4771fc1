"""Small async helpers shared across the registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList

T = TypeVar("T")
U = TypeVar("U")


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


async def bounded_map(func: Callable[[U], Awaitable[T]], items: Iterable[U], limit: int) -> list[T]:
    """
    ``func`` over ``items``, at most ``limit`` at a time, results in the order of ``items``.

    The first failure is raised as itself (not wrapped in `FirstError`); no item starts after
    it, and those already running finish first.  ``limit`` workers take items in turn, so a
    million items cost ``limit`` Deferreds, not a million.
    """
    ordered = list(items)
    results: list[T | None] = [None] * len(ordered)
    pending = iter(enumerate(ordered))
    failed: list[BaseException] = []

    async def worker() -> None:
        for position, item in pending:
            if failed:
                return
            try:
                results[position] = await func(item)
            except BaseException as exc:
                failed.append(exc)
                raise

    workers = min(len(ordered), max(1, limit))
    # DeferredList, not gatherResults: wait for the calls still running after a failure, so
    # that none outlives the caller's error handling.
    await DeferredList(
        [Deferred.fromCoroutine(worker()) for _ in range(workers)], consumeErrors=True
    )
    if failed:
        raise failed[0]
    return results  # type: ignore[return-value]


async def gather(*coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run coroutines concurrently, results in order; the first failure is raised as itself."""

    async def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return await coroutine

    return await bounded_map(run, coroutines, len(coroutines))


async def within_time(work: Deferred[Any], within: float, clock: Any) -> bool:
    """
    Wait for ``work`` to end, at most ``within`` seconds; whether it ended.  ``work`` is not
    cancelled and its result not taken: it goes on, and its callbacks run when it ends (an
    answer that reports on storage waits a moment for it, then answers with what is known).
    """
    ended: Deferred[bool] = Deferred()

    def end(done: bool) -> None:
        if not ended.called:
            ended.callback(done)

    def passthrough(result: object) -> object:
        end(True)
        return result

    timer = clock.callLater(within, end, False)
    work.addBoth(passthrough)
    done = await ended
    if timer.active():
        timer.cancel()
    return done
