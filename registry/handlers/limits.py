"""
Bodies refused from their announced size, before a byte of them is read.

A manifest PUT whose ``Content-Length`` is over ``[storage] max_manifest_size``, or any other
non-upload request over ``[http] max_body_size``, is answered 413 as soon as its headers are
in (`RegistryRequest` answers early for a refusing body sink) and the connection closes
after the answer: reading megabytes or gigabytes only to refuse them helps nobody.  Bodies
without a length (chunked) are still counted as they come and refused at their end.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from registry.api.errors import MANIFEST_INVALID, SIZE_INVALID, RegistryError
from registry.handlers.context import RegistryContext
from registry.http.routes import Kind, parse_route


def manifest_too_large(limit: int) -> RegistryError:
    return RegistryError(
        MANIFEST_INVALID,
        {"limit": limit},
        f"manifest too big: the limit is {limit} bytes",
        status=413,
    )


def body_too_large(limit: int) -> RegistryError:
    return RegistryError(
        SIZE_INVALID,
        {"reason": "request body too large", "limit": limit},
        f"request body too large: the limit is {limit} bytes",
        status=413,
    )


class RefusedBody:
    """
    A body sink that refuses the body at once and drops whatever of it still arrives.
    ``read_through``: whether the rest of the body is read (and dropped) after the answer, so
    that a client that reads the answer only once it has sent everything sees it; False for
    a body too large for that, closed unread as a 413 is.
    """

    received = 0

    def __init__(self, error: RegistryError, read_through: bool = True) -> None:
        self.error = error
        self.read_through = read_through

    def feed(self, data: bytes) -> Deferred[None] | None:
        return None

    def connection_lost(self, reason: Failure) -> None:
        pass

    def watch(self, ready: Callable[[], None], refused: Callable[[RegistryError], None]) -> None:
        refused(self.error)


def refuse_by_length(
    ctx: RegistryContext, method: bytes, uri: bytes, length: int | None
) -> RefusedBody | None:
    """
    A refusing sink when ``length`` is over this request's limit; None to take the body.
    Called for requests that are not blob uploads (those stream to storage, unbounded).
    """
    if length is None:
        return None
    if _is_manifest_put(method, uri):
        limit = ctx.config.storage.max_manifest_size
        return RefusedBody(manifest_too_large(limit)) if length > limit else None
    limit = ctx.config.http.max_body_size
    return RefusedBody(body_too_large(limit)) if length > limit else None


def _is_manifest_put(method: bytes, uri: bytes) -> bool:
    path = uri.partition(b"?")[0]
    if method != b"PUT" or not path.startswith(b"/v2/"):
        return False
    try:
        route = parse_route(unquote(path[4:].decode("utf-8", "replace")))
    except RegistryError:
        return False
    return route.kind is Kind.MANIFEST
