"""The failed-login limiter on an injected clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from registry.auth.ratelimit import FailureLimiter


def test_blocks_after_max_failures_within_window_then_cools_down() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=3, window=60, cooldown=30)
    assert not limiter.record_failure("a")
    clock.advance(10)
    assert not limiter.record_failure("a")
    assert limiter.retry_after("a") is None
    assert limiter.record_failure("a")  # the third within 60 s
    assert limiter.retry_after("a") == 30
    assert limiter.retry_after("b") is None  # per source
    clock.advance(29.5)
    assert limiter.retry_after("a") == 1
    clock.advance(1)
    assert limiter.retry_after("a") is None


def test_old_failures_age_out() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=3, window=60, cooldown=30)
    for _ in range(2):
        limiter.record_failure("a")
        clock.advance(40)
    assert not limiter.record_failure("a")  # the first one is older than 60 s


def test_memory_is_bounded_and_disabled_limiter_never_blocks() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=5, max_sources=100)
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._failures) <= 100
    off = FailureLimiter(clock, max_failures=0)
    assert not any(off.record_failure("a") for _ in range(50))
    assert off.retry_after("a") is None
