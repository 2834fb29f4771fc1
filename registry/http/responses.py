"""
Writing responses: headers, small bodies, OCI errors, and streamed bodies from producers.

Handlers call these instead of touching ``request.write``, so every response sets an exact
``Content-Length`` (HEAD included) and errors always take the OCI envelope.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.web.iweb import IBodyProducer, IRequest

from registry.api.errors import RegistryError

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


def set_headers(request: IRequest, headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        request.setHeader(name, value)


def empty(request: IRequest, status: int, headers: Mapping[str, str] | None = None) -> bytes:
    request.setResponseCode(status)
    set_headers(request, headers or {})
    request.setHeader("Content-Length", "0")
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


async def stream(request: IRequest, producer: IBodyProducer) -> None:
    """
    Write everything ``producer`` makes to the response with back-pressure.  If the client
    goes away, Klein cancels the handler: the producer is stopped and its file closed.
    """
    if request.method == b"HEAD":
        producer.stopProducing()
        return
    raise_limit = getattr(request, "raise_send_limit", None)
    if raise_limit is not None:
        raise_limit()
    request.registerProducer(producer, True)  # type: ignore[attr-defined]
    try:
        await producer.startProducing(request)
    except CancelledError:
        producer.stopProducing()
        raise
    finally:
        if not request.finished:  # type: ignore[attr-defined]
            request.unregisterProducer()  # type: ignore[attr-defined]
