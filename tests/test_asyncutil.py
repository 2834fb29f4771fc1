"""bounded_map and gather: order, the concurrency bound, and failures raised as themselves."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from registry.asyncutil import bounded_map, gather


class Gates:
    """Calls that finish when the test opens their gate; counts how many run at once."""

    def __init__(self) -> None:
        self.waiting: dict[int, Deferred[None]] = {}
        self.running = 0
        self.most = 0
        self.started: list[int] = []

    async def call(self, item: int) -> int:
        self.started.append(item)
        self.running += 1
        self.most = max(self.most, self.running)
        gate: Deferred[None] = Deferred()
        self.waiting[item] = gate
        try:
            await gate
        finally:
            self.running -= 1
        if item < 0:
            raise ValueError(item)
        return item * 10

    def open(self, item: int) -> None:
        self.waiting.pop(item).callback(None)


def test_at_most_limit_at_a_time_results_in_order() -> None:
    gates = Gates()
    done = Deferred.fromCoroutine(bounded_map(gates.call, range(5), 2))
    assert gates.started == [0, 1]
    gates.open(1)  # finishing out of order frees a slot for the next item
    assert gates.started == [0, 1, 2]
    for item in (2, 0, 3, 4):
        gates.open(item)
    assert done.result == [0, 10, 20, 30, 40]
    assert gates.most == 2


def test_the_first_failure_is_raised_as_itself_and_no_item_starts_after_it() -> None:
    gates = Gates()
    done = Deferred.fromCoroutine(bounded_map(gates.call, [1, -2, 3, 4], 2))
    gates.open(-2)
    assert gates.started == [1, -2]  # nothing new starts once one failed
    assert not done.called  # the running call finishes first
    gates.open(1)
    failures: list[Failure] = []
    done.addErrback(failures.append)
    assert failures[0].type is ValueError  # not FirstError


def test_nothing_to_do() -> None:
    assert Deferred.fromCoroutine(bounded_map(Gates().call, [], 4)).result == []


def test_gather_runs_all_at_once() -> None:
    gates = Gates()
    done = Deferred.fromCoroutine(gather(gates.call(1), gates.call(2), gates.call(3)))
    assert gates.most == 3
    for item in (3, 1, 2):
        gates.open(item)
    assert done.result == [10, 20, 30]
