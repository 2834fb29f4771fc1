"""
`ObservedProducer` on its own, with a stub producer and consumer (no reactor): an observer that
asks to wait (a hashing queue over its high-water mark) pauses the producer, and neither the
observer nor the consumer can resume it while the other still wants it paused.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.proxy.fill import ObservedProducer


class StubProducer:
    """Writes what the test says; records pause and resume."""

    length = 10

    def __init__(self) -> None:
        self.paused = False
        self.consumer: IConsumer | None = None
        self.done: Deferred[None] = Deferred()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        return self.done

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


@implementer(IConsumer)
class StubConsumer:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data.append(data)


def observed() -> tuple[StubProducer, ObservedProducer, list[Deferred[None]], list[object]]:
    inner = StubProducer()
    waits: list[Deferred[None]] = []
    ends: list[object] = []

    def on_write(data: bytes) -> Deferred[None] | None:
        return waits.pop(0) if waits else None

    def on_end(failure: Failure | None) -> None:
        ends.append(failure)

    outer = ObservedProducer(inner, on_write, on_end)  # type: ignore[arg-type]
    outer.startProducing(StubConsumer())
    return inner, outer, waits, ends


def write(inner: StubProducer, data: bytes) -> None:
    assert inner.consumer is not None
    inner.consumer.write(data)


def test_a_full_observer_pauses_until_it_has_room() -> None:
    inner, _outer, waits, _ends = observed()
    room: Deferred[None] = Deferred()
    waits.append(room)
    write(inner, b"a")
    assert inner.paused
    room.callback(None)
    assert not inner.paused


def test_the_consumer_resuming_does_not_override_the_observer() -> None:
    inner, outer, waits, _ends = observed()
    room: Deferred[None] = Deferred()
    waits.append(room)
    write(inner, b"a")
    outer.pauseProducing()
    outer.resumeProducing()  # the consumer has room; the observer does not yet
    assert inner.paused
    room.callback(None)
    assert not inner.paused


def test_the_observer_having_room_does_not_override_the_consumer() -> None:
    inner, outer, waits, _ends = observed()
    room: Deferred[None] = Deferred()
    waits.append(room)
    write(inner, b"a")
    outer.pauseProducing()
    room.callback(None)  # the observer has room; the consumer does not yet
    assert inner.paused
    outer.resumeProducing()
    assert not inner.paused


def test_end_is_reported_once() -> None:
    inner, outer, _waits, ends = observed()
    inner.done.callback(None)
    outer.stopProducing()
    assert ends == [None]
