"""
An HTTP/1.1 request without a ``Host`` header gets ``400 Bad Request``, saying so.

RFC 9112 (section 3.2) has a server answer 400 to such a request, and registry:2 (Go's
net/http) does: "missing required Host header".  twisted.web takes it, and the registry would
then build the absolute URLs it answers with (``[http] relativeurls = false``, a token realm)
from nothing.  HTTP/1.0 requests may lack it; HTTP/2 names the host in ``:authority``.

Such a request's body is never streamed into an upload: it is read (what is past
``max_body_size`` is not kept) and dropped with the answer.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

ANSWER = b"missing required Host header\n"


def lacks_host(version: bytes, headers: Headers) -> bool:
    """Whether a request of HTTP ``version`` with ``headers`` is refused for want of Host."""
    return version == b"HTTP/1.1" and not headers.hasHeader(b"host")


class MissingHost(Resource):
    """The 400 for every method; the connection closes after it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Any) -> bytes:
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"connection", b"close")
        request.channel.persistent = False
        return ANSWER
