"""Shared in-flight calls and the token cache, without sockets."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock

from registry.client._inflight import Inflight
from registry.client._tokens import TokenCache


def test_one_call_many_waiters_and_a_cancelled_one() -> None:
    """A cancelled waiter leaves; the call runs on and the others get its result."""
    inflight: Inflight[str, int] = Inflight()
    gate: Deferred[int] = Deferred()
    calls = []

    async def call() -> int:
        calls.append(1)
        return await gate

    first = ensureDeferred(inflight.run("k", call))
    second = ensureDeferred(inflight.run("k", call))
    third = ensureDeferred(inflight.run("k", call))
    second.cancel()
    failures: list[object] = []
    second.addErrback(lambda f: failures.append(f.trap(CancelledError)))
    gate.callback(7)
    assert calls == [1]
    assert failures == [CancelledError]
    assert first.result == 7 and third.result == 7
    assert inflight.started == 1


def test_failure_reaches_every_waiter_and_the_next_call_retries() -> None:
    inflight: Inflight[str, int] = Inflight()
    gate: Deferred[int] = Deferred()

    async def call() -> int:
        return await gate

    waiters = [ensureDeferred(inflight.run("k", call)) for _ in range(3)]
    gate.errback(ValueError("boom"))
    for waiter in waiters:
        waiter.addErrback(lambda f: f.trap(ValueError))
        assert waiter.called
    again = ensureDeferred(inflight.run("k", lambda: _value(5)))
    assert again.result == 5
    assert inflight.started == 2


async def _value(v: int) -> int:
    return v


def test_token_cache_expiry_and_invalidate() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    key = ("realm", "svc", "repository:a:pull")
    fetched = []

    async def fetch() -> tuple[str, int, str | None]:
        fetched.append(1)
        return f"t{len(fetched)}", 60, None

    assert ensureDeferred(cache.get(key, fetch)).result.value == "t1"
    clock.advance(59.9)
    assert ensureDeferred(cache.get(key, fetch)).result.value == "t1"
    cache.invalidate(key, "stale-value")  # someone else's old token: ignored
    assert ensureDeferred(cache.get(key, fetch)).result.value == "t1"
    cache.invalidate(key, "t1")
    assert ensureDeferred(cache.get(key, fetch)).result.value == "t2"
    clock.advance(60)
    assert ensureDeferred(cache.get(key, fetch)).result.value == "t3"
