"""Blob GET, HEAD and DELETE: streamed with back-pressure, with ``Range`` support."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from registry.api.errors import RANGE_INVALID, RegistryError
from registry.auth.interfaces import DELETE, PULL, repository
from registry.handlers.common import authorize, refuse_if_delete_disabled
from registry.handlers.context import RegistryContext
from registry.http import conditional, responses, sendfile
from registry.http.headers import request_header
from registry.http.ranges import RangeNotSatisfiable, parse_range
from registry.http.routes import Route


async def get_blob(ctx: RegistryContext, request: IRequest, route: Route) -> bytes | None:
    await authorize(ctx, request, [repository(route.name, PULL)])
    info = await ctx.blobs.stat(route.name, route.digest)
    if conditional.none_match(request, f'"{route.digest}"'):
        return responses.not_modified(request, _validators(route))
    answer = await _serve_blob(ctx, request, route, info.size)
    if request.method == b"GET":  # served (or redirected); a HEAD transfers nothing
        ctx.notifier.blob_pulled(request, route.name, route.digest, info.size)
    return answer


async def _serve_blob(
    ctx: RegistryContext, request: IRequest, route: Route, size: int
) -> bytes | None:
    digest = route.digest
    headers = {**_validators(route), "Accept-Ranges": "bytes"}
    if ctx.config.storage.redirect and request.method == b"GET":
        url = await ctx.blobs.redirect_url(route.name, digest)
        if url is not None:
            # Not the blob's "cache for a year": the presigned URL expires (S3: in 20 minutes),
            # and a cache in between would keep sending clients to a dead one.
            kept = {k: v for k, v in headers.items() if k != "Cache-Control"}
            return responses.empty(request, 307, {**kept, "Location": url})
    asked = request_header(request, "range")
    if asked is not None and not conditional.range_applies(request, headers["ETag"]):
        asked = None  # If-Range names something else: the whole blob
    try:
        wanted = parse_range(asked, size)
    except RangeNotSatisfiable:
        raise RegistryError(
            RANGE_INVALID,
            {"size": size, "range": request_header(request, "range")},
            "requested range not satisfiable",
            headers={"Content-Range": f"bytes */{size}"},
        ) from None
    if wanted is None:
        offset, length = 0, size
    else:
        first, last = wanted
        offset, length = first, last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    producer = None
    if request.method == b"GET" and length > 0:
        # Opened before any header is set: a failure (a 503 from a cache whose storage is
        # full, a 404) must not go out with the blob's "cache for a year" and its validators.
        producer = await ctx.blobs.open(route.name, digest, offset, length)
    request.setResponseCode(200 if wanted is None else 206)
    request.setHeader("Content-Type", "application/octet-stream")
    for name, value in headers.items():
        request.setHeader(name, value)
    request.setHeader("Content-Length", str(length))
    if producer is None:
        return b""
    mode = ctx.config.http.sendfile
    if mode != "never":  # a local file on plain TCP: sent by the kernel
        await sendfile.stream(request, producer, to_loopback=mode == "always")
    else:
        await responses.stream(request, producer)
    return None


def _validators(route: Route) -> dict[str, str]:
    """What identifies a blob's bytes, for a 200, a 206 and a 304 alike (they never change)."""
    return {
        "Docker-Content-Digest": str(route.digest),
        "ETag": f'"{route.digest}"',
        "Cache-Control": "max-age=31536000",
    }


async def delete_blob(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    refuse_if_delete_disabled(ctx)
    await authorize(ctx, request, [repository(route.name, DELETE)])
    digest = route.digest
    await ctx.blobs.stat(route.name, digest)
    await ctx.blobs.unlink(route.name, digest)
    ctx.notifier.blob_deleted(request, route.name, digest)
    return responses.empty(request, 202, {"Docker-Content-Digest": str(digest)})
