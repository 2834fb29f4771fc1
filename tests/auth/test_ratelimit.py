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
        assert limiter.tracked() <= 100
    assert limiter.tracked() == 100
    off = FailureLimiter(clock, max_failures=0)
    assert not any(off.record_failure("a") for _ in range(50))
    assert off.retry_after("a") is None


def test_the_table_holds_at_most_the_cap_and_forgets_the_least_recently_failing() -> None:
    """Sources cooling down and sources counting share one bounded table: filling it with
    new sources forgets the oldest first (a cool-down included), never a recent one."""
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=3, window=60, cooldown=600, max_sources=4)
    assert [limiter.record_failure("blocked") for _ in range(3)] == [False, False, True]
    assert limiter.retry_after("blocked") == 600
    for name in ("a", "b", "c"):
        clock.advance(1)
        assert not limiter.record_failure(name)
    assert limiter.tracked() == 4
    clock.advance(1)
    assert not limiter.record_failure("a")  # "a" (two failures) is the most recent again
    assert not limiter.record_failure("d")  # a fifth source: "blocked", the oldest, goes
    assert limiter.tracked() == 4
    assert limiter.retry_after("blocked") is None
    assert not limiter.record_failure("e")  # then "b", the oldest now; not "a"
    assert limiter.tracked() == 4
    assert limiter.record_failure("a")  # "a" kept its count: its third failure blocks it
    assert not limiter.record_failure("b")  # "b" was forgotten: it starts again from one
    assert not limiter.record_failure("b")
    assert limiter.tracked() == 4


def test_the_default_cap_keeps_a_full_table_small() -> None:
    """32,768 sources (about 7 MiB per worker), down from 65,536 deques (about 75 MiB)."""
    clock = Clock()
    limiter = FailureLimiter(clock)
    assert limiter.max_sources == 32768
    for i in range(limiter.max_sources + 10):
        limiter.record_failure(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64")
    assert limiter.tracked() == limiter.max_sources
