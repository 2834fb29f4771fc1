"""
The tag-date index on its own: a background read is joined by a view asking meanwhile (one
``stat`` per tag, not two), and a repository known already is not read again.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from registry.storage import layout
from registry.storage.memory import MemoryDriver
from registry.ui._tagtimes import TagTimes

NAME = "team/many"
T = TypeVar("T")


def settle(clock: Clock, d: Deferred[T]) -> T:
    """Run ``clock``'s zero-delay calls (the background read's turns) until ``d`` fired: the
    memory driver answers at once, so nothing else is waited for."""
    for _ in range(10_000):
        if d.called:
            break
        clock.advance(0)
    results: list[T] = []
    d.addCallback(results.append)
    assert results, "never fired"
    return results[0]


class GatedDriver(MemoryDriver):
    """A memory driver whose tag listing waits for the test, and that counts stats."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: Deferred[None] = Deferred()
        self.stats = 0

    async def list(self, path: str) -> list[str]:
        if path == layout.tags_dir(NAME):
            await self.gate
        return await super().list(path)

    async def stat(self, path: str) -> Any:
        self.stats += 1
        return await super().stat(path)


def test_a_view_joins_the_background_read() -> None:
    driver = GatedDriver()
    clock = Clock()
    for i in range(600):
        settle(
            clock,
            Deferred.fromCoroutine(
                driver.put_content(layout.tag_current_link(NAME, f"t{i:03d}"), b"sha256:0")
            ),
        )
    times = TagTimes(driver, clock, warm_pause_every=100)
    times.warm([NAME])
    view = Deferred.fromCoroutine(times.newest_first(NAME))
    clock.advance(0)
    assert not view.called
    assert times.known == 0
    driver.gate.callback(None)
    ordered, dates = settle(clock, view)
    assert sorted(ordered) == [f"t{i:03d}" for i in range(600)]
    assert len(dates) == 600
    assert driver.stats == 600
    assert times.known == 1
    # Known now: warming it again reads nothing.
    times.warm([NAME])
    settle(clock, Deferred.fromCoroutine(times.newest_first(NAME)))
    assert driver.stats == 600
