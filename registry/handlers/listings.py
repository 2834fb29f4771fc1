"""The paginated lists: tags of a repository, the catalog, and referrers of a manifest."""

from __future__ import annotations

import itertools

from twisted.web.iweb import IRequest

from registry.api import mediatypes
from registry.auth.interfaces import CATALOG, PULL, repository
from registry.handlers.common import authorize, query
from registry.handlers.context import RegistryContext
from registry.handlers.pages import next_link
from registry.http import responses
from registry.http.routes import Route
from registry.storage.pagination import paginate_start, parse_count, repository_order
from registry.storage.referrers import referrers_response


async def list_tags(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    await authorize(ctx, request, [repository(route.name, PULL)])
    n = parse_count(query(request, "n"), ctx.tags.max_page)
    last = query(request, "last")
    tags, more = await ctx.tags.list_tags(route.name, n, last)
    headers = {}
    # The repository as the client named it (the spec's ``name``), also in the next page's
    # link, which keeps containerd's ``?ns=`` so that the page comes from the same upstream.
    name = route.requested_name
    if more and tags:
        headers["Link"] = next_link(f"/v2/{name}/tags/list", n, tags[-1], **_namespace(route))
    return responses.json_body(request, 200, {"name": name, "tags": tags}, headers)


def _namespace(route: Route) -> dict[str, str]:
    """The ``ns`` query a next-page link carries on (containerd's upstream namespace)."""
    return {"ns": route.namespace} if route.namespace else {}


# The catalog's page when the client sends no ``n`` (registry:2 answers 100): bounded, with
# a ``Link`` to the rest, not every name in one response.
DEFAULT_CATALOG_PAGE = 1000


async def list_catalog(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    # ``registry:catalog:*``: a token must list it (docs/auth.md); a policy grants it to
    # every user and filters the names below.
    principal = await authorize(ctx, request, [CATALOG])
    n = parse_count(query(request, "n"), ctx.catalog.max_page)
    if n is None:
        n = DEFAULT_CATALOG_PAGE
    last = query(request, "last")
    names, _ = await ctx.catalog.list_repositories()
    # The names after ``last`` the caller may pull, looked at only until the page is full
    # (and one more says whether there are more): a page costs its own length, not every
    # name's policy check.
    start = paginate_start(names, last, repository_order)
    page: list[str] = []
    more = False
    for name in itertools.islice(names, start, None):
        if ctx.access.may_pull(principal, name):
            if len(page) == n:
                more = True
                break
            page.append(name)
    headers = {}
    if more and page:
        headers["Link"] = next_link("/v2/_catalog", n, page[-1])
    return responses.json_body(request, 200, {"repositories": page}, headers)


async def list_referrers(ctx: RegistryContext, request: IRequest, route: Route) -> bytes:
    await authorize(ctx, request, [repository(route.name, PULL)])
    subject = route.digest
    # ``?artifactType=`` with no value filters nothing (no artifact type is empty).
    artifact_type = query(request, "artifactType") or None
    n = parse_count(query(request, "n"), ctx.referrers.max_page)
    last = query(request, "last")
    # An unknown repository has no referrers: the spec answers 200 with an empty index.
    descriptors, more = await ctx.referrers.page(route.name, subject, artifact_type, n, last)
    headers = {}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    if more and descriptors:
        extra = {"artifactType": artifact_type} if artifact_type is not None else {}
        headers["Link"] = next_link(
            f"/v2/{route.requested_name}/referrers/{subject}",
            n,
            descriptors[-1]["digest"],
            **_namespace(route),
            **extra,
        )
    return responses.json_body(
        request,
        200,
        referrers_response(descriptors),
        headers,
        content_type=mediatypes.OCI_IMAGE_INDEX,
    )
