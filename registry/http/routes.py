"""
Which registry resource a ``/v2/...`` path names.

Repository names contain ``/`` and may contain words such as ``blobs``, ``manifests`` or
``uploads``, so one Klein route takes the whole rest of the path and this module parses it from
the right-hand end, the way registry:2's router effectively does.  It is pure (used both by the
streaming request, before the body arrives, and by the app) and it validates every name,
reference and upload id it returns, so later code can build storage paths from them safely.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

import attrs
from twisted.web.iweb import IRequest
from zope.interface import Interface

from registry.api.digests import Digest
from registry.api.errors import BLOB_UPLOAD_UNKNOWN, MANIFEST_UNKNOWN, NOT_FOUND, RegistryError
from registry.api.names import check_name, check_tag

_UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class Kind(Enum):
    BASE = "base"
    CATALOG = "catalog"
    TAGS = "tags"
    MANIFEST = "manifest"
    BLOB = "blob"
    UPLOADS = "uploads"  # /blobs/uploads/  (start an upload)
    UPLOAD = "upload"  # /blobs/uploads/<id>
    REFERRERS = "referrers"


@attrs.frozen
class Route:
    kind: Kind
    name: str = ""
    reference: str = ""  # tag or digest text for manifests; digest for blobs/referrers; id
    # Set by a rewriter (`IRouteRewriter`: containerd's ``?ns=``): the namespace honoured, and
    # the repository as the request named it when ``name`` became another.  Answers that name
    # the repository (a tag list's ``name``) or link to the next page use these, as the client
    # knows the repository by its own name.
    namespace: str = ""
    requested: str = ""

    @property
    def requested_name(self) -> str:
        """The repository as the request's path named it."""
        return self.requested or self.name

    @property
    def digest(self) -> Digest:
        return Digest.parse(self.reference)

    @property
    def is_digest_reference(self) -> bool:
        return Digest.is_digest(self.reference)


_PATTERNS: list[tuple[Kind, re.Pattern[str]]] = [
    (Kind.UPLOADS, re.compile(r"(?P<name>.+)/blobs/uploads/?")),
    (Kind.UPLOAD, re.compile(r"(?P<name>.+)/blobs/uploads/(?P<ref>[^/]+)")),
    (Kind.TAGS, re.compile(r"(?P<name>.+)/tags/list")),
    (Kind.MANIFEST, re.compile(r"(?P<name>.+)/manifests/(?P<ref>[^/]+)")),
    (Kind.BLOB, re.compile(r"(?P<name>.+)/blobs/(?P<ref>[^/]+)")),
    (Kind.REFERRERS, re.compile(r"(?P<name>.+)/referrers/(?P<ref>[^/]+)")),
]


def parse_route(rest: str, read: bool = False) -> Route:
    """
    Parse the part of the path after ``/v2/``.  Raises RegistryError: NOT_FOUND for a path the
    API does not have, NAME_INVALID, TAG_INVALID, DIGEST_INVALID or BLOB_UPLOAD_UNKNOWN for a
    malformed component.

    ``read`` (a GET or HEAD) turns a malformed manifest reference into 404 MANIFEST_UNKNOWN:
    nothing can be stored under it, so a read finds nothing, which is what registry:2 answers
    (its router matches no route) and what the distribution-spec conformance suite expects of
    ``GET /v2/<name>/manifests/.INVALID_MANIFEST_NAME``.  Writes keep the 400 that says why.
    """
    if rest in ("", "/"):
        return Route(Kind.BASE)
    if rest in ("_catalog", "_catalog/"):
        return Route(Kind.CATALOG)
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(rest)
        if match is None:
            continue
        name = check_name(match.group("name"))
        reference = match.groupdict().get("ref") or ""
        if kind is Kind.UPLOAD and _UPLOAD_ID_RE.fullmatch(reference) is None:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"upload": reference[:200]})
        if kind in (Kind.BLOB, Kind.REFERRERS):
            Digest.parse(reference)
        if kind is Kind.MANIFEST:
            _check_manifest_reference(name, reference, read)
        return Route(kind, name, reference)
    raise RegistryError(NOT_FOUND, {"path": "/v2/" + rest[:300]})


def _check_manifest_reference(name: str, reference: str, read: bool) -> None:
    try:
        if Digest.is_digest(reference):
            Digest.parse(reference)
        else:
            check_tag(reference)
    except RegistryError as exc:
        if not read:
            raise
        reason = exc.detail.get("reason") if isinstance(exc.detail, dict) else None
        raise RegistryError(
            MANIFEST_UNKNOWN,
            {"name": name, "reference": reference[:300], "reason": reason or exc.message},
        ) from None


class UnservedNamespace(RegistryError):
    """``?ns=`` names no upstream that serves the repository; told only to a caller who may
    read ``checked_name``, the name a served namespace would have been asked for: anyone else
    gets the challenge a served namespace would give them, so the answers do not tell which
    namespaces (or upstream addresses) the cache serves."""

    def __init__(self, checked_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checked_name = checked_name


class IRouteRewriter(Interface):
    """Something that may send a parsed request elsewhere before its handler runs (the
    pull-through router: containerd's ``?ns=`` names the upstream a request is for)."""

    def rewrite_route(request: IRequest, route: Route) -> Route:
        """The route to handle; raise a RegistryError to answer at once (an
        `UnservedNamespace` once the caller may read its ``checked_name``)."""
