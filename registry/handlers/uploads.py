"""
Blob uploads: start (``POST``), mount, chunks (``PATCH``), status (``GET``), commit (``PUT``),
cancel (``DELETE``).

Bodies never reach the Klein route: `upload_sink` is called by the streaming request as soon as
an upload request's headers arrive, authorizes it and opens the upload, and every chunk then goes
from the socket to storage and the inline hasher.  The route runs when the body is complete and
only finishes the job (records the hash state, or commits).
"""

from __future__ import annotations

import contextlib
from urllib.parse import parse_qs, unquote

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from registry.api.digests import Digest
from registry.api.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DENIED,
    DIGEST_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    UNAUTHORIZED,
    RegistryError,
)
from registry.api.names import is_valid_name
from registry.asyncutil import shielded
from registry.auth.interfaces import PULL, PUSH, AllowAll, repository
from registry.failures import log_failure
from registry.handlers.common import authorize, error_for, query, refuse_if_readonly, url_for
from registry.handlers.context import RegistryContext
from registry.handlers.limits import RefusedBody
from registry.http import responses
from registry.http.headers import request_header
from registry.http.ranges import parse_content_range
from registry.http.request import RegistryRequest
from registry.http.routes import Kind, Route, parse_route
from registry.http.upload_sink import UploadSink
from registry.storage.driver import WriteTakenOver
from registry.storage.gcguard import GcGuard
from registry.storage.uploads import CommittedUpload, UploadAppender, range_error, range_header

log = Logger()


def _session_headers(
    ctx: RegistryContext, request: IRequest, name: str, upload_id: str, size: int
) -> dict[str, str]:
    return {
        "Location": url_for(ctx, request, f"/v2/{name}/blobs/uploads/{upload_id}"),
        "Docker-Upload-UUID": upload_id,
        "Range": range_header(size),
    }


def _with_upload_range(
    ctx: RegistryContext, request: IRequest, route: Route, error: RegistryError
) -> RegistryError:
    """A 416 carries the upload's real range, so the client knows where to resume."""
    if error.code is RANGE_INVALID and isinstance(error.detail, dict):
        size = int(error.detail.get("size", 0))
        error.headers.update(_session_headers(ctx, request, route.name, route.reference, size))
    return error


async def _body_written(
    ctx: RegistryContext, request: IRequest, route: Route
) -> UploadAppender | CommittedUpload:
    """The upload once the request body is stored."""
    try:
        return await _sink(request).result()
    except RegistryError as error:
        raise _with_upload_range(ctx, request, route, error) from None


def upload_sink(
    ctx: RegistryContext, request: RegistryRequest, method: bytes, uri: bytes, length: int | None
) -> UploadSink[UploadAppender | CommittedUpload] | RefusedBody | None:
    """The body sink for upload requests (called from `RegistryRequest.gotLength`)."""
    if method not in (b"PATCH", b"PUT", b"POST"):
        return None
    path, _, query_bytes = uri.partition(b"?")
    if not path.startswith(b"/v2/"):
        return None
    try:
        route = parse_route(unquote(path[4:].decode("utf-8", "replace")))
    except RegistryError as error:
        # An invalid name or reference.  A body the registry would take whole is read and
        # the route answers (NAME_INVALID, ...) as for any request: the connection stays
        # open.  One announced past every limit is refused by the route's own answer now,
        # before it is sent (no "100 Continue"), not by the body limit's 413 once it is.
        limit = max(ctx.config.http.max_body_size, ctx.config.storage.max_manifest_size)
        too_large = length is not None and length > limit
        return RefusedBody(error, read_through=False) if too_large else None
    # Blank values kept, as twisted.web's ``request.args`` keeps them for the route.
    params = parse_qs(query_bytes.decode("utf-8", "replace"), keep_blank_values=True)
    if route.kind is Kind.UPLOAD and method in (b"PATCH", b"PUT"):

        def explain(exc: BaseException) -> RegistryError:
            return _with_upload_range(ctx, request, route, _logged_error_for(method, uri, exc))

        staged = _known_digest(params) if method == b"PUT" else None
        if method == b"PUT" and staged is None:
            # A commit under no digest, or one that does not parse: refused before its body
            # reaches the upload, which stays as it was so that the client can retry the PUT
            # (registry:2 does the same).
            return UploadSink(_refuse_commit(ctx, request, route, params.get("digest")), explain)
        chunk = None
        content_range = request_header(request, "content-range")
        if content_range:  # a PUT may carry the last chunk, and is checked the same way
            try:
                chunk = parse_content_range(content_range)
            except ValueError:
                return UploadSink(_refuse_range(ctx, request, route, content_range), explain)
        prepare = _open_existing(ctx, request, route, chunk, length, staged)
        return UploadSink[UploadAppender | CommittedUpload](prepare, explain)
    # An empty ``digest=`` is no digest (registry:2 starts an upload for it, as for ``mount=``).
    if route.kind is Kind.UPLOADS and method == b"POST" and params.get("digest", [""])[0]:
        if params.get("mount", [""])[0]:
            return None
        digest = _known_digest(params)
        prepare = (
            _open_new(ctx, request, route.name, length, digest)
            if digest is not None
            # Not a digest this registry takes: refused before an upload is started (the
            # client would never learn of it, and nothing would ever close it).
            else _refuse_new(ctx, request, route.name, params["digest"][0])
        )
        return UploadSink(
            prepare,
            lambda exc: _logged_error_for(method, uri, exc),
            lambda appender: _drop_unannounced(ctx, route.name, appender),
        )
    return None


async def _drop_unannounced(
    ctx: RegistryContext, name: str, appender: UploadAppender | CommittedUpload
) -> None:
    """A monolithic push whose client left mid-body: the upload it started is removed with
    what was stored of it, since its ``Location`` was never sent (it would wait for the purge
    otherwise, and a client that keeps breaking such pushes off would fill the disk)."""
    if not isinstance(appender, UploadAppender):  # a commit's retry: never one of these
        return
    await appender.discard()
    await ctx.uploads.cancel(name, appender.upload_id)


def _logged_error_for(method: bytes, uri: bytes, exc: BaseException) -> RegistryError:
    """`error_for`, with the failure logged where it is not the client's doing."""
    if not isinstance(exc, RegistryError | WriteTakenOver):
        log_failure(
            log,
            Failure(exc),
            "upload body refused on {method} {uri}",
            method=method.decode("latin-1"),
            uri=uri.decode("latin-1")[:300],
        )
    return error_for(exc)


def _size_refusal(content_range: str, received: int) -> RegistryError:
    return RegistryError(
        SIZE_INVALID,
        {"content_range": content_range[:100], "received": received},
        "the chunk's length does not match its Content-Range",
    )


async def _refuse_chunk_length(
    ctx: RegistryContext, route: Route, content_range: str, start: int, length: int
) -> UploadAppender:
    """
    The refusal of a chunk whose ``Content-Length`` is not the length its ``Content-Range``
    gives, before any of it is stored: 416 when it does not start where the upload ends, else
    400 SIZE_INVALID (registry:2 v3 checks in that order).
    """
    size = await ctx.uploads.size(route.name, route.reference)
    if start != size:
        raise range_error(
            route.reference, size, f"chunk starts at {start}, upload has {size} bytes"
        )
    raise _size_refusal(content_range, length)


async def _check_chunk_length(
    request: IRequest, appender: UploadAppender | CommittedUpload
) -> None:
    """
    A chunk sent without ``Content-Length`` (chunked) is measured once it is in: one that is
    not the length its ``Content-Range`` gives is dropped (the upload stays where it was) and
    refused with 400 SIZE_INVALID.  One with a ``Content-Length`` was checked before opening.
    """
    content_range = request_header(request, "content-range")
    if not content_range:
        return
    try:
        first, last = parse_content_range(content_range)
    except ValueError:  # refused before the body was taken (`_refuse_range`)
        return
    received = appender.size - appender.start
    if received == last - first + 1:
        return
    await shielded(appender.discard())
    raise _size_refusal(content_range, received)


def _known_digest(params: dict[str, list[str]]) -> Digest | None:
    """The ``?digest=`` a body is pushed under, when it is given and valid (else the route
    answers the error once the body is in)."""
    values = params.get("digest")
    if not values:
        return None
    try:
        return Digest.parse(values[0])
    except RegistryError:
        return None


async def _staged(appender: UploadAppender, digest: Digest | None) -> UploadAppender:
    """Write a body whose digest is known straight at the blob's path where storage can
    (see `UploadAppender.stage`)."""
    if digest is not None:
        try:
            await appender.stage(digest)
        except BaseException:
            await shielded(appender.close())
            raise
    return appender


async def _open_existing(
    ctx: RegistryContext,
    request: IRequest,
    route: Route,
    chunk: tuple[int, int] | None,
    length: int | None,
    digest: Digest | None = None,
) -> UploadAppender | CommittedUpload:
    """
    Open the upload a ``PATCH`` or a final ``PUT`` (``digest``) writes to.  A ``PUT``
    without bytes (``Content-Length: 0``, or a chunked body, which must turn out empty) on an
    upload whose data is gone may be the retry of a commit whose 201 the client never got:
    answered as that commit when the upload verifiably became ``digest``
    (`IUploadStore.recover`).
    """
    refuse_if_readonly(ctx)
    await authorize(ctx, request, [repository(route.name, PULL, PUSH)])
    start = None
    if chunk is not None:
        start, last = chunk
        if length is not None and last - start + 1 != length:
            content_range = request_header(request, "content-range") or ""
            return await _refuse_chunk_length(ctx, route, content_range, start, length)
    try:
        appender = await ctx.uploads.open(route.name, route.reference, start, length)
    except RegistryError as error:
        if error.code is not BLOB_UPLOAD_UNKNOWN or digest is None or length:
            raise
        committed = await ctx.uploads.recover(route.name, route.reference, digest)
        if committed is None or start not in (None, committed.size):
            raise
        return committed
    return await _staged(appender, digest)


async def _open_new(
    ctx: RegistryContext,
    request: IRequest,
    name: str,
    length: int | None,
    digest: Digest | None = None,
) -> UploadAppender:
    refuse_if_readonly(ctx)
    await authorize(ctx, request, [repository(name, PULL, PUSH)])
    upload_id = await ctx.uploads.start(name)
    try:
        appender = await ctx.uploads.open(name, upload_id, coming=length)
    except BaseException:
        # No room for the announced body (or storage failed): the upload just started is
        # nobody's, since its ``Location`` is never sent.
        with contextlib.suppress(Exception):
            await ctx.uploads.cancel(name, upload_id)
        raise
    return await _staged(appender, digest)


async def _refuse_new(
    ctx: RegistryContext, request: IRequest, name: str, digest_text: str
) -> UploadAppender:
    """The refusal of a monolithic push under a digest that does not parse (after the same
    checks as `_open_new`, so that a client without access learns no more than that)."""
    refuse_if_readonly(ctx)
    await authorize(ctx, request, [repository(name, PULL, PUSH)])
    Digest.parse(digest_text)  # raises the DIGEST_INVALID the client gets
    raise AssertionError(f"{digest_text!r} parsed here but not in _known_digest")


async def _refuse_range(
    ctx: RegistryContext, request: IRequest, route: Route, content_range: str
) -> UploadAppender:
    """The refusal of a chunk whose ``Content-Range`` is not ``<first>-<last>`` (first no
    more than last), after the checks of `_open_existing`; the upload stays as it was."""
    refuse_if_readonly(ctx)
    await authorize(ctx, request, [repository(route.name, PULL, PUSH)])
    await ctx.uploads.size(route.name, route.reference)  # an unknown upload is a 404 first
    raise RegistryError(
        BLOB_UPLOAD_INVALID,
        {"content_range": content_range[:100]},
        "Content-Range must be <first>-<last>, the chunk's first and last byte offsets",
    )


async def _refuse_commit(
    ctx: RegistryContext, request: IRequest, route: Route, digest_values: list[str] | None
) -> UploadAppender:
    """The refusal of a final ``PUT`` without a digest that parses, after the checks a commit
    makes first (access, then the upload's existence)."""
    refuse_if_readonly(ctx)
    await authorize(ctx, request, [repository(route.name, PULL, PUSH)])
    await ctx.uploads.size(route.name, route.reference)  # BLOB_UPLOAD_UNKNOWN first
    if not digest_values or not digest_values[0]:
        raise RegistryError(
            DIGEST_INVALID, {"reason": "digest missing"}, "PUT needs ?digest= to complete an upload"
        )
    Digest.parse(digest_values[0])  # raises the DIGEST_INVALID the client gets
    raise AssertionError(f"{digest_values[0]!r} parsed here but not in _known_digest")


def _sink(request: IRequest) -> UploadSink[UploadAppender | CommittedUpload]:
    sink = getattr(request, "sink", None)
    if not isinstance(sink, UploadSink):
        raise RegistryError(BLOB_UPLOAD_INVALID, {"reason": "request body was not streamed"})
    return sink


async def start_upload(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    refuse_if_readonly(ctx)
    name = route.name
    # Empty ``digest=``, ``mount=`` and ``from=`` are none (registry:2 starts an upload).
    digest_text = query(request, "digest") or None
    mount = query(request, "mount") or None
    source = (query(request, "from") or None) if mount is not None else None
    # A mount can use pull on its source but does not need it (see _try_mount): the challenge
    # names it, so the client's one token covers both, as registry:2's first challenge does.
    also = (
        [repository(source, PULL)]
        if source is not None and source != name and is_valid_name(source)
        else []
    )
    await authorize(ctx, request, [repository(name, PULL, PUSH)], also)
    if mount is not None:
        digest = Digest.parse(mount)
        size = await _try_mount(ctx, request, name, digest, source)
        if size is not None:
            ctx.notifier.blob_mounted(request, name, digest, size, source)
            return _created(ctx, request, name, digest)
    elif digest_text is not None:
        digest = Digest.parse(digest_text)
        appender = await _sink(request).result()
        size = await shielded(ctx.uploads.commit(appender, digest))
        await ctx.catalog.note_repository(name)
        ctx.notifier.blob_pushed(request, name, digest, size)
        return _created(ctx, request, name, digest)
    upload_id = await ctx.uploads.start(name)
    return responses.empty(request, 202, _session_headers(ctx, request, name, upload_id, 0))


async def _try_mount(
    ctx: RegistryContext, request: IRequest, name: str, digest: Digest, source: str | None
) -> int | None:
    """
    Cross-repository mount: the blob's size once mounted, None (fall back to a new upload)
    when it cannot be done.
    """
    if source is None:
        return await _mount_anonymous(ctx, request, name, digest)
    if not is_valid_name(source):
        return None
    if source != name:
        # The caller must be allowed to pull from the source; if it is not, the mount quietly
        # becomes a plain upload (registry:2 does the same), so no 403 leaks its existence.
        # Under token auth "not allowed" is a 401 insufficient_scope (the token server left
        # the source out of the token): the target was just authorized with the same
        # credentials, so that too only means "no pull on the source".
        try:
            await authorize(ctx, request, [repository(name, PULL, PUSH), repository(source, PULL)])
        except RegistryError as error:
            if error.code is not DENIED and error.code is not UNAUTHORIZED:
                raise
            return None
    if not await ctx.blobs.is_linked(source, digest):
        return None
    info = await ctx.blobs.exists(digest)
    if info is None:
        return None
    await ctx.blobs.link(name, digest)
    if await GcGuard(ctx.driver).protect([digest]):
        return None  # being deleted by a garbage collection: a plain upload instead
    await ctx.catalog.note_repository(name)
    return info.size


async def _mount_anonymous(
    ctx: RegistryContext, request: IRequest, name: str, digest: Digest
) -> int | None:
    """
    ``?mount=`` without ``from`` (distribution-spec 1.1): mount when the blob is stored.  Only
    without access control: with it, knowing a digest must not give access to content that
    lives only in repositories the caller may not pull.
    """
    if not isinstance(ctx.access, AllowAll):
        return None
    info = await ctx.blobs.exists(digest)
    if info is None:
        return None
    await ctx.blobs.link(name, digest)
    if await GcGuard(ctx.driver).protect([digest]):
        return None  # being deleted by a garbage collection: a plain upload instead
    await ctx.catalog.note_repository(name)
    return info.size


def _created(ctx: RegistryContext, request: IRequest, name: str, digest: Digest) -> bytes:
    return responses.empty(
        request,
        201,
        {
            "Location": url_for(ctx, request, f"/v2/{name}/blobs/{digest}"),
            "Docker-Content-Digest": str(digest),
        },
    )


async def patch_upload(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    appender = await _body_written(ctx, request, route)
    await _check_chunk_length(request, appender)
    await shielded(appender.close())
    headers = _session_headers(ctx, request, route.name, route.reference, appender.size)
    return responses.empty(request, 202, headers)


async def put_upload(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    # The body sink opened the upload only for a digest that parses (`_refuse_commit`).
    appender = await _body_written(ctx, request, route)
    try:
        digest = Digest.parse(query(request, "digest") or "")
    except RegistryError:
        await shielded(appender.close())
        raise
    await _check_chunk_length(request, appender)
    size = await shielded(ctx.uploads.commit(appender, digest))
    await ctx.catalog.note_repository(route.name)
    ctx.notifier.blob_pushed(request, route.name, digest, size)
    return _created(ctx, request, route.name, digest)


async def get_upload(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    await authorize(ctx, request, [repository(route.name, PULL, PUSH)])
    size = await ctx.uploads.size(route.name, route.reference)
    headers = _session_headers(ctx, request, route.name, route.reference, size)
    return responses.empty(request, 204, headers)


async def delete_upload(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    refuse_if_readonly(ctx)
    await authorize(ctx, request, [repository(route.name, PULL, PUSH)])
    await ctx.uploads.cancel(route.name, route.reference)
    return responses.empty(request, 204)
