"""`PeriodicService`: calls at start and every step; stopping waits for a call in progress."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from registry.server.periodic import PeriodicService


def test_calls_every_step_and_stop_waits_for_the_call_in_progress() -> None:
    clock = Clock()
    calls: list[float] = []
    pending: list[Deferred[None]] = []

    def call() -> Deferred[None] | None:
        calls.append(clock.seconds())
        if len(calls) == 3:
            pending.append(Deferred())
            return pending[0]
        return None

    service = PeriodicService(clock, 10.0, call)
    service.startService()
    assert calls == [0.0]
    clock.advance(10)
    clock.advance(10)
    assert calls == [0.0, 10.0, 20.0]
    stopped: list[Any] = []
    d = service.stopService()
    assert d is not None
    d.addCallback(stopped.append)
    assert stopped == []  # the third call has not finished
    pending[0].callback(None)
    assert len(stopped) == 1
    clock.advance(100)
    assert calls == [0.0, 10.0, 20.0]
    assert not service.running
