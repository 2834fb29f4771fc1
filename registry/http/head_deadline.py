"""
A deadline for a whole request head: once the first byte of a request (line or headers)
is in, the head must be complete within ``[http] timeout``, or the client gets ``408 Request
Timeout`` and the connection is closed.

twisted.web's own timeout (the same ``[http] timeout``) is an idle timeout: every byte
restarts it, so a client dripping one header line every few seconds (slowloris) held a
connection, and the memory of its half-read head, for as long as it liked.  The body is not
under this deadline (an upload may take long; the idle timeout still applies to it), nor is
an idle keep-alive connection between requests (only the idle timeout).  HTTP/1 only: an
HTTP/2 connection has its own framing (twisted.web's h2 handles it).
"""

from __future__ import annotations

from typing import Any

from twisted.web import http

from registry.http.misdirected import Answered, answer_and_close, plain_answer
from registry.http.twisted_internals import http1_channel


def _answer(seconds: float) -> bytes:
    return plain_answer(
        "408 Request Timeout",
        f"The request head was not complete within {seconds:g} s of its first byte.\n",
    )


def limit_head_time(protocol: object, call_later: Any, answered: Answered | None = None) -> None:
    """Put the HTTP/1 channel behind ``protocol`` (when there is one) under the deadline of
    its ``timeOut`` (the site's ``[http] timeout``; none when that is unset)."""
    channel = http1_channel(protocol)
    if channel is None:
        return
    instance: http.HTTPChannel = channel
    seconds = instance.timeOut
    if not seconds:
        return
    state: dict[str, Any] = {"awaiting": True, "timer": None}
    # twisted.web's own methods (untyped), called after ours.
    data_received: Any = instance.dataReceived
    all_headers_received: Any = instance.allHeadersReceived
    request_done: Any = instance.requestDone
    connection_lost: Any = instance.connectionLost

    def cancel() -> None:
        timer, state["timer"] = state["timer"], None
        if timer is not None and timer.active():
            timer.cancel()

    def expired() -> None:
        state["timer"] = None
        transport = instance.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        instance.dataReceived = _drop  # type: ignore[method-assign]
        answer_and_close(transport, _answer(seconds), answered)

    def on_data(data: bytes) -> None:
        if data and state["awaiting"] and state["timer"] is None:
            state["timer"] = call_later(seconds, expired)
        data_received(data)

    def on_all_headers() -> None:
        state["awaiting"] = False
        cancel()
        all_headers_received()

    def on_request_done(request: Any) -> None:
        state["awaiting"] = True  # the next head's first byte starts its deadline
        request_done(request)

    def on_connection_lost(reason: Any) -> None:
        cancel()
        connection_lost(reason)

    instance.dataReceived = on_data  # type: ignore[method-assign]
    instance.allHeadersReceived = on_all_headers  # type: ignore[method-assign]
    instance.requestDone = on_request_done  # type: ignore[method-assign]
    instance.connectionLost = on_connection_lost  # type: ignore[method-assign]


def _drop(data: bytes) -> None:
    """What the client still sends after its 408."""
