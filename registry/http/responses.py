"""
Writing responses: headers, small bodies, OCI errors, and streamed bodies from producers.

Handlers call these instead of touching ``request.write``, so every response sets an exact
``Content-Length`` (HEAD included; 204 and 304 carry none) and errors always take the OCI
envelope.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet import task
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.web.iweb import IBodyProducer, IRequest
from zope.interface import implementer

from registry.api.errors import RegistryError
from registry.http import twisted_internals
from registry.storage.producers import IChunkLimit

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")

# What an HTTP/2 download reads at a time: a client with many streams that never reads holds
# about two of these per stream (one queued on the stream, one read ahead) rather than two of
# the producer's 2 MiB chunks.  Much smaller reads slow HTTP/2 pulls down (a thread hop and a
# reactor turn each); this size does not.
HTTP2_CHUNK_SIZE = 256 * 1024
# The most one HTTP/2 stream's response has queued in its connection, whatever the client's
# flow-control window: twisted.web pauses a stream's producer only when that window runs out,
# so a client announcing a huge window and not reading had whole blobs queued per stream.
# Four reads: the next is asked for once one read's room is free, so a client reading at
# full speed drains a read between two looks (`_H2_POLL_FIRST`) and never waits for one (with
# two reads, pulls were about a fifth slower).
HTTP2_STREAM_QUEUE = 4 * HTTP2_CHUNK_SIZE
# How often a stream paused for its queue looks whether it drained: twisted.web says nothing
# when its sending loop takes from a stream's queue, so it is polled, and only while paused.
# The first look comes soon (a client reading drains a read in a few ms); each look that
# finds the queue no shorter waits twice as long, up to the last figure, so a stream whose
# client stopped reading costs about ten looks a second.
_H2_POLL_FIRST = 0.002
_H2_POLL_LAST = 0.1


def set_headers(request: IRequest, headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        request.setHeader(name, value)


def empty(request: IRequest, status: int, headers: Mapping[str, str] | None = None) -> bytes:
    """A response without a body: ``Content-Length: 0``, except on a 204, which must not carry
    one (RFC 9110 section 8.6; twisted.web adds none to a 204 either)."""
    request.setResponseCode(status)
    set_headers(request, headers or {})
    if status != 204:
        request.setHeader("Content-Length", "0")
    return b""


def not_modified(request: IRequest, headers: Mapping[str, str]) -> bytes:
    """``304 Not Modified``: the validators, no body, and no ``Content-Length`` (it would
    claim a length for the representation the client holds)."""
    request.setResponseCode(304)
    set_headers(request, headers)
    return b""


def body(
    request: IRequest,
    status: int,
    content: bytes,
    content_type: str,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    request.setResponseCode(status)
    set_headers(request, headers or {})
    request.setHeader("Content-Type", content_type)
    request.setHeader("Content-Length", str(len(content)))
    return content


def json_body(
    request: IRequest,
    status: int,
    value: Any,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> bytes:
    encoded = json.dumps(value, separators=(",", ":"), sort_keys=False).encode()
    return body(request, status, encoded, content_type, headers)


def error(request: IRequest, err: RegistryError) -> bytes:
    """The OCI error envelope for ``err`` (HEAD gets the status and headers only)."""
    return json_body(request, err.status, err.to_json(), err.headers)


class ResponseInterrupted(Exception):
    """
    A streamed body failed after the status line and headers went out (the cause is
    chained).  No error can be answered any more: the connection has been dropped, so the
    client sees a short body rather than a complete wrong one.
    """


def _abort(request: IRequest) -> None:
    channel: Any = getattr(request, "channel", None)
    if channel is None:
        return
    # An HTTP/2 stream aborts itself (a RST_STREAM); HTTP/1.x drops the connection.
    abort = getattr(channel, "abortConnection", None)
    if abort is None and channel.transport is not None:
        abort = channel.transport.abortConnection
    if abort is not None:
        abort()


@implementer(IConsumer, IPushProducer)
class _H2Bounded:
    """
    Between a body's producer and an HTTP/2 stream: the producer writes here and the stream
    pauses and resumes it through here, and it is paused for either of two reasons, until
    neither holds -- the stream's flow-control window ran out (twisted.web's `H2Stream` says
    so), or the stream's queue in its connection (`twisted_internals.h2_queued`) has no room
    for another read within `HTTP2_STREAM_QUEUE`.  Each releases only its own pause.
    """

    def __init__(self, request: IRequest, producer: IBodyProducer, clock: IReactorTime) -> None:
        self._request = request
        self._inner = producer
        self._stream: object = getattr(request, "channel", None)
        self._clock = clock
        self._flow_paused = False  # by the stream: the client's window is used up
        self._queue_full = False  # by us: the stream's queue holds enough
        self._poll: IDelayedCall | None = None
        self._interval = _H2_POLL_FIRST
        self._last_queued = 0
        self._stopped = False

    # IConsumer, for the producer.
    def write(self, data: bytes) -> None:
        self._request.write(data)
        if self._queue_full or self._stopped:
            return
        queued = twisted_internals.h2_queued(self._stream)
        if queued is None or queued <= HTTP2_STREAM_QUEUE - HTTP2_CHUNK_SIZE:
            return
        self._queue_full = True
        if not self._flow_paused:
            self._inner.pauseProducing()
        self._last_queued = queued
        self._interval = _H2_POLL_FIRST
        self._poll = self._clock.callLater(self._interval, self._look)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def _look(self) -> None:
        self._poll = None
        if self._stopped:
            return
        queued = twisted_internals.h2_queued(self._stream)
        if queued is None:
            return  # the stream is gone (reset, connection lost): the handler is cancelled
        if queued > HTTP2_STREAM_QUEUE - HTTP2_CHUNK_SIZE:
            if queued < self._last_queued:
                self._interval = _H2_POLL_FIRST
            else:
                self._interval = min(self._interval * 2, _H2_POLL_LAST)
            self._last_queued = queued
            self._poll = self._clock.callLater(self._interval, self._look)
            return
        self._queue_full = False
        if not self._flow_paused:
            self._inner.resumeProducing()

    # IPushProducer, for the stream.
    def pauseProducing(self) -> None:
        if self._flow_paused or self._stopped:
            return
        self._flow_paused = True
        if not self._queue_full:
            self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._flow_paused or self._stopped:
            return
        self._flow_paused = False
        if not self._queue_full:
            self._inner.resumeProducing()

    def stopProducing(self) -> None:
        self.cancel()
        self._inner.stopProducing()

    def cancel(self) -> None:
        """Stop looking at the queue (the body ended, or was stopped)."""
        self._stopped = True
        poll, self._poll = self._poll, None
        if poll is not None and poll.active():
            poll.cancel()

    async def drained(self) -> None:
        """
        Once the stream's queue went out to the TLS connection (or the stream is gone), so
        the request is finished, and its access line written, only then: a stream reset
        before is logged ``complete=false`` with what went out (`RegistryRequest`).
        """
        interval = _H2_POLL_FIRST
        last = twisted_internals.h2_queued(self._stream)
        while last:
            await task.deferLater(self._clock, interval)  # cancelled with the handler
            queued = twisted_internals.h2_queued(self._stream)
            interval = _H2_POLL_FIRST if queued is None or queued < last else interval * 2
            interval = min(interval, _H2_POLL_LAST)
            last = queued


async def stream(request: IRequest, producer: IBodyProducer) -> None:
    """
    Write everything ``producer`` makes to the response with back-pressure.  If the client
    goes away, Klein cancels the handler: the producer is stopped and its file closed.  If
    the producer fails (a read error, an upstream that broke off), the connection is dropped
    and `ResponseInterrupted` raised.
    """
    if request.method == b"HEAD":
        producer.stopProducing()
        return
    raise_limit = getattr(request, "raise_send_limit", None)
    if raise_limit is not None:
        raise_limit()
    channel = getattr(request, "channel", None)
    bounded: _H2Bounded | None = None
    consumer: IConsumer = request  # type: ignore[assignment]
    registered: object = producer
    if twisted_internals.h2_connection(channel) is not None:
        # HTTP/2: smaller reads, and what the stream holds queued is bounded (`_H2Bounded`).
        # (No sendfile here: the body is framed, `registry.http.sendfile` sends HTTP/1 only.)
        if IChunkLimit.providedBy(producer):
            producer.limit_chunk_size(HTTP2_CHUNK_SIZE)
        site: Any = getattr(request, "site", None)
        clock: Any = getattr(site, "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock
        bounded = _H2Bounded(request, producer, clock)
        consumer = registered = bounded
    request.registerProducer(registered, True)  # type: ignore[attr-defined]
    try:
        await producer.startProducing(consumer)
        if bounded is not None:
            bounded.cancel()
            await bounded.drained()
    except CancelledError:
        if bounded is not None:
            bounded.cancel()
        producer.stopProducing()
        raise
    except Exception as exc:
        if bounded is not None:
            bounded.cancel()
        _abort(request)
        raise ResponseInterrupted(str(exc)) from exc
    finally:
        # A request whose client left has no channel any more (an HTTP/2 stream reset by its
        # client, say): nothing to unregister from, and the handler sees CancelledError.
        channel = getattr(request, "channel", None)
        if not request.finished and channel is not None:  # type: ignore[attr-defined]
            request.unregisterProducer()  # type: ignore[attr-defined]
