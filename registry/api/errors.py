"""
OCI distribution error codes and the one exception type handlers raise.

Handlers and stores raise `RegistryError`; the HTTP layer renders it once as the OCI error
envelope ``{"errors": [{"code", "message", "detail"}]}``.  Keeping codes in one table (as
registry:2's ``errcode`` package does) means a status code is decided in exactly one place.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class ErrorCode:
    """A registered error: its wire value, default message and HTTP status."""

    value: str
    message: str
    http_status: int


_REGISTERED: dict[str, ErrorCode] = {}


def register(value: str, message: str, http_status: int) -> ErrorCode:
    """Register an error code, refusing duplicates so two modules cannot disagree on one."""
    if value in _REGISTERED:
        raise ValueError(f"error code {value} is already registered")
    code = ErrorCode(value, message, http_status)
    _REGISTERED[value] = code
    return code


BLOB_UNKNOWN = register("BLOB_UNKNOWN", "blob unknown to registry", 404)
BLOB_UPLOAD_INVALID = register("BLOB_UPLOAD_INVALID", "blob upload invalid", 400)
BLOB_UPLOAD_UNKNOWN = register("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404)
DIGEST_INVALID = register("DIGEST_INVALID", "provided digest did not match uploaded content", 400)
MANIFEST_BLOB_UNKNOWN = register(
    "MANIFEST_BLOB_UNKNOWN", "manifest references a manifest or blob unknown to registry", 400
)
MANIFEST_INVALID = register("MANIFEST_INVALID", "manifest invalid", 400)
MANIFEST_UNKNOWN = register("MANIFEST_UNKNOWN", "manifest unknown to registry", 404)
NAME_INVALID = register("NAME_INVALID", "invalid repository name", 400)
NAME_UNKNOWN = register("NAME_UNKNOWN", "repository name not known to registry", 404)
SIZE_INVALID = register("SIZE_INVALID", "provided length did not match content length", 400)
TAG_INVALID = register("TAG_INVALID", "manifest tag did not match URI", 400)
UNAUTHORIZED = register("UNAUTHORIZED", "authentication required", 401)
DENIED = register("DENIED", "requested access to the resource is denied", 403)
UNSUPPORTED = register("UNSUPPORTED", "the operation is unsupported", 405)
TOOMANYREQUESTS = register("TOOMANYREQUESTS", "too many requests", 429)
RANGE_INVALID = register("RANGE_INVALID", "invalid content range", 416)
PAGINATION_NUMBER_INVALID = register(
    "PAGINATION_NUMBER_INVALID", "invalid number of results requested", 400
)
# Not in the OCI spec, but registry:2 sends them and clients know them.
NOT_FOUND = register("NOT_FOUND", "the requested resource is not part of the registry API", 404)
UNAVAILABLE = register("UNAVAILABLE", "service unavailable", 503)
UNKNOWN = register("UNKNOWN", "unknown error", 500)


class RegistryError(Exception):
    """An error with an OCI code; the only exception a handler is expected to raise."""

    def __init__(
        self,
        code: ErrorCode,
        detail: Any = None,
        message: str | None = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or code.message)
        self.code = code
        self.detail = detail
        self.message = message or code.message
        self.status = status or code.http_status
        self.headers = dict(headers or {})

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}

    def __repr__(self) -> str:
        return f"RegistryError({self.code.value}, {self.message!r}, detail={self.detail!r})"
