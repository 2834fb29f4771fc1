"""
A request head with a line that ends in a bare LF (``\\n`` without its ``\\r``) gets ``400 Bad
Request`` at once, saying so.

twisted.web reads head lines up to CRLF only, so such a head never ends for it: the client
waited, without a word, until the head's deadline (`registry.http.head_deadline`, ``[http]
timeout``, 300 s by default).  Taking the bare LF as a line end instead (as some servers do)
would make this server read a head differently from a proxy in front of it that does not,
which is how requests are smuggled past a proxy's checks; RFC 9112 lets a server refuse it.
Only the head is looked at: a body's bytes are the client's own.  HTTP/1 only.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http

from registry.http.misdirected import Answered, answer_and_close, plain_answer
from registry.http.twisted_internals import http1_channel

_ANSWER = plain_answer(
    "400 Bad Request",
    "A line of the request head ends in a bare LF; HTTP/1.1 lines end in CRLF.\n",
)
_HEAD_END = b"\r\n\r\n"


def bare_lf_in_head(before: bytes, data: bytes) -> tuple[bool, bytes]:
    """
    Whether the head part of ``data`` has a bare LF, ``before`` being the last bytes (at most
    three) of the same head that came earlier; and the bytes to pass as ``before`` with the
    next data (empty once the head ended in ``data``: what follows is a body or a later
    request).
    """
    window = before + data
    end = window.find(_HEAD_END)
    head = data if end < 0 else data[: max(0, end + len(_HEAD_END) - len(before))]
    # Every LF of ``head`` must close a CRLF, its CR perhaps the last byte that came before.
    bare = head.count(b"\n") != (before[-1:] + head).count(b"\r\n")
    return bare, (window[-3:] if end < 0 else b"")


def refuse_bare_lf(protocol: object, answered: Answered | None = None) -> None:
    """Give the HTTP/1 channel behind ``protocol`` (when there is one) the 400 answer."""
    channel = http1_channel(protocol)
    if channel is None:
        return
    instance: http.HTTPChannel = channel
    data_received: Any = instance.dataReceived  # twisted.web's own (untyped), called after
    state = {"before": b""}

    def on_data(data: bytes) -> None:
        # line_mode: twisted.web reads head lines (not a body) from the next byte on.
        if instance.line_mode:
            bare, state["before"] = bare_lf_in_head(state["before"], data)
            if bare:
                instance.dataReceived = _drop  # type: ignore[method-assign]
                if instance.transport is not None:
                    answer_and_close(instance.transport, _ANSWER, answered)
                return
        else:
            state["before"] = b""
        data_received(data)

    instance.dataReceived = on_data  # type: ignore[method-assign]


def _drop(data: bytes) -> None:
    """The rest of a refused request."""
