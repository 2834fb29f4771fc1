"""
Conditional requests on content-addressed answers (RFC 9110 section 13): blobs and manifests
carry their digest as a strong ``ETag``, so a client or cache that holds them revalidates with
``If-None-Match`` (answered ``304 Not Modified``, no body) and resumes with ``If-Range``.

Nothing here reads storage: the ETag of what a request names is its digest, known before any
byte is read.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from registry.http.headers import request_header


def _entity_tags(value: str) -> list[str]:
    """The entity tags of a list header (``"a", W/"b"``), weak ones with their ``W/``."""
    return [part.strip() for part in value.split(",") if part.strip()]


def none_match(request: IRequest, etag: str) -> bool:
    """
    Whether ``If-None-Match`` matches ``etag`` (weak comparison, as section 13.1.2 has it
    for this header): the client already holds this representation, so a GET or HEAD is
    answered ``304``.
    """
    value = request_header(request, "if-none-match")
    if value is None:
        return False
    if value.strip() == "*":
        return True
    return any(tag.removeprefix("W/") == etag for tag in _entity_tags(value))


def range_applies(request: IRequest, etag: str) -> bool:
    """
    Whether a ``Range`` may be honoured under ``If-Range`` (section 13.1.5): only when it
    names ``etag`` itself (strong comparison).  A date cannot match (no ``Last-Modified`` is
    sent), nor a weak or other tag: the whole representation is sent instead.
    """
    value = request_header(request, "if-range")
    if value is None:
        return True
    return value.strip() == etag
