"""
Reading HTTP headers as text, whatever bytes the other side sent in them.

Asked with a ``str`` name, Twisted decodes header values as UTF-8 and raises on anything else,
and the bytes are the client's (or an upstream's) to choose: one stray byte would make every
caller fail with an unexpected error, a 500.  HTTP leaves bytes beyond ASCII opaque, so values
are read raw and decoded as ISO-8859-1, which maps every byte; a value that means nothing then
fails the caller's own parsing like any other bad value.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of header ``name``, in order."""
    return [value.decode("latin-1") for value in headers.getRawHeaders(name.encode("ascii"), [])]


def request_header(request: IRequest, name: str) -> str | None:
    """The last value of request header ``name`` (as ``IRequest.getHeader`` picks it)."""
    values = header_values(request.requestHeaders, name)
    return values[-1] if values else None
