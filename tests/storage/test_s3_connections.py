"""`WatchedBody`: an S3 request body that Twisted stopping (a lost connection, an early answer)
leaves unfired, as `IBodyProducer` asks, while its caller's cancel still cancels.  The
behaviour on the wire is in tests/storage/test_s3_faults.py."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from registry.storage.producers import BytesProducer, CollectingConsumer
from registry.storage.s3._connections import WatchedBody


class _Paused(BytesProducer):
    """Writes nothing until resumed: a body still being sent."""

    def _produce(self) -> None:
        if self._consumer is not None and not getattr(self, "_go", False):
            return
        super()._produce()

    def go(self) -> None:
        self._go = True
        self._produce()


def _results(deferred: Any) -> list[object]:
    results: list[object] = []
    deferred.addBoth(results.append)
    return results


def test_a_body_stopped_by_twisted_never_fires() -> None:
    body = WatchedBody(_Paused(b"x" * 10), idle_answer=True)
    results = _results(body.startProducing(CollectingConsumer()))
    body.stopProducing()
    assert results == []


def test_a_cancelled_body_fails_with_a_cancel() -> None:
    body = WatchedBody(_Paused(b"x" * 10), idle_answer=True)
    sending = body.startProducing(CollectingConsumer())
    results = _results(sending)
    sending.cancel()
    [failure] = results
    assert isinstance(failure, Failure) and failure.check(CancelledError)


def test_a_body_sent_whole_fires_and_reports_each_write() -> None:
    consumer = CollectingConsumer()
    moved: list[str] = []
    inner = _Paused(b"x" * 10, chunk_size=4)
    body = WatchedBody(inner, idle_answer=False)
    body.watch(lambda: moved.append("moved"), lambda: moved.append("sent"))
    results = _results(body.startProducing(consumer))
    inner.go()
    assert results == [None]
    assert consumer.value() == b"x" * 10
    assert moved == ["moved", "moved", "moved", "sent"]


@pytest.mark.parametrize("length", [0, 5])
def test_a_body_keeps_its_length(length: int) -> None:
    assert WatchedBody(BytesProducer(b"y" * length), idle_answer=False).length == length
