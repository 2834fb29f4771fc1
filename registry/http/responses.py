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

from twisted.internet.defer import CancelledError
from twisted.web.iweb import IBodyProducer, IRequest

from registry.api.errors import RegistryError
from registry.http import twisted_internals
from registry.storage.producers import IChunkLimit

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")

# What an HTTP/2 download reads at a time: a client with many streams that never reads holds
# about two of these per stream (one queued on the stream, one read ahead) rather than two of
# the producer's 2 MiB chunks.  Much smaller reads slow HTTP/2 pulls down (a thread hop and a
# reactor turn each); this size does not.
HTTP2_CHUNK_SIZE = 256 * 1024


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
    if twisted_internals.h2_connection(channel) is not None and IChunkLimit.providedBy(producer):
        producer.limit_chunk_size(HTTP2_CHUNK_SIZE)
    request.registerProducer(producer, True)  # type: ignore[attr-defined]
    try:
        await producer.startProducing(request)
    except CancelledError:
        producer.stopProducing()
        raise
    except Exception as exc:
        _abort(request)
        raise ResponseInterrupted(str(exc)) from exc
    finally:
        # A request whose client left has no channel any more (an HTTP/2 stream reset by its
        # client, say): nothing to unregister from, and the handler sees CancelledError.
        channel = getattr(request, "channel", None)
        if not request.finished and channel is not None:  # type: ignore[attr-defined]
            request.unregisterProducer()  # type: ignore[attr-defined]
