"""Manifest PUT, GET, HEAD and DELETE (by tag or digest)."""

from __future__ import annotations

import functools

from twisted.web.iweb import IRequest

from registry.api import mediatypes
from registry.api.digests import Digest
from registry.api.errors import MANIFEST_UNKNOWN, TAG_INVALID, RegistryError
from registry.auth.interfaces import DELETE, PULL, PUSH, repository
from registry.handlers.common import (
    authorize,
    refuse_if_delete_disabled,
    refuse_if_readonly,
    url_for,
)
from registry.handlers.context import RegistryContext
from registry.http import conditional, responses
from registry.http.headers import request_header
from registry.http.routes import Route
from registry.storage.manifests import IndexChildUnknown, ManifestTooLarge, PutResult

# The wire status of errors the manifest store raises knowing nothing of HTTP.
_PUT_STATUS: dict[type[RegistryError], int] = {ManifestTooLarge: 413, IndexChildUnknown: 400}


def _only_schema1(request: IRequest) -> bool:
    """A client that accepts schema1 and no other manifest type (docker before 1.10)."""
    return _accepts_only_schema1(tuple(request.requestHeaders.getRawHeaders(b"accept") or ()))


# Clients send a handful of distinct Accept headers, the same on every pull: each parsed once
# (64 at most kept: a header is at most 16 KiB, so 1 MiB at worst).
@functools.lru_cache(maxsize=64)
def _accepts_only_schema1(values: tuple[bytes, ...]) -> bool:
    types = mediatypes.accepted_types(value.decode("latin-1") for value in values)
    return bool(types & mediatypes.SCHEMA1_TYPES) and not (
        types & (mediatypes.MANIFEST_TYPES | {"*/*", "application/*"})
    )


def _tag(route: Route) -> str | None:
    return None if route.is_digest_reference else route.reference


def _tag_parameters(request: IRequest) -> list[str]:
    """
    The ``tag`` query parameters of a manifest PUT (distribution-spec: push by digest and tag
    in one request, ``?tag=a&tag=b``); checked by the store before anything is written.
    """
    args = request.args or {}
    tags = []
    for value in args.get(b"tag", []):
        try:
            tags.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise RegistryError(
                TAG_INVALID, {"tag": value.decode("latin-1")[:300], "reason": "invalid tag"}
            ) from None
    return tags


def _put_headers(result: PutResult, own: str | None) -> dict[str, str]:
    """The response headers of a successful manifest PUT (besides ``Location``).  With
    ``?tag=`` parameters, ``OCI-Tag`` names every tag the push set, the URL's own (``own``)
    included: the spec's "each accepted tag"."""
    headers = {"Docker-Content-Digest": str(result.digest)}
    if result.subject is not None:
        headers["OCI-Subject"] = str(result.subject)
    if result.tags:
        accepted = dict.fromkeys([*([own] if own is not None else []), *result.tags])
        # One list-valued field (RFC 9110 section 5.3): tags cannot contain a comma.
        headers["OCI-Tag"] = ", ".join(accepted)
    return headers


async def get_manifest(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    await authorize(ctx, request, [repository(route.name, PULL)])
    manifest = await ctx.manifests.get(route.name, route.reference)
    # A schema1 manifest left by registry:2 is served to the old client that asks for it.
    if _only_schema1(request) and manifest.media_type not in mediatypes.SCHEMA1_TYPES:
        raise RegistryError(
            MANIFEST_UNKNOWN,
            {"reference": route.reference, "mediaType": manifest.media_type},
            "the client accepts only Docker schema1 manifests, and this manifest is not one "
            "(schema1 is never converted to); upgrade the client (docker 1.10 or later) to "
            "pull schema2/OCI",
        )
    validators = {"Docker-Content-Digest": str(manifest.digest), "ETag": f'"{manifest.digest}"'}
    if conditional.none_match(request, validators["ETag"]):
        return responses.not_modified(request, validators)  # the client holds it: not a pull
    # A HEAD transfers nothing, but one by tag is how containerd (and so every Kubernetes
    # node) resolves the tag it pulls, then GETs by digest: the tag is in no other request.
    # registry:2 sends a pull for every HEAD; a HEAD by digest is an existence check.
    if request.method == b"GET" or _tag(route) is not None:
        ctx.notifier.manifest_pulled(
            request, route.name, manifest.media_type, manifest.digest, manifest.size, _tag(route)
        )
    # Like registry:2 v3, the stored manifest is served even when Accept leaves its type out:
    # converting would change its digest.
    return responses.body(
        request,
        200,
        manifest.body,
        manifest.media_type,
        validators,
    )


async def put_manifest(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    refuse_if_readonly(ctx)
    await authorize(ctx, request, [repository(route.name, PULL, PUSH)])
    tags = _tag_parameters(request)
    content = request.content.read()
    try:
        result = await ctx.manifests.put(
            route.name, route.reference, content, request_header(request, "content-type"), tags
        )
    except (ManifestTooLarge, IndexChildUnknown) as error:
        raise RegistryError(
            error.code, error.detail, error.message, status=_PUT_STATUS[type(error)]
        ) from None
    # One push event per tag the request set (registry:2's event carries one tag), else one
    # untagged event for a push by digest.
    own = _tag(route)
    tagged: list[str | None] = [own] if own is not None else []
    tagged += [tag for tag in result.tags if tag != own]
    for tag in tagged or [None]:
        ctx.notifier.manifest_pushed(
            request, route.name, result.media_type, result.digest, len(content), tag
        )
    headers = _put_headers(result, own)
    headers["Location"] = url_for(ctx, request, f"/v2/{route.name}/manifests/{result.digest}")
    return responses.empty(request, 201, headers)


async def delete_manifest(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    refuse_if_delete_disabled(ctx)
    await authorize(ctx, request, [repository(route.name, DELETE)])
    reference = route.digest if route.is_digest_reference else route.reference
    await delete_reference(ctx, request, route.name, reference)
    return responses.empty(request, 202)


async def delete_reference(
    ctx: RegistryContext, request: IRequest, name: str, reference: str | Digest
) -> None:
    """
    Delete a manifest by digest (with every tag pointing at it) or untag a tag, and notify it
    as registry:2 does: the digest's ``delete`` event, then one ``delete`` event with ``tag``
    for each tag that went with it, so that a receiver tracking tags forgets them.  The API's
    DELETE and the UI's delete button both come here.
    """
    if isinstance(reference, Digest):
        removed = await ctx.manifests.delete(name, reference)
        ctx.notifier.manifest_deleted(request, name, reference)
        for tag in removed:
            ctx.notifier.tag_deleted(request, name, tag)
    else:
        await ctx.manifests.untag(name, reference)
        ctx.notifier.tag_deleted(request, name, reference)
