"""
A request line or header line longer than twisted.web reads (`HTTPChannel.MAX_LENGTH`,
16 KiB) gets an answer that says so: ``431 Request Header Fields Too Large``, as Go's server
answers a head over its limit.  twisted.web closes such a connection without a word (its
`LineReceiver.lineLengthExceeded`), and the client reports an empty reply or an EOF that
says nothing of the cause.

The limit itself stays: what one connection's head can make the server hold is bounded.
"""

from __future__ import annotations

from twisted.web import http

from registry.http.misdirected import Answered, answer_and_close, plain_answer
from registry.http.twisted_internals import http1_channel


def _answer(limit: int) -> bytes:
    return plain_answer(
        "431 Request Header Fields Too Large",
        f"The request line or a header line is longer than {limit} bytes.\n",
    )


def answer_long_lines(protocol: object, answered: Answered | None = None) -> None:
    """Give the HTTP/1 channel behind ``protocol`` (when there is one) the 431 answer."""
    channel = http1_channel(protocol)
    if channel is None:
        return
    instance: http.HTTPChannel = channel

    def line_too_long(line: bytes) -> None:
        # Nothing more is read from this client: its request is not one we can answer.
        instance.dataReceived = _drop  # type: ignore[method-assign]
        if instance.transport is not None:
            answer_and_close(instance.transport, _answer(instance.MAX_LENGTH), answered)

    instance.lineLengthExceeded = line_too_long  # type: ignore[method-assign]


def _drop(data: bytes) -> None:
    """The rest of a refused request."""
