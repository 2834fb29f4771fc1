"""
The UI with a pull-through cache: hosted and cached repositories told apart, a cached
repository's page, and the cache page's figures, against a fake upstream over loopback.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import start_registry  # noqa: F401 - fixture
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied, fake, proxied  # noqa: F401 - fixtures
from tests.proxy.util import fetch, pull
from tests.ui import content
from tests.ui.test_pages import rows


def definitions(body: str) -> dict[str, str]:
    pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", body, re.S)
    return {html.unescape(k): html.unescape(re.sub(r"<[^>]+>", "", v)) for k, v in pairs}


@pytest_twisted.ensureDeferred
async def test_cached_repositories_are_told_apart_and_the_cache_page_counts(
    proxied: Proxied,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    image = fake.content.add_image("library/alpine", "latest", [4096, 8192])
    registry = await proxied({"storage": {"delete_enabled": "true"}}, default="false")
    url = registry.url
    await pull(registry, "docker.io/library/alpine", "latest")
    # A second pull of a layer is served from the cache.
    response, _ = await fetch(f"{url}/v2/docker.io/library/alpine/blobs/{image.layers[0].digest}")
    assert response.code == 200
    await deferToThread(content.push_image, content.Client(url), "team/app", "v1")

    response, body = await fetch(f"{url}/ui/")
    assert response.code == 200
    page = body.decode()
    assert rows(page, "repositories") == ["docker.io/library/alpine", "team/app"]
    assert "<td>cache: hub</td>" in page and "<td>hosted</td>" in page
    _, body = await fetch(f"{url}/ui/?source=hub")
    assert rows(body.decode(), "repositories") == ["docker.io/library/alpine"]
    _, body = await fetch(f"{url}/ui/?source=hosted")
    assert rows(body.decode(), "repositories") == ["team/app"]

    response, body = await fetch(f"{url}/ui/r/docker.io/library/alpine")
    assert response.code == 200
    page = body.decode()
    assert "Cached from upstream hub" in page
    assert rows(page, "tags") == ["latest"]
    assert '<th scope="col">Cached</th>' in page
    assert 'name="csrf"' not in page  # cached content is the upstream's: no delete
    _, body = await fetch(f"{url}/ui/r/team/app")
    assert 'name="csrf"' in body.decode()  # deletes are on for hosted repositories
    # A delete posted anyway (the token is the user's, whatever the page) is refused as the
    # API refuses it, with the ``Allow`` a 405 owes: this page takes no method here.
    found = re.search(r'name="csrf" value="([^"]+)"', body.decode())
    assert found is not None
    form = urlencode({"reference": "latest", "csrf": html.unescape(found.group(1))})
    response, body = await fetch(
        f"{url}/ui/r/docker.io/library/alpine/-/delete",
        "POST",
        data=form.encode(),
        headers={"Origin": url, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 405, body
    assert response.headers.getRawHeaders("Allow") == [""]
    assert b"read-only" in body

    response, body = await fetch(f"{url}/ui/cache")
    assert response.code == 200
    figures = definitions(body.decode())
    # The pull missed four times (manifest, config, two layers); the second layer GET hit.
    assert figures["Hit ratio"] == "20.0 % (1 of 5)"
    assert figures["Served from the cache"] == "4.0 KiB"  # the 4096-byte layer
    assert figures["Fetched from upstream"] == figures["Cache size"].split(" (")[0]
    assert figures["Cache size"].endswith("(no max_size)")
    assert figures["Evictions"] == "0 (0 B)"
    assert figures["Stale serves"] == "0"
    assert figures["Upstream errors"] == "0"
    assert figures["Rate limit remaining"] == "99"  # what the fake upstream sends
    assert figures["Fills in flight"] == "0"

    # Viewing a cached image's pages is no pull: the upstream is not asked, and the cache's
    # figures stay as they were.
    asked = fake.count()
    for page in (
        f"/ui/r/docker.io/library/alpine/-/manifest/{image.digest}",
        "/ui/r/docker.io/library/alpine/-/manifest/latest",
        f"/ui/r/docker.io/library/alpine/-/layer/{image.layers[0].digest}?manifest={image.digest}",
        f"/ui/r/docker.io/library/alpine/-/layer/{image.layers[1].digest}",
    ):
        response, body = await fetch(f"{url}{page}")
        assert response.code == 200, body
    # A layer the cache does not hold (the upstream has it) is not fetched to be shown.
    unpulled = fake.content.add_image("library/alpine", "edge", [1000]).layers[0].digest
    response, body = await fetch(f"{url}/ui/r/docker.io/library/alpine/-/layer/{unpulled}")
    assert response.code == 404, body
    assert b"not in the cache yet" in body
    assert fake.count() == asked, fake.log[asked:]
    _, body = await fetch(f"{url}/ui/cache")
    assert definitions(body.decode())["Hit ratio"] == "20.0 % (1 of 5)"


@pytest_twisted.ensureDeferred
async def test_cache_figures_survive_a_restart(
    proxied: Proxied,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
    tmp_path: Path,
) -> None:
    image = fake.content.add_image("library/alpine", "latest", [4096, 8192])
    storage = {"storage": {"rootdirectory": str(tmp_path / "shared")}}
    first = await proxied(storage)
    await pull(first, "docker.io/library/alpine", "latest")
    layer = f"/v2/docker.io/library/alpine/blobs/{image.layers[0].digest}"
    response, _ = await fetch(f"{first.url}{layer}")
    assert response.code == 200
    _, body = await fetch(f"{first.url}/ui/cache")
    before = definitions(body.decode())
    assert before["Hit ratio"] == "20.0 % (1 of 5)"
    await first.stop()  # a clean stop saves the counters

    second = await proxied(storage)
    _, body = await fetch(f"{second.url}/ui/cache")
    after = definitions(body.decode())
    for figure in ("Counted since", "Hit ratio", "Served from the cache", "Fetched from upstream"):
        assert after[figure] == before[figure], figure
    # And they go on from there: one more hit.
    response, _ = await fetch(f"{second.url}{layer}")
    assert response.code == 200
    _, body = await fetch(f"{second.url}/ui/cache")
    assert definitions(body.decode())["Hit ratio"] == "33.3 % (2 of 6)"
