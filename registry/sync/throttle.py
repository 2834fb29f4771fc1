"""
A bandwidth limit shared by every transfer of one sync: a token bucket in bytes.

Transfers do not wait inside a write: they ask `Throttle.debit` how long to pause after
passing some bytes on, and pause their producer (the remote's socket, or the local file
reader) for that long; and each waits for what the others owe before it starts
(`Throttle.ready`).  So the bucket never holds data, only a count, and a transfer whose
bytes arrive faster than the limit simply stops reading its socket now and then: TCP slows
the sender down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

# The smallest read a throttled body is cut to, however low the rate (below it, the thread
# hops of a storage reader would cost more than the bytes).
MIN_CHUNK = 16 * 1024


class Throttle:
    """``rate`` bytes per second (0: no limit), with a burst of one second's worth."""

    def __init__(self, clock: IReactorTime, rate: int) -> None:
        self.clock = clock
        self.rate = rate
        self._allowance = float(rate)
        self._updated = clock.seconds()
        # Told of every amount passed on, limit or not: the run in progress counts them
        # (its ``bytes_transferred``, which moves while a large blob is still in flight).
        self.counted: Callable[[int], None] | None = None

    def debit(self, amount: int) -> float:
        """Take ``amount`` bytes; the seconds to pause before sending more (0: go on)."""
        if self.counted is not None:
            self.counted(amount)
        if self.rate <= 0:
            return 0.0
        now = self.clock.seconds()
        self._allowance = min(float(self.rate), self._allowance + (now - self._updated) * self.rate)
        self._updated = now
        self._allowance -= amount
        if self._allowance >= 0:
            return 0.0
        return -self._allowance / self.rate

    def owed(self) -> float:
        """The seconds until the bytes passed so far are within the rate (0: none owed)."""
        if self.rate <= 0:
            return 0.0
        elapsed = self.clock.seconds() - self._updated
        allowance = min(float(self.rate), self._allowance + elapsed * self.rate)
        return max(0.0, -allowance / self.rate)

    async def ready(self) -> None:
        """Wait until the bytes passed so far are within the rate: each transfer starts only
        then.  A small blob passes in one read, before a pause could hold it back; one after
        the other, such blobs went at the network's speed whatever the limit."""
        delay = self.owed()
        if delay > 0:
            await deferLater(self.clock, delay, lambda: None)


class PausingGate:
    """Pauses a push producer for the throttle's delays, apart from any other pause (the
    consumer's back-pressure): the producer runs only while neither holds it."""

    def __init__(self, throttle: Throttle, producer: IPushProducer) -> None:
        self._throttle = throttle
        self._producer = producer
        self._held_by_throttle = False
        self._held_by_consumer = False
        self._timer: Any = None

    def passed(self, amount: int) -> None:
        delay = self._throttle.debit(amount)
        if delay > 0 and not self._held_by_throttle:
            self._held_by_throttle = True
            if not self._held_by_consumer:
                self._producer.pauseProducing()
            self._timer = self._throttle.clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        self._held_by_throttle = False
        if not self._held_by_consumer:
            self._producer.resumeProducing()

    def pause(self) -> None:
        if not self._held_by_consumer:
            self._held_by_consumer = True
            if not self._held_by_throttle:
                self._producer.pauseProducing()

    def resume(self) -> None:
        if self._held_by_consumer:
            self._held_by_consumer = False
            if not self._held_by_throttle:
                self._producer.resumeProducing()

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@implementer(IBodyProducer, IPushProducer)
class ThrottledBody:
    """An `IBodyProducer` that passes another's bytes on at most at the throttle's rate.

    The inner producer must honour pause/resume (the storage readers do); the outer
    consumer's back-pressure and the throttle's pauses are kept apart by a `PausingGate`.
    """

    def __init__(self, inner: IBodyProducer, throttle: Throttle) -> None:
        self._inner = inner
        self._throttle = throttle
        self.length = getattr(inner, "length", UNKNOWN_LENGTH)
        limit = getattr(inner, "limit_chunk_size", None)
        if throttle.rate > 0 and callable(limit):
            # A chunk is passed on whole before the throttle can pause its reader (a storage
            # reader's are 2 MiB): at most a sixteenth of a second's worth each, so that the
            # transfers sharing the budget stay near its one-second burst together.
            limit(max(MIN_CHUNK, throttle.rate // 16))
        self._gate: PausingGate | None = None
        self._done: Deferred[None] | None = None
        self.sent = 0

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._gate = PausingGate(self._throttle, self._inner)
        # Cancelled by the HTTP client when its request is (a stop of the registry): the
        # reader and the throttle's timer stop too, instead of writing into a request that
        # takes no more bytes when the timer fires.
        self._done = Deferred(lambda _: self.stopProducing())
        relay = _CountingConsumer(consumer, self)
        inner_done: Deferred[None] = self._inner.startProducing(relay)
        inner_done.addBoth(self._inner_finished)
        return self._done

    def _inner_finished(self, result: object) -> None:
        if self._gate is not None:
            self._gate.cancel()
        if self._done is not None and not self._done.called:
            if isinstance(result, Failure):
                self._done.errback(result)
            else:
                self._done.callback(None)
        # Else the body was complete already; a later stop of the reader is no failure.

    def _passed(self, amount: int) -> None:
        self.sent += amount
        if isinstance(self.length, int) and self.sent >= self.length:
            # Counted and owed all the same (the next transfer waits for it: `ready`): a
            # blob read in one chunk was neither.
            self._throttle.debit(amount)
            # Every byte is out: the body is done now, not when the (maybe paused) reader
            # notices its end.  The remote may answer at once, and the HTTP client must not
            # see the body fail after that answer.
            self._inner_finished(None)
            # Let the reader reach its end and close its file even if a pause holds it: it
            # has nothing left to write.
            self._inner.resumeProducing()
            return
        if self._gate is not None:
            self._gate.passed(amount)

    def pauseProducing(self) -> None:
        if self._gate is not None:
            self._gate.pause()

    def resumeProducing(self) -> None:
        if self._gate is not None:
            self._gate.resume()

    def stopProducing(self) -> None:
        if self._gate is not None:
            self._gate.cancel()
        self._inner.stopProducing()


@implementer(IConsumer)
class _CountingConsumer:
    """Between the inner producer and the real consumer: counts bytes, and registers the
    throttled body (not the inner producer) with the consumer, so its pauses go through the
    gate."""

    def __init__(self, consumer: IConsumer, body: ThrottledBody) -> None:
        self._consumer = consumer
        self._body = body

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(self._body, True)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._consumer.write(data)
        self._body._passed(len(data))
