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
    assert "tags of loop: the next page link cycles (last='1' again after last='0')" in str(
        info.value
    )
    assert seen == ["1", "0", "1"] and server.asked == ["0", "1", "0"]
    repositories: list[str] = []
    with pytest.raises(BadResponse, match="catalog: the next page link cycles"):
        async for name in client.all_repositories(page_size=1):
            repositories.append(name)
            assert len(repositories) < 100
    assert repositories == ["1", "0", "1"]
