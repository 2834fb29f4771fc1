"""
The pages, as `twisted.web.template` tag trees (escaping is the flattener's job, so nothing read
from storage or the request can become markup).  Each function takes plain data and returns
the ``<main>`` content; `page` wraps it in the shared layout.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from twisted.web.template import Tag, tags

from registry.ui import _format, _static
from registry.ui._data import Layer, RepositoryRow, TagRow

NAV = (("repositories", "/ui/", "Repositories"), ("cache", "/ui/cache", "Cache"))
NAV_STORAGE = ("storage", "/ui/storage", "Storage")

# Anything the flattener takes: tags, strings, lists of them.
Content = Any

# The most rows one table or list of a manifest page shows (an index's platforms, an image's
# layers, one kind of referrer, environment variables, labels); real ones are far shorter,
# and a 4 MiB manifest could otherwise make a page of tens of megabytes.
MAX_ROWS = 500
# The most platforms one row of a repository's tag list names.
MAX_ROW_PLATFORMS = 6


def repo_url(name: str) -> str:
    return f"/ui/r/{quote(name)}"


def manifest_url(name: str, reference: str) -> str:
    return f"/ui/r/{quote(name)}/-/manifest/{quote(reference)}"


def layer_url(name: str, manifest: str, digest: str) -> str:
    return f"/ui/r/{quote(name)}/-/layer/{quote(digest)}?{urlencode({'manifest': manifest})}"


def page(title: str, active: str, user: str | None, content: Content) -> Tag:
    links = [*NAV, NAV_STORAGE]
    nav = tags.ul(
        *[
            tags.li(tags.a(href=href, **({"aria-current": "page"} if key == active else {}))(label))
            for key, href, label in links
        ]
    )
    who = f"Signed in as {user}" if user else "Anonymous"
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            # No icon: without this line browsers ask for /favicon.ico on every page.
            tags.link(rel="icon", href="data:,"),
            tags.title(f"{title} · txregistry"),
            tags.link(rel="stylesheet", href=_static.url("ui.css")),
            tags.script(src=_static.url("ui.js"), defer="defer"),
        ),
        tags.body(
            tags.a(class_="skip", href="#main")("Skip to content"),
            tags.header(
                tags.a(class_="brand", href="/ui/")("txregistry"),
                tags.nav(**{"aria-label": "Main"})(nav),
                tags.span(class_="user")(who),
            ),
            Tag("main")(id="main")(tags.h1(title), content),
        ),
    )


def _table(
    caption: str, headers: Sequence[str], rows: Iterable[Sequence[Content]], **attrs: str
) -> Tag:
    return tags.div(class_="scroll")(
        tags.table(**attrs)(
            tags.caption(caption),
            tags.thead(tags.tr(*[tags.th(scope="col")(h) for h in headers])),
            tags.tbody(*[tags.tr(*[tags.td(cell) for cell in row]) for row in rows]),
        )
    )


def _more(shown: int, total: int, what: str) -> Content:
    """A note under a list cut at ``shown`` of ``total``."""
    if total <= shown:
        return ""
    return tags.p(class_="meta")(f"{total - shown} more {what} not shown.")


def _pager(links: Sequence[tuple[str, str, str]]) -> Tag:
    """``(label, href, rel)`` links; an empty href is left out."""
    return tags.nav(class_="pager", **{"aria-label": "Pages"})(
        *[tags.a(href=href, rel=rel)(label) for label, href, rel in links if href]
    )


def _copy(command: str, label: str) -> Tag:
    return tags.div(class_="copy")(
        tags.code(command),
        tags.button(type="button", **{"data-copy": command, "aria-label": label})("Copy"),
    )


def _message(text: str | None) -> Content:
    return tags.p(class_="message", role="status")(text) if text else ""


def repositories(
    rows: Sequence[RepositoryRow],
    matched: int,
    query: str,
    source: str,
    sources: Sequence[str],
    next_href: str,
    first_href: str,
) -> Content:
    options = [("", "All"), ("hosted", "Hosted"), *[(s, f"Cached: {s}") for s in sources]]
    form = tags.form(method="get", action="/ui/", class_="search", role="search")(
        tags.label(for_="q")("Search repositories"),
        tags.input(id="q", name="q", type="search", value=query),
        tags.label(for_="source")("Source"),
        tags.select(id="source", name="source")(
            *[
                tags.option(value=value, **({"selected": "selected"} if value == source else {}))(
                    label
                )
                for value, label in options
            ]
        ),
        tags.button(type="submit")("Search"),
    )
    table = _table(
        f"{matched} repositories",
        ["Repository", "Source", "Tags", "Size"],
        (
            [
                tags.a(href=repo_url(row.name))(row.name),
                f"cache: {row.source}" if row.source else "hosted",
                "—" if row.tags is None else str(row.tags),
                _format.size(row.size),
            ]
            for row in rows
        ),
        id="repositories",
    )
    empty = tags.p("No repository matches.") if not rows else ""
    return [
        form,
        table,
        empty,
        _pager([("First page", first_href, "first"), ("Next page", next_href, "next")]),
    ]


def repository(
    name: str,
    source: str | None,
    rows: Sequence[TagRow],
    matched: int,
    query: str,
    prev_href: str,
    next_href: str,
    delete_token: str | None,
    message: str | None,
) -> Content:
    head = tags.p(class_="meta")(
        f"Cached from upstream {source}" if source else "Hosted here",
        f" · {matched} tags",
    )
    form = tags.form(method="get", action=repo_url(name), class_="search", role="search")(
        tags.label(for_="q")("Filter tags"),
        tags.input(id="q", name="q", type="search", value=query, **{"data-filter": "tags"}),
        tags.button(type="submit")("Filter"),
    )
    headers = ["Tag", "Digest", "Media type", "Size", "Platforms", "Cached" if source else "Pushed"]
    if delete_token is not None:
        headers.append("Delete")

    def cells(row: TagRow) -> list[Content]:
        digest: Content = (
            tags.a(href=manifest_url(name, str(row.digest)))(
                tags.code(_format.short_digest(str(row.digest)))
            )
            if row.digest
            else "—"
        )
        out: list[Content] = [
            tags.a(href=manifest_url(name, row.tag))(row.tag),
            digest,
            _format.clip(row.media_type, 200) or "—",
            _format.size(row.size),
            _format.listed(row.platforms, MAX_ROW_PLATFORMS) or "—",
            _format.date(row.date),
        ]
        if delete_token is not None:
            out.append(delete_form(name, row.tag, delete_token, f"Delete tag {row.tag}"))
        return out

    table = _table(f"Tags of {name}, newest first", headers, (cells(r) for r in rows), id="tags")
    empty = tags.p("No tag matches.") if not rows else ""
    pager = _pager([("Previous page", prev_href, "prev"), ("Next page", next_href, "next")])
    return [_message(message), head, form, table, empty, pager]


def delete_form(name: str, reference: str, token: str, label: str) -> Tag:
    return tags.form(method="post", action=f"{repo_url(name)}/-/delete", class_="delete")(
        tags.input(type="hidden", name="reference", value=reference),
        tags.input(type="hidden", name="csrf", value=token),
        tags.button(type="submit", class_="danger", **{"aria-label": label})("Delete"),
    )


def _definitions(items: Sequence[tuple[str, Content]]) -> Tag:
    out: list[Tag] = []
    for term, value in items:
        out.extend([tags.dt(term), tags.dd(value)])
    return tags.dl(*out)


def _words(value: Any) -> str:
    """An entrypoint or cmd as docker inspect shows it: the JSON array."""
    if value is None:
        return "—"
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def _child_link(name: str, child: str, held: bool) -> Content:
    """An index's platform: a link to its manifest, or, when this repository does not hold it
    (deleted since, or in a cache not pulled yet), its digest and why there is no link."""
    digest = tags.code(_format.short_digest(child))
    if held:
        return tags.a(href=manifest_url(name, child))(digest)
    why = "This repository does not hold this manifest: deleted, or not pulled into the cache yet."
    return tags.span(class_="missing", title=why)(digest, " (not stored here)")


def manifest(
    name: str,
    reference: str,
    digest: str,
    media_type: str,
    size: int,
    host: str,
    tag: str | None,
    platforms: Sequence[tuple[str, str, str, int, bool]],
    config: Mapping[str, Any] | None,
    layers: Sequence[Layer],
    referrers: Mapping[str, Sequence[Mapping[str, Any]]],
    subject: str | None,
    delete_token: str | None,
    *,
    referrers_error: str | None = None,
    referrers_cut: bool = False,
    annotations: Mapping[str, str] | None = None,
    platform_count: int | None = None,
) -> Content:
    parts: list[Content] = []
    summary: list[tuple[str, Content]] = [
        ("Repository", tags.a(href=repo_url(name))(name)),
        ("Digest", tags.code(digest)),
        ("Media type", _format.clip(media_type, 200)),
        ("Manifest size", _format.size(size)),
    ]
    if subject:
        summary.append(("Subject", tags.a(href=manifest_url(name, subject))(tags.code(subject))))
    parts.append(_definitions(summary))
    pulls = [_copy(f"docker pull {host}/{name}@{digest}", "Copy the pull command by digest")]
    if tag:
        pulls.insert(0, _copy(f"docker pull {host}/{name}:{tag}", "Copy the pull command by tag"))
    parts.append(tags.section(tags.h2("Pull"), *pulls))
    if platforms:
        parts.append(
            tags.section(
                tags.h2("Platforms"),
                _table(
                    "Platforms of this index",
                    ["Platform", "Manifest", "Media type", "Size"],
                    (
                        [
                            platform,
                            _child_link(name, child, held),
                            _format.clip(child_type, 200),
                            _format.size(child_size),
                        ]
                        for platform, child, child_type, child_size, held in platforms[:MAX_ROWS]
                    ),
                    id="platforms",
                ),
                _more(MAX_ROWS, platform_count or len(platforms), "platforms"),
            )
        )
    if annotations:
        # The first keys in order, without sorting them all: a manifest may hold 100,000.
        keys = heapq.nsmallest(MAX_ROWS, annotations)
        parts.append(
            tags.section(id="annotations")(
                tags.h2("Annotations"),
                _definitions(
                    [(_format.clip(k, 200), _format.clip(annotations[k])) for k in keys[:MAX_ROWS]]
                ),
                _more(MAX_ROWS, len(annotations), "annotations"),
            )
        )
    if config is not None:
        parts.append(tags.section(tags.h2("Configuration"), _config(config)))
    if layers:
        total = sum(layer.size for layer in layers)
        parts.append(
            tags.section(
                tags.h2("Layers"),
                _table(
                    f"{len(layers)} layers, {_format.size(total)}",
                    ["#", "Layer", "Size", "Created by"],
                    (
                        [
                            str(i + 1),
                            tags.a(href=layer_url(name, digest, str(layer.digest)))(
                                tags.code(_format.short_digest(str(layer.digest)))
                            ),
                            _format.size(layer.size),
                            tags.code(_format.clip(layer.created_by)) if layer.created_by else "—",
                        ]
                        for i, layer in enumerate(layers[:MAX_ROWS])
                    ),
                    id="layers",
                ),
                _more(MAX_ROWS, len(layers), "layers"),
            )
        )
    parts.append(_referrers(name, referrers, referrers_error, referrers_cut))
    if delete_token is not None:
        parts.append(
            tags.section(
                tags.h2("Delete"),
                tags.p("Deletes this manifest and every tag pointing at it."),
                delete_form(name, digest, delete_token, "Delete this manifest"),
            )
        )
    return parts


def _config(document: Mapping[str, Any]) -> Tag:
    inner = document.get("config")
    settings: Mapping[str, Any] = inner if isinstance(inner, dict) else {}
    env = settings.get("Env") or []
    env = [str(e) for e in env] if isinstance(env, list) else [str(env)]
    labels = settings.get("Labels") or {}
    pairs = [f"{k}={v}" for k, v in sorted(labels.items())] if isinstance(labels, dict) else []
    ports = settings.get("ExposedPorts") or {}
    ports = sorted(map(str, ports)) if isinstance(ports, dict | list) else [str(ports)]

    def listing(values: list[str], what: str) -> Content:
        if not values:
            return "—"
        shown = [tags.li(tags.code(_format.clip(v))) for v in values[:MAX_ROWS]]
        return [tags.ul(*shown), _more(MAX_ROWS, len(values), what)]

    def text(value: Any) -> str:
        return _format.clip(str(value)) if value else "—"

    items: list[tuple[str, Content]] = [
        ("Created", text(document.get("created"))),
        ("Platform", _format.platform(document)),
        ("Entrypoint", tags.code(_format.clip(_words(settings.get("Entrypoint"))))),
        ("Cmd", tags.code(_format.clip(_words(settings.get("Cmd"))))),
        ("Working directory", text(settings.get("WorkingDir"))),
        ("User", text(settings.get("User"))),
        ("Exposed ports", _format.clip(_format.listed(ports, MAX_ROW_PLATFORMS * 4)) or "—"),
        ("Environment", listing(env, "variables")),
        ("Labels", listing(pairs, "labels")),
    ]
    return _definitions(items)


def _referrers(
    name: str,
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    error: str | None = None,
    cut: bool = False,
) -> Tag:
    """``cut``: more referrers than one page of the referrers API holds (the first shown)."""
    if error is not None:
        return tags.section(id="referrers")(
            tags.h2("Referrers"),
            tags.p(f"Referrers could not be listed: {_format.clip(error, 300)}"),
        )
    if not groups:
        return tags.section(tags.h2("Referrers"), tags.p("No signatures, SBOMs or attestations."))
    sections = [
        tags.section(class_="group")(
            tags.h3(_format.clip(kind, 200)),
            tags.ul(
                *[
                    tags.li(
                        tags.a(href=manifest_url(name, str(d.get("digest"))))(
                            tags.code(_format.short_digest(str(d.get("digest"))))
                        ),
                        f" · {_format.size(d.get('size'))}",
                        *_referrer_notes(d.get("annotations")),
                    )
                    for d in descriptors[:MAX_ROWS]
                ]
            ),
            _more(MAX_ROWS, len(descriptors), "referrers of this kind"),
        )
        for kind, descriptors in groups.items()
    ]
    if cut:
        note = "More referrers than one page of the referrers API: the first page is shown."
        sections.append(tags.p(class_="meta")(note))
    return tags.section(id="referrers")(tags.h2("Referrers"), *sections)


# How many of a referrer's annotations its line shows (a signature's or SBOM's creation time,
# its tool): the referrer's own page has them all.
REFERRER_NOTES = 3


def _referrer_notes(annotations: Any) -> list[str]:
    if not isinstance(annotations, dict):
        return []
    keys = heapq.nsmallest(REFERRER_NOTES, annotations)
    notes = [f" · {_format.clip(f'{k}={annotations[k]}', 100)}" for k in keys]
    if len(annotations) > REFERRER_NOTES:
        notes.append(f" · {len(annotations) - REFERRER_NOTES} more annotations")
    return notes


def layer(
    name: str,
    manifest: str,
    digest: str,
    media_type: str,
    size: int | None,
    created_by: str | None,
    position: int | None,
) -> Content:
    items: list[tuple[str, Content]] = [("Repository", tags.a(href=repo_url(name))(name))]
    if manifest:  # the image the layer was reached from (a bookmarked link may not say)
        items.append(("Image", tags.a(href=manifest_url(name, manifest))(tags.code(manifest))))
    items += [
        ("Digest", tags.code(digest)),
        ("Media type", _format.clip(media_type, 200) or "—"),
        ("Size", _format.size(size)),
        ("Position", str(position) if position is not None else "—"),
        ("Created by", tags.code(_format.clip(created_by)) if created_by else "—"),
        ("Download", tags.a(href=f"/v2/{quote(name)}/blobs/{quote(digest)}")("the layer's bytes")),
    ]
    return _definitions(items)


def cache(rows: Sequence[Mapping[str, Any]]) -> Content:
    if not rows:
        return tags.p("No pull-through cache is configured ([proxy:NAME] sections).")
    return [
        tags.section(class_="upstream")(
            tags.h2(f"{row['name']}"),
            tags.p(class_="meta")(str(row["remote"])),
            _definitions([(term, str(value)) for term, value in row["items"]]),
        )
        for row in rows
    ]


def storage(items: Sequence[tuple[str, str]], gc: Sequence[tuple[str, str]] | None) -> Content:
    gc_part: Content = (
        _definitions([(k, v) for k, v in gc])
        if gc
        else tags.p("No garbage collection has been recorded (txregistry gc records its runs).")
    )
    return [
        tags.section(tags.h2("Storage"), _definitions(list(items))),
        tags.section(tags.h2("Last garbage collection"), gc_part),
    ]


def error(message: str, detail: str | None) -> Content:
    return [tags.p(class_="error")(message), tags.p(detail) if detail else ""]
