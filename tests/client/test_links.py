"""``Link`` headers: which URL a ``rel="next"`` names, resolved against the page asked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from registry.client import BadResponse
from registry.client._client import _next_url
from tests.client.conftest import ClientFactory

BASE = "https://registry.example/v2/a/referrers/sha256:aa"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (None, None),
        ("", None),
        ('</v2/a/referrers/sha256:aa?last=x>; rel="next"', f"{BASE}?last=x"),
        ("</v2/a/referrers/sha256:aa?last=x>; rel=next", f"{BASE}?last=x"),
        (
            '<https://other.example/v2/a?last=x>; rel="next"',
            "https://other.example/v2/a?last=x",
        ),
        (
            '</v2/a?last=p>; rel="prev", </v2/a?last=n>; rel="next"',
            "https://registry.example/v2/a?last=n",
        ),
        ('</v2/a?last=n>; title="t"; rel="last next"', "https://registry.example/v2/a?last=n"),
        ('</v2/a?last=p>; rel="prev"', None),
        ('</v2/a?last=p>; rel="nextish"', None),
    ],
)
def test_next_url(link: str | None, expected: str | None) -> None:
    assert _next_url(BASE, link) == expected


class CyclingList(Resource):
    """A registry whose tag list and catalog link page ``last=0`` to ``last=1`` and back to
    ``last=0`` forever (one name a page)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode()
        request.setHeader(b"content-type", b"application/json")
        if path == "/v2/":
            return b"{}"
        last = (request.args.get(b"last") or [b"0"])[0].decode()
        self.asked.append(last)
        following = "1" if last != "1" else "0"
        key = "repositories" if path == "/v2/_catalog" else "tags"
        request.setHeader(b"link", f'<{path}?n=1&last={following}>; rel="next"'.encode())
        return json.dumps({"name": "loop", key: [following]}).encode()


@pytest_twisted.async_yield_fixture
async def cycling() -> AsyncIterator[tuple[str, CyclingList]]:
    resource = CyclingList()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}", resource
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_link_cycle_is_a_bad_response(
    cycling: tuple[str, CyclingList], make_client: ClientFactory
) -> None:
    """``all_tags`` and ``all_repositories`` stop at a ``Link`` that cycles, with a
    BadResponse naming it, after the names read so far."""
    url, server = cycling
    client = make_client(url)
    seen: list[str] = []
    with pytest.raises(BadResponse, match="cycles") as info:
        async for tag in client.all_tags("loop"):
            seen.append(tag)
            assert len(seen) < 100
    assert str(info.value) == (
        "tags of loop: the next page link cycles "
        "(back to /v2/loop/tags/list?n=1&last=1 after /v2/loop/tags/list?n=1&last=0)"
    )
    assert seen == ["1", "0", "1"] and server.asked == ["0", "1", "0"]
    repositories: list[str] = []
    with pytest.raises(BadResponse, match="catalog: the next page link cycles"):
        async for name in client.all_repositories(page_size=1):
            repositories.append(name)
            assert len(repositories) < 100
    assert repositories == ["1", "0", "1"]


class OpaquePages(Resource):
    """A registry that pages its tag list and catalog (``t0`` .. ``t5``, two a page) with an
    opaque ``next_page`` token instead of ``last``, as some registries do.  The second page
    links to the third with an absolute URL; with ``foreign`` set, that URL is on another
    origin instead."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []
        self.origin = ""
        self.foreign: str | None = None

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode()
        request.setHeader(b"content-type", b"application/json")
        if path == "/v2/":
            return b"{}"
        self.asked.append(request.uri.decode())
        page = int((request.args.get(b"next_page") or [b"0"])[0])
        key = "repositories" if path == "/v2/_catalog" else "tags"
        names = [f"t{i}" for i in range(2 * page, 2 * page + 2)]
        if page < 2:
            origin = (self.foreign or self.origin) if page == 1 else ""
            link = f'<{origin}{path}?n=2&next_page={page + 1}>; rel="next"'
            request.setHeader(b"link", link.encode())
        return json.dumps({"name": "x", key: names}).encode()


@pytest_twisted.async_yield_fixture
async def opaque() -> AsyncIterator[tuple[str, OpaquePages]]:
    resource = OpaquePages()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.origin = f"http://127.0.0.1:{port.getHost().port}"
    yield resource.origin, resource
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_lists_follow_the_link_as_written(
    opaque: tuple[str, OpaquePages], make_client: ClientFactory
) -> None:
    """``all_tags`` and ``all_repositories`` ask for each next page at the URL its ``Link``
    names (relative or absolute), its ``n`` and opaque token kept: every name once."""
    url, server = opaque
    client = make_client(url)
    expected = [f"t{i}" for i in range(6)]
    assert [tag async for tag in client.all_tags("x", page_size=2)] == expected
    assert server.asked == [
        "/v2/x/tags/list?n=2",
        "/v2/x/tags/list?n=2&next_page=1",
        "/v2/x/tags/list?n=2&next_page=2",
    ]
    assert [name async for name in client.all_repositories()] == expected
    assert server.asked[3:] == [
        "/v2/_catalog",
        "/v2/_catalog?n=2&next_page=1",
        "/v2/_catalog?n=2&next_page=2",
    ]
    # One page at a time: the next page's URL, and a ``last`` for callers that page by it.
    page = await client.list_tags("x", n=2)
    assert page.items == ["t0", "t1"] and page.has_next
    assert page.next_url == f"{url}/v2/x/tags/list?n=2&next_page=1"


@pytest_twisted.ensureDeferred
async def test_a_next_page_on_another_origin_is_refused(
    opaque: tuple[str, OpaquePages], make_client: ClientFactory
) -> None:
    """A ``Link`` to another origin is not followed (nothing is sent there, credentials or
    not) and ends the list with a BadResponse naming it, after the names read so far: a
    list silently cut short would have replication skip tags without a word."""
    url, server = opaque
    elsewhere = OpaquePages()
    port = reactor.listenTCP(0, Site(elsewhere), interface="127.0.0.1")
    try:
        server.foreign = f"http://127.0.0.1:{port.getHost().port}"
        client = make_client(url, username="alice", password="secret")
        seen: list[str] = []
        with pytest.raises(BadResponse) as info:
            async for tag in client.all_tags("x", page_size=2):
                seen.append(tag)
        assert seen == ["t0", "t1", "t2", "t3"]
        assert str(info.value) == (
            f"tags of x: the next page is on another origin "
            f"({server.foreign}/v2/x/tags/list?n=2&next_page=2); not followed"
        )
        assert elsewhere.asked == []
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    ("foreign", "problem"),
    [
        ("http://127.0.0.1:1:2", "port '1:2' is not a number from 1 to 65535"),
        ("http://127.0.0.1:99999", "port '99999' is not a number from 1 to 65535"),
        ("http://[::1", "cannot be parsed"),
        ("http://:80", "no host"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_next_page_link_that_is_no_usable_url_is_refused(
    opaque: tuple[str, OpaquePages], make_client: ClientFactory, foreign: str, problem: str
) -> None:
    """A ``Link`` whose URL cannot be requested (a second port, a bracket missing, no host)
    ends the list as one on another origin does: a BadResponse naming it, after the names
    read so far; never a ``ValueError`` out of urllib."""
    url, server = opaque
    server.foreign = foreign
    client = make_client(url)
    seen: list[str] = []
    with pytest.raises(BadResponse) as info:
        async for tag in client.all_tags("x", page_size=2):
            seen.append(tag)
    assert seen == ["t0", "t1", "t2", "t3"]
    link = f"{foreign}/v2/x/tags/list?n=2&next_page=2"
    assert str(info.value) == f"tags of x: the next page link {link!r}: {problem}; not followed"
    assert server.asked == ["/v2/x/tags/list?n=2", "/v2/x/tags/list?n=2&next_page=1"]
