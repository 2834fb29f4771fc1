"""
Reason phrases for the status line, as RFC 9110 (and RFC 6585 for 429) name them.

twisted.web has none for 429, 422 or 431 (it sends "Unknown Status") and older names for some
others (413 "Request Entity Too Large", 416 "Requested Range not satisfiable").  Clients go by
the code, but a status line that reads "429 Unknown Status" in a log or a proxy looks broken.
"""

from __future__ import annotations

PHRASES: dict[int, bytes] = {
    100: b"Continue",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    408: b"Request Timeout",
    409: b"Conflict",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable",
    417: b"Expectation Failed",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def phrase(code: int) -> bytes | None:
    """The standard phrase for ``code``; None for a code this table does not know."""
    return PHRASES.get(code)
