"""
A request twisted.web finds malformed before it makes a `Request` of it (a bad request line or
header line, a head over 16 KiB in total or over 500 header lines, a bad ``Content-Length`` or
``Transfer-Encoding``, a chunked body whose framing is broken) gets a ``400`` with a sentence
and an access line, like every other answer.  twisted.web's own answer is a bare ``HTTP/1.1
400 Bad Request`` with no body, which the access log never saw.
"""

from __future__ import annotations

from twisted.web import http

from registry.http.misdirected import Answered, answered_body, plain_answer
from registry.http.twisted_internals import answer_malformed_with, http1_channel

_ANSWER = plain_answer(
    "400 Bad Request",
    "The request is malformed: its request line, a header line, the size of its head "
    "(16 KiB, 500 header lines) or the framing of its body.\n",
)


def answer_malformed(protocol: object, answered: Answered | None = None) -> None:
    """Give the HTTP/1 channel behind ``protocol`` (when there is one) the 400 answer."""
    channel = http1_channel(protocol)
    if channel is None:
        return
    instance: http.HTTPChannel = channel

    def refuse() -> None:
        if instance.transport is not None:
            instance.transport.write(_ANSWER)
            if answered is not None:
                answered(400, answered_body(_ANSWER))
        # As twisted.web's own: its parsing stops once the transport is disconnecting.
        instance.loseConnection()

    answer_malformed_with(instance, refuse)
