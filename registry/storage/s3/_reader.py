"""
A streamed S3 GET as a push producer.

The response's headers are in when the producer is made (so ``length`` is exact and a missing
object fails in ``reader()``); its body is only delivered once ``startProducing`` is called.
Until then Twisted keeps the connection paused, so nothing piles up in memory.  Back-pressure is
passed straight to the socket: when the consumer pauses this producer, the HTTP response's
transport stops reading, and TCP flow control slows S3 down.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from registry.storage.driver import StorageError
from registry.storage.producers import settle

_DONE = Failure(ResponseDone())


class _Body(Protocol):
    """Receives the response body and hands each chunk to the producer."""

    def __init__(self, producer: ResponseProducer) -> None:
        self._producer = producer

    def dataReceived(self, data: bytes) -> None:
        self._producer._received(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._producer._ended(reason)


@implementer(IBodyProducer, IPushProducer)
class ResponseProducer:
    """Writes an S3 response body of ``length`` bytes into a consumer, honouring pauses."""

    def __init__(self, response: IResponse, length: int, key: str) -> None:
        self.length = length
        self._response: IResponse | None = response
        self._key = key  # the object's key, as every S3 message names it
        self._protocol = _Body(self)
        self._consumer: IConsumer | None = None
        self._finished: Deferred[None] | None = None
        self._paused = False
        self._done = False
        self._written = 0
        # Bytes that arrived while paused (what Twisted had buffered before deliverBody), and
        # the end of the body if it came before they were written.
        self._pending: list[bytes] = []
        self._end: Failure | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        response, self._response = self._response, None
        if response is None:
            raise StorageError(f"reader for {self._key} already started")
        self._consumer = consumer
        finished: Deferred[None] = Deferred(lambda _: self.stopProducing())
        self._finished = finished
        response.deliverBody(self._protocol)
        # deliverBody resumes the transport as its last step: re-apply a pause that arrived
        # while buffered data was being delivered.
        if self._paused and not self._done:
            self._transport_call("pauseProducing")
        return finished

    def pauseProducing(self) -> None:
        self._paused = True
        self._transport_call("pauseProducing")

    def resumeProducing(self) -> None:
        self._paused = False
        while self._pending and not self._paused and not self._done:
            self._write(self._pending.pop(0))
        if self._pending or self._paused:
            return
        if self._end is not None:
            self._ended(self._end)
        else:
            self._transport_call("resumeProducing")

    def stopProducing(self) -> None:
        if self._done:
            return
        response, self._response = self._response, None
        if response is not None:
            # Never started: attach (with no consumer, so nothing is written) only to get hold
            # of the transport and close the connection instead of reading the body.
            response.deliverBody(self._protocol)
        self._transport_call("stopProducing")
        self._finish(Failure(CancelledError("S3 read stopped")))

    def _transport_call(self, name: str) -> None:
        transport: Any = self._protocol.transport
        if transport is not None and not self._done:
            getattr(transport, name)()

    def _received(self, data: bytes) -> None:
        if self._done or self._consumer is None:
            return
        if self._paused or self._pending:
            self._pending.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        assert self._consumer is not None
        self._written += len(data)
        # write() may re-enter pauseProducing (or stopProducing) synchronously.
        self._consumer.write(data)

    def _ended(self, reason: Failure) -> None:
        if self._done:
            return
        if self._pending:
            self._end = reason
            return
        complete = reason.check(ResponseDone)
        if complete and self._written == self.length:
            self._finish(None)
        else:
            error = StorageError(
                f"S3 read of {self._key} ended after {self._written} of "
                f"{self.length} bytes: {describe_end(reason)}"
            )
            self._finish(Failure(error))

    def _finish(self, failure: Failure | None) -> None:
        self._done = True
        self._protocol.transport = None
        finished, self._finished = self._finished, None
        settle(finished, failure)


def describe_end(reason: Failure) -> str:
    """Why a body ended, in words: Twisted wraps a cut connection in a `ResponseFailed` whose
    message is the list of its inner failures' reprs."""
    inner = getattr(reason.value, "reasons", None)
    if isinstance(inner, list):
        for failure in inner:
            if isinstance(failure, Failure) and (text := describe_end(failure)):
                return text
    return reason.getErrorMessage().strip() or type(reason.value).__name__
