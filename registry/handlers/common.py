"""What every handler does: authorize, refuse writes when read-only, read query parameters."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.web.iweb import IRequest

from registry.api.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    UNAVAILABLE,
    UNKNOWN,
    UNSUPPORTED,
    RegistryError,
)
from registry.auth.interfaces import Access, Principal
from registry.handlers.context import RegistryContext
from registry.http.forwarded import origin
from registry.storage.driver import StorageError, WriteRemoved, WriteTakenOver


async def authorize(
    ctx: RegistryContext,
    request: IRequest,
    wanted: Sequence[Access],
    also: Sequence[Access] = (),
) -> Principal:
    """The caller, if ``wanted`` is granted; ``also`` is named in a challenge, not required
    (`IAccessController.authorize`)."""
    principal = await ctx.access.authorize(request, wanted, also)
    request.principal_name = principal.name  # type: ignore[attr-defined]
    return principal


def refuse_if_readonly(ctx: RegistryContext) -> None:
    if ctx.config.maintenance.readonly:
        raise RegistryError(
            UNSUPPORTED,
            {"reason": "the registry is in read-only mode"},
            "the registry is in read-only mode: writes are refused, reads go on",
        )


def refuse_if_delete_disabled(ctx: RegistryContext) -> None:
    refuse_if_readonly(ctx)
    if not ctx.config.storage.delete_enabled:
        raise RegistryError(
            UNSUPPORTED,
            {"reason": "deletes are disabled ([storage] delete_enabled = false)"},
            "the operation is unsupported: deletes are disabled",
        )


def query(request: IRequest, name: str) -> str | None:
    """The first value of query parameter ``name``, decoded."""
    values = request.args.get(name.encode())
    if not values:
        return None
    value: bytes = values[0]
    return value.decode("utf-8", "replace")


def url_for(ctx: RegistryContext, request: IRequest, path: str) -> str:
    """
    A ``Location`` for ``path``: relative by default (every client resolves it, and it stays
    right behind proxies); absolute with ``[http] relativeurls = false``, as registry:2 answers
    by default, from the scheme and host the client used: the request's own, or what a
    trusted reverse proxy reports (`registry.http.forwarded`).
    """
    if ctx.config.http.relativeurls:
        return path
    return origin(request).url(path)


def error_for(exc: BaseException | None) -> RegistryError:
    """
    The OCI error a client gets for ``exc``: storage trouble (a full disk, an S3 outage) is a
    503 with its reason, so the client can retry later; anything unforeseen is a 500 that
    gives nothing of the server's internals away (the log has the traceback).
    """
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, WriteRemoved):
        # Said in the client's terms: the exception names the storage path (the log has it).
        reason = "the upload was cancelled, purged or finished by another request meanwhile"
        return RegistryError(BLOB_UPLOAD_UNKNOWN, {"reason": reason})
    if isinstance(exc, WriteTakenOver):
        return RegistryError(BLOB_UPLOAD_INVALID, {"reason": str(exc)[:500]})
    if isinstance(exc, StorageError):
        return RegistryError(UNAVAILABLE, {"reason": str(exc)[:500]}, "storage unavailable")
    return RegistryError(UNKNOWN, {"reason": "internal error"})
