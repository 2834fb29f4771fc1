"""
The UI's routes, under ``/ui/`` (mounted by `registry.app`):

    /ui/                                   repositories (?q= substring, ?source=, ?last=)
    /ui/r/<name>                           a repository's tags, newest first (?q=, ?offset=)
    /ui/r/<name>/-/manifest/<reference>    a manifest or index (tag or digest)
    /ui/r/<name>/-/layer/<digest>          a layer (?manifest= the image it was reached from)
    /ui/r/<name>/-/delete                  POST: delete a tag or manifest
    /ui/cache   /ui/storage                the pull-through caches; storage and operations
    /ui/static/<file>                      the stylesheet and script

``-`` cannot be a component of a repository name, so ``/-/`` splits name from action.  Every
page authenticates like the API (a 401 carries the same challenge, so a browser asks for Basic
credentials) and every repository is checked with the API's access controller: pull to view,
delete to delete; the list needs what the catalog needs and shows only what the caller may
pull.
"""

from __future__ import annotations

import bisect
import re
from typing import Any
from urllib.parse import parse_qs, urlencode

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.template import Tag, flattenString
from werkzeug.exceptions import HTTPException

from registry.api.digests import Digest
from registry.api.errors import (
    NAME_UNKNOWN,
    NOT_FOUND,
    PAGINATION_NUMBER_INVALID,
    UNSUPPORTED,
    RegistryError,
)
from registry.api.names import is_valid_name
from registry.auth.interfaces import CATALOG, DELETE, PULL, Principal, repository
from registry.failures import log_failure
from registry.handlers.common import (
    authorize,
    error_for,
    query,
    refuse_if_delete_disabled,
)
from registry.handlers.context import RegistryContext
from registry.handlers.manifests import delete_reference
from registry.http.forwarded import origin
from registry.http.headers import request_header
from registry.logtext import one_line
from registry.ops import gcstatus
from registry.storage.driver import StorageError
from registry.storage.manifests import parse_reference
from registry.storage.repositories import repository_exists
from registry.ui import _data, _format, _ops, _pages, _static
from registry.ui._security import CsrfTokens, check_same_origin, set_page_headers
from registry.ui._sizes import RepositorySizes
from registry.ui._tagtimes import TagTimes

log = Logger()


# Neither a repository name nor a tag holds more than 255 characters, or any control
# character: a search for such text matches nothing, and echoing it into the page (a NUL is
# a parse error in HTML) or into the paging links would only carry it further.
_SEARCH_MAX = 255
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _search_text(request: IRequest) -> str:
    """The ``q`` search text, without control characters and cut to what a name can hold."""
    return _CONTROL.sub("", query(request, "q") or "")[:_SEARCH_MAX]


def _offset(value: str | None) -> int:
    """
    A page's ``offset``: absent or empty is the first page; anything but a number of up to
    nine digits is refused (400) rather than quietly read as 0, which would show the first
    page as if it were the one asked for.
    """
    if not value:
        return 0
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise RegistryError(
            PAGINATION_NUMBER_INVALID,
            {"offset": value[:50]},
            "Not a valid offset: a number from 0 to 999999999.",
            status=400,
        )
    return int(value)


# The methods the registry routes (`registry.app.METHODS`, all sent to the UI under ``/ui/``),
# so that one a page does not take is answered here, as a page with an ``Allow``, not by the
# API's 404.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_PAGE_METHODS = ("GET", "HEAD")


def _not_allowed(allowed: tuple[str, ...] | list[str]) -> RegistryError:
    return RegistryError(
        UNSUPPORTED,
        {"allowed": list(allowed)},
        "method not allowed",
        status=405,
        headers={"Allow": ", ".join(allowed)},
    )


def _href(path: str, **params: str | int | None) -> str:
    kept = {k: str(v) for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


# Where the API's words are about a request a person did not write (a manifest PUT's tag).
_PAGE_MESSAGES = {
    "TAG_INVALID": "Not a valid tag: a tag is up to 128 letters, digits, '_', '.' and '-'.",
    "DIGEST_INVALID": "Not a valid digest (algorithm:hex, as sha256:…).",
}


def _pull_host(request: IRequest) -> str:
    """
    The registry's address as a pull command names it: what the person reached, without
    ``:443`` when that was HTTPS (docker and podman name an image by host and port, so
    ``reg.example.com:443/app`` would be another registry to their credentials).
    """
    seen = origin(request)
    host = seen.host or "localhost"
    if seen.scheme == "https" and host.endswith(":443"):
        return host.removesuffix(":443")
    return host


def _not_found(what: str) -> RegistryError:
    return RegistryError(NOT_FOUND, {"path": what[:300]}, "no such page")


def _last_page_start(count: int, page_size: int) -> int:
    """Where the last page of ``count`` rows begins (0 when there are none)."""
    return max(0, (count - 1) // page_size * page_size)


@attrs.define
class UiApp:
    ctx: RegistryContext
    tag_times: TagTimes
    reader: _data.LocalReader = attrs.field(
        default=attrs.Factory(lambda self: _data.LocalReader.of(self.ctx), takes_self=True)
    )
    sizes: RepositorySizes = attrs.field(
        default=attrs.Factory(
            lambda self: RepositorySizes(self.ctx.driver, self.ctx.reactor), takes_self=True
        )
    )
    csrf: CsrfTokens = attrs.field(
        default=attrs.Factory(lambda self: CsrfTokens(self.ctx.driver), takes_self=True)
    )
    page_size: int = 50
    storage_facts: _ops.StorageFacts = attrs.field(
        default=attrs.Factory(lambda self: _ops.StorageFacts(self.ctx), takes_self=True)
    )

    router = Klein()

    # -- rendering

    async def _render(
        self,
        request: IRequest,
        title: str,
        active: str,
        principal: Principal | None,
        content: Any,
        status: int = 200,
    ) -> bytes:
        request.setResponseCode(status)
        set_page_headers(request)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        user = principal.name if principal is not None else None
        tree: Tag = _pages.page(title, active, user, content)
        body: bytes = await flattenString(request, tree)
        return b"<!DOCTYPE html>\n" + body

    # -- access

    async def _may_delete(self, request: IRequest, name: str) -> bool:
        if self.ctx.config.maintenance.readonly or not self.ctx.config.storage.delete_enabled:
            return False
        if _data.source_of(self.ctx, name) is not None:
            return False  # cached content is the upstream's: deletes are refused
        try:
            await self.ctx.access.authorize(request, [repository(name, DELETE)])
        except RegistryError:
            return False
        return True

    async def _registry_wide(self, request: IRequest) -> Principal:
        """
        Who may see a page about the whole registry (the list, the caches, the storage):
        whoever may read `GET /v2/_catalog`.  Under token auth that takes a token saying so
        (``registry:catalog:*``), as registry:2 and Harbor insist, so a token for one
        repository, or for none, sees no names and no registry-wide facts here either.
        """
        principal = await authorize(self.ctx, request, [CATALOG])
        if principal.name is None:
            # anonymous_pull opens the catalog to callers without credentials, but these
            # pages ask everyone to sign in (docs/ui.md): the same challenge as the others.
            principal = await authorize(self.ctx, request, [])
        return principal

    # -- pages

    @router.route("/", methods=["GET", "HEAD"])
    async def repositories(self, request: IRequest) -> bytes:
        # The catalog with pictures: may_pull filters as the catalog does.
        principal = await self._registry_wide(request)
        text = _search_text(request)
        source = query(request, "source") or ""
        last = query(request, "last") or ""
        names, _ = await self.ctx.catalog.list_repositories()
        may_pull = self.ctx.access.may_pull
        visible = [n for n in names if text in n and may_pull(principal, n)]
        if source:
            wanted = None if source == "hosted" else source
            visible = [n for n in visible if _data.source_of(self.ctx, n) == wanted]
        start = 0
        if last:
            start = bisect.bisect_right(visible, last)
        shown = visible[start : start + self.page_size]
        # The names are what the catalog lists; tag counts and sizes are what `tags/list` and
        # pulls tell, so only for a repository the caller may pull (under token auth a token
        # listing the catalog may pull nothing).
        pulls = self.ctx.access.pull_check(request, principal)
        pullable = [n for n in shown if pulls(n)]
        counts = await gatherResults(
            [Deferred.fromCoroutine(_data.tag_count(self.ctx, n)) for n in pullable],
            consumeErrors=True,
        )
        locals_ = [_data.local_name(self.ctx, n) for n in pullable]
        sizes = await gatherResults(
            [Deferred.fromCoroutine(self.sizes.size(n)) for n in locals_], consumeErrors=True
        )
        known = dict(zip(pullable, zip(counts, sizes, strict=True), strict=True))
        rows = [
            _data.RepositoryRow(n, _data.source_of(self.ctx, n), *known.get(n, (None, None)))
            for n in shown
        ]
        more = start + self.page_size < len(visible)
        router = _data.router_of(self.ctx)
        sources = [str(c.name) for c in router.caches] if router is not None else []
        content = _pages.repositories(
            rows,
            len(visible),
            text,
            source,
            sources,
            _href("/ui/", q=text, source=source, last=shown[-1]) if more and shown else "",
            _href("/ui/", q=text, source=source) if last else "",
        )
        # Opening one of them next is quick: their tag dates are read in the background, once
        # this page is done.
        self.ctx.reactor.callLater(0, self.tag_times.warm, locals_)
        return await self._render(request, "Repositories", "repositories", principal, content)

    @router.route("/r/<path:rest>", methods=_METHODS)
    async def repository_pages(self, request: IRequest, rest: str) -> bytes | None:
        # Every method comes here: which one a path takes depends on the path (a delete is a
        # POST, every other page a GET), and the 405 must say so in ``Allow``.
        method = request.method.decode("latin-1")
        name, sep, action = rest.partition("/-/")
        if sep and not action:  # ``/ui/r/team/app/-/``: no page of that name
            raise _not_found(rest)
        if not action and rest.endswith("/") and is_valid_name(rest.rstrip("/")):
            if method not in _PAGE_METHODS:
                raise _not_allowed(_PAGE_METHODS)
            # ``/ui/r/team/app/``: the repository, as a person who typed a slash meant.
            request.setResponseCode(301)
            set_page_headers(request)
            request.setHeader("Location", _pages.repo_url(rest.rstrip("/")))
            return b""
        if not is_valid_name(name):
            raise _not_found(rest)
        allowed = ("POST",) if action == "delete" else _PAGE_METHODS
        if method not in allowed:
            raise _not_allowed(allowed)
        if method == "POST":
            return await self._delete(request, name)
        if not action:
            return await self._repository(request, name)
        kind, _, reference = action.partition("/")
        if kind == "manifest" and reference:
            return await self._manifest(request, name, reference)
        if kind == "layer" and reference:
            return await self._layer(request, name, reference)
        raise _not_found(rest)

    async def _repository(self, request: IRequest, name: str) -> bytes:
        principal = await authorize(self.ctx, request, [repository(name, PULL)])
        local = _data.local_name(self.ctx, name)
        # Existence first: the bounded memo of tag dates must hold only repositories that
        # exist, or views of names that are none (typos, probes) would fill it and push real
        # ones out.  One remembered was seen to exist; it is looked at again only when it shows
        # no tags (its folder may be gone since).
        remembered = self.tag_times.remembers(local)
        if not remembered and not await repository_exists(self.ctx.driver, local):
            raise RegistryError(NAME_UNKNOWN, {"name": name})
        ordered, dates = await self.tag_times.newest_first(local)
        if remembered and not ordered and not await repository_exists(self.ctx.driver, local):
            raise RegistryError(NAME_UNKNOWN, {"name": name})
        text = _search_text(request)
        matching = [t for t in ordered if text in t] if text else ordered
        offset = _offset(query(request, "offset"))
        shown = matching[offset : offset + self.page_size]
        rows = await _data.tag_rows(self.reader, local, [(t, dates.get(t)) for t in shown])
        token = await self.csrf.token(principal) if await self._may_delete(request, name) else None
        path = _pages.repo_url(name)
        # Past the end (a stale link, a hand-made offset), "previous" is the last page there
        # is, not another empty one before it.
        before = min(offset - self.page_size, _last_page_start(len(matching), self.page_size))
        prev_href = _href(path, q=text, offset=max(0, before) or None) if offset else ""
        next_href = (
            _href(path, q=text, offset=offset + self.page_size)
            if offset + self.page_size < len(matching)
            else ""
        )
        message = await self._deleted_message(
            principal, name, query(request, "deleted"), query(request, "proof")
        )
        content = _pages.repository(
            name,
            _data.source_of(self.ctx, name),
            rows,
            len(matching),
            text,
            prev_href,
            next_href,
            token,
            message,
        )
        return await self._render(request, name, "repositories", principal, content)

    async def _deleted_message(
        self, principal: Principal, name: str, value: str | None, proof: str | None
    ) -> str | None:
        """
        The note a delete's redirect asks for (``?deleted=REFERENCE&proof=...``), said only
        when the proof is one this user's delete was given a moment ago (`CsrfTokens`): a link
        someone else made cannot put words of theirs on the page, nor a claim that something
        was deleted.  That a tag is not listed now proves nothing (it may never have been).
        """
        if not value or _data.source_of(self.ctx, name) is not None:
            return None  # nothing is deleted from a cache through the UI
        now = float(self.ctx.reactor.seconds())
        if not await self.csrf.proves_deleted(principal, name, value, proof, now):
            return None
        return f"Deleted {value}."

    async def _log_foreign_delete(
        self, request: IRequest, name: str, refused: RegistryError
    ) -> None:
        """A delete a browser sent from another site (or could not say from where) is refused
        before anything else; one warning says whose session it came with, so that a
        security team can tell whom a cross-site attempt aimed at.  The credentials are
        checked for that (the access line then names the user too); a refusal of them is
        said as such."""
        try:
            principal = await authorize(self.ctx, request, [])  # who, not what they may do
            who = one_line(principal.name, 200) if principal.name else "anonymous"
        except RegistryError:
            who = "credentials not accepted"
        reason = refused.detail.get("reason") if isinstance(refused.detail, dict) else None
        log.warn(
            "UI delete in {name} refused: {reason} (Origin {origin}, Referer {referer}; as {who})",
            name=name,
            reason=reason or refused.message,
            origin=one_line(request_header(request, "origin") or "-", 200),
            referer=one_line(request_header(request, "referer") or "-", 200),
            who=who,
        )

    async def _manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        principal = await authorize(self.ctx, request, [repository(name, PULL)])
        ref = parse_reference(reference)
        stored = await _data.stored_manifest(self.ctx, name, reference)
        parsed = await _data.parse_shown(self.ctx.reactor, stored.body)
        platforms: list[tuple[str, str, str, int, bool]] = []
        config = None
        layers: list[_data.Layer] = []
        subject = None
        if parsed is not None:
            shown = parsed.manifests[: _pages.MAX_ROWS]
            held = await _data.stored_children(self.ctx, name, [c.digest for c in shown])
            platforms = [
                (
                    _format.platform(c.platform),
                    str(c.digest),
                    c.media_type,
                    c.size,
                    c.digest in held,
                )
                for c in shown
            ]
            local = _data.local_name(self.ctx, name)
            config = await _data.read_config(self.reader.blobs, local, parsed)
            layers = _data.layers_with_history(parsed, config)
            subject = str(parsed.subject.digest) if parsed.subject is not None else None
        referrers_error, referrers_cut = None, False
        try:
            # One page of the referrers API: bounded in bytes, however many a client pushed.
            referrers, referrers_cut = await _data.stored_referrers(self.ctx, name, stored.digest)
        except (RegistryError, StorageError) as exc:
            # The manifest itself was there (a cached one served while its upstream is down):
            # the page shows it, and says the referrers could not be listed.
            referrers, referrers_error = [], str(exc)
        token = await self.csrf.token(principal) if await self._may_delete(request, name) else None
        host = _pull_host(request)
        content = _pages.manifest(
            name,
            reference,
            str(stored.digest),
            stored.media_type,
            stored.size,
            host,
            ref if isinstance(ref, str) else None,
            platforms,
            config,
            layers,
            _data.group_referrers(referrers),
            subject,
            token,
            referrers_error=referrers_error,
            referrers_cut=referrers_cut,
            annotations=parsed.annotations if parsed is not None else None,
            platform_count=len(parsed.manifests) if parsed is not None else None,
        )
        title = (
            f"{name}:{ref}" if isinstance(ref, str) else f"{name}@{_format.short_digest(str(ref))}"
        )
        return await self._render(request, title, "repositories", principal, content)

    async def _layer(self, request: IRequest, name: str, reference: str) -> bytes:
        principal = await authorize(self.ctx, request, [repository(name, PULL)])
        digest = Digest.parse(reference)
        media_type, size, created_by, position = "", None, None, None
        manifest_ref = query(request, "manifest") or ""
        if manifest_ref:
            stored = await _data.stored_manifest(self.ctx, name, Digest.parse(manifest_ref))
            parsed = await _data.parse_shown(self.ctx.reactor, stored.body)
            if parsed is not None:
                local = _data.local_name(self.ctx, name)
                config = await _data.read_config(self.reader.blobs, local, parsed)
                for i, layer in enumerate(_data.layers_with_history(parsed, config)):
                    if layer.digest == digest:
                        media_type, size, created_by = (
                            layer.media_type,
                            layer.size,
                            layer.created_by,
                        )
                        position = i + 1
                        break
        if size is None:
            size = await _data.stored_blob_size(self.ctx, name, digest)
        content = _pages.layer(
            name, manifest_ref, str(digest), media_type, size, created_by, position
        )
        title = f"Layer {_format.short_digest(str(digest))}"
        return await self._render(request, title, "repositories", principal, content)

    async def _delete(self, request: IRequest, name: str) -> bytes | None:
        try:
            check_same_origin(request)
        except RegistryError as refused:
            await self._log_foreign_delete(request, name, refused)
            raise
        principal = await authorize(self.ctx, request, [repository(name, DELETE)])
        form = _form(request)
        await self.csrf.check(principal, form.get("csrf"))
        refuse_if_delete_disabled(self.ctx)
        if _data.source_of(self.ctx, name) is not None:
            # The store would refuse as the API's manifest routes do (``Allow: GET, HEAD``);
            # this page takes no method for a cached repository.  (Loaded here: only a
            # registry with a cache has it loaded, see `_data.router_of`.)
            from registry.proxy.routing import refuse_write

            raise refuse_write(name, allow="")
        reference = form.get("reference", "")
        await delete_reference(self.ctx, request, name, parse_reference(reference))
        log.info(
            "ui: {user!r} deleted {name}:{reference}",
            user=principal.name,
            name=name,
            reference=reference,
        )
        now = float(self.ctx.reactor.seconds())
        proof = await self.csrf.deleted_proof(principal, name, reference, now)
        request.setResponseCode(303)
        set_page_headers(request)
        location = _href(_pages.repo_url(name), deleted=reference, proof=proof)
        request.setHeader("Location", location)
        return b""

    @router.route("/cache", methods=["GET", "HEAD"])
    async def cache(self, request: IRequest) -> bytes:
        principal = await self._registry_wide(request)
        router = _data.router_of(self.ctx)
        rows = [_ops.cache_row(c) for c in router.caches] if router is not None else []
        content = _pages.cache(rows)
        return await self._render(request, "Cache", "cache", principal, content)

    @router.route("/storage", methods=["GET", "HEAD"])
    async def storage(self, request: IRequest) -> bytes:
        principal = await self._registry_wide(request)
        status = await gcstatus.last(self.ctx.driver)
        # What the caller may pull, as the API would answer it (not what the catalog lists).
        pulls = self.ctx.access.pull_check(request, principal)
        items, whole = await self.storage_facts.items(status, pulls, self.tag_times.known)
        gc = _ops.gc_items(status, whole) if status is not None else None
        content = _pages.storage(items, gc)
        return await self._render(request, "Storage and operations", "storage", principal, content)

    @router.route("/static/<file>", methods=["GET", "HEAD"])
    def static(self, request: IRequest, file: str) -> bytes:
        found = _static.FILES.get(file)
        if found is None:
            raise _not_found(file)
        body, kind = found
        set_page_headers(request, cache="public, max-age=3600")
        request.setHeader("Content-Type", kind)
        return body

    # -- errors, rendered as pages (with the API's status codes and challenges)

    async def _error_page(self, request: IRequest, error: RegistryError) -> bytes:
        for name, value in error.headers.items():
            request.setHeader(name, value)
        title = {
            400: "Bad request",
            401: "Sign in required",
            403: "Access denied",
            404: "Not found",
            405: "Method not allowed",
        }.get(error.status, "Error")
        detail = error.detail if isinstance(error.detail, str) else None
        message = _PAGE_MESSAGES.get(error.code.value, error.message)
        if message != error.message:
            detail = None  # the page's words say it all
        elif isinstance(error.detail, dict) and "reason" in error.detail:
            detail = str(error.detail["reason"])
        elif isinstance(error.detail, dict) and isinstance(error.detail.get("denied"), list):
            detail = "Not granted: " + " ".join(map(str, error.detail["denied"]))
        content = _pages.error(message, detail)
        # A caller whose credentials were checked (then refused access, or shown a page that
        # is not there) is still signed in: the header says so, as on every other page.
        known = getattr(request, "principal_name", None)
        principal = Principal(known) if error.status != 401 and known else None
        return await self._render(request, title, "", principal, content, status=error.status)

    @router.handle_errors(RegistryError)
    def registry_error(self, request: IRequest, failure: Failure) -> Deferred[bytes]:
        error = failure.value
        assert isinstance(error, RegistryError)
        return Deferred.fromCoroutine(self._error_page(request, error))

    @router.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> Deferred[bytes]:
        status = getattr(failure.value, "code", 404) or 404
        # werkzeug's 405 knows the route's methods (a GET route takes HEAD too), in no
        # particular order: said in ours.
        valid = getattr(failure.value, "valid_methods", None) or _PAGE_METHODS
        error = (
            _not_allowed([m for m in _METHODS if m in valid])
            if status == 405
            else _not_found(request.uri.decode("latin-1"))
        )
        return Deferred.fromCoroutine(self._error_page(request, error))

    @router.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> Deferred[bytes] | bytes:
        if failure.check(CancelledError):
            return b""
        # Storage trouble (503) in one line, anything unforeseen (500) with its traceback, as
        # the API logs them.
        log_failure(
            log,
            failure,
            "ui: storage failure on {method} {uri}"
            if failure.check(StorageError)
            else "ui: unexpected error on {method} {uri}",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1")[:300],
        )
        return Deferred.fromCoroutine(self._error_page(request, error_for(failure.value)))


# A delete form is two short fields; anything longer is not one of ours.
_MAX_FORM = 8 * 1024


def _form(request: IRequest) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` body (first value of each)."""
    kind = (request_header(request, "content-type") or "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded" or request.content is None:
        return {}
    request.content.seek(0)
    data = request.content.read(_MAX_FORM + 1)
    if len(data) > _MAX_FORM:
        return {}
    fields = parse_qs(data.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items() if values}
