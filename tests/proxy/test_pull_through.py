"""Pull-through over real HTTP on loopback: names, caching, revalidation, errors, writes."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.e2e.client import error_codes, header, push_blob, raw_headers, sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import fetch, metric, pull

LAYERS = [4096, 300_000]


@pytest_twisted.ensureDeferred
async def test_every_spelling_of_a_name_shares_one_cached_copy(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """``alpine``, ``library/alpine`` (docker registry-mirrors), ``docker.io/library/alpine``
    and ``library/alpine?ns=docker.io`` (containerd) are one repository upstream and here."""
    image = fake.content.add_image("library/alpine", "latest", LAYERS)
    registry = await proxied()
    url = registry.url
    for name in ["alpine", "library/alpine", "docker.io/library/alpine", "docker.io/alpine"]:
        response, body = await fetch(f"{url}/v2/{name}/manifests/latest")
        assert response.code == 200, body
        assert sha256(body) == image.digest
        assert header(response, "docker-content-digest") == image.digest
    response, body = await fetch(f"{url}/v2/library/alpine/manifests/latest?ns=docker.io")
    assert response.code == 200
    assert sha256(body) == image.digest
    assert header(response, "oci-namespace") == "docker.io"
    for layer in image.layers:
        for name in ["alpine", "docker.io/library/alpine"]:
            response, data = await fetch(f"{url}/v2/{name}/blobs/{layer.digest}?ns=docker.io")
            assert response.code == 200
            assert sha256(data) == layer.digest
        assert fake.count("GET", "cdn", ref=layer.digest) == 1
    assert fake.count("GET", "manifest") == 1
    # A namespace no upstream serves: 404 so containerd goes on to its next host.
    response, _ = await fetch(f"{url}/v2/library/alpine/manifests/latest?ns=ghcr.io")
    assert response.code == 404
    assert await error_codes(response) == ["NAME_UNKNOWN"]
    # The cached repository is listed under its canonical local name.
    response, body = await fetch(f"{url}/v2/alpine/tags/list")
    assert json.loads(body)["tags"] == ["latest"]


@pytest_twisted.ensureDeferred
async def test_blob_head_and_range_through_the_cache(proxied: Proxied, fake: FakeUpstream) -> None:
    image = fake.content.add_image("library/alpine", "latest", LAYERS)
    registry = await proxied()
    layer = image.layers[1]
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    status, headers = await raw_headers("HEAD", url)
    assert status == 200
    assert headers["content-length"] == str(layer.size)
    assert fake.count("GET", "cdn", ref=layer.digest) == 0  # a HEAD does not fill
    response, part = await fetch(url, headers={"Range": "bytes=1000-1999"})
    assert response.code == 206
    assert len(part) == 1000
    response, whole = await fetch(url)
    assert sha256(whole) == layer.digest
    assert whole[1000:2000] == part


@pytest_twisted.ensureDeferred
async def test_tags_are_revalidated_with_head_and_follow_upstream(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    first = fake.content.add_image("library/alpine", "latest", LAYERS)
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/manifests/latest"
    for _ in range(3):
        _, body = await fetch(url)
        assert sha256(body) == first.digest
    assert fake.count("GET", "manifest") == 1
    assert fake.count("HEAD", "manifest") == 2  # every request (tag_freshness = 0)
    second = fake.content.add_image("library/alpine", "3.20", [5000], seed="new")
    fake.content.retag("library/alpine", "latest", second.digest)
    _, body = await fetch(url)
    assert sha256(body) == second.digest
    # By digest, cached content never goes upstream.
    heads = fake.count("HEAD", "manifest")
    _response, body = await fetch(f"{registry.url}/v2/alpine/manifests/{first.digest}")
    assert sha256(body) == first.digest
    assert fake.count("HEAD", "manifest") == heads


@pytest_twisted.ensureDeferred
async def test_tag_freshness_skips_revalidation(proxied: Proxied, fake: FakeUpstream) -> None:
    fake.content.add_image("library/alpine", "latest", LAYERS)
    registry = await proxied(tag_freshness="1h")
    for _ in range(3):
        response, _ = await fetch(f"{registry.url}/v2/alpine/manifests/latest")
        assert response.code == 200
    assert fake.count("HEAD", "manifest") == 0
    assert fake.count("GET", "manifest") == 1


@pytest_twisted.ensureDeferred
async def test_upstream_404_is_manifest_unknown(proxied: Proxied, fake: FakeUpstream) -> None:
    fake.content.add_image("library/alpine", "latest", LAYERS)
    registry = await proxied()
    response, _ = await fetch(f"{registry.url}/v2/alpine/manifests/nope")
    assert response.code == 404
    assert await error_codes(response) == ["MANIFEST_UNKNOWN"]
    missing = "sha256:" + "0" * 64
    response, _ = await fetch(f"{registry.url}/v2/alpine/blobs/{missing}")
    assert response.code == 404
    assert await error_codes(response) == ["BLOB_UNKNOWN"]


async def _break(fake: FakeUpstream, mode: str) -> None:
    if mode == "down":
        await fake.go_down()
    elif mode == "stalled":
        fake.switches.stall = True
    else:
        fake.switches.fail_status = int(mode)


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("down", 503, "UNAVAILABLE"),
        ("503", 503, "UNAVAILABLE"),
        ("429", 429, "TOOMANYREQUESTS"),
        ("stalled", 503, "UNAVAILABLE"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_stale_if_error(
    proxied: Proxied, fake: FakeUpstream, mode: str, status: int, code: str
) -> None:
    """A cached tag is served when the upstream fails; with nothing cached the client gets
    the mapped OCI error."""
    image = fake.content.add_image("library/alpine", "latest", LAYERS)
    fake.content.add_image("library/busybox", "latest", [1000])
    registry = await proxied(timeout="1s")
    await pull(registry, "alpine", "latest")
    await _break(fake, mode)
    manifest = await pull(registry, "alpine", "latest")
    assert manifest["digest"] == image.digest
    response, _ = await fetch(f"{registry.url}/v2/busybox/manifests/latest")
    assert response.code == status
    assert await error_codes(response) == [code]
    response, body = await fetch(f"{registry.url}/metrics")
    text = body.decode()
    assert metric(text, "txregistry_proxy_stale_served_total") >= 1
    assert metric(text, "txregistry_proxy_upstream_errors_total") >= 2


@pytest_twisted.ensureDeferred
async def test_pushes_to_proxied_names_are_refused(proxied: Proxied, fake: FakeUpstream) -> None:
    registry = await proxied()
    url = registry.url
    for name in ["alpine", "docker.io/library/alpine"]:
        response, _ = await fetch(f"{url}/v2/{name}/blobs/uploads/", "POST")
        assert response.code == 405
        assert await error_codes(response) == ["UNSUPPORTED"]
        # RFC 9110: a 405 says what the resource takes (an upload's route: nothing).
        assert response.headers.getRawHeaders("Allow") == [""]
        response, _ = await fetch(
            f"{url}/v2/{name}/manifests/latest",
            "PUT",
            data=b"{}",
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert response.code == 405
        assert await error_codes(response) == ["UNSUPPORTED"]
        assert response.headers.getRawHeaders("Allow") == ["GET, HEAD"]
    data = b"monolithic"
    digest = sha256(data)
    response, _ = await fetch(f"{url}/v2/alpine/blobs/uploads/?digest={digest}", "POST", data=data)
    assert response.code == 405


async def _push_image(url: str, name: str, tag: str) -> str:
    layer = await push_blob(url, name, b"layer bytes of " + name.encode())
    config = await push_blob(url, name, b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 37,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer,
                    "size": len(b"layer bytes of " + name.encode()),
                }
            ],
        }
    ).encode()
    response, body = await fetch(
        f"{url}/v2/{name}/manifests/{tag}",
        "PUT",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert response.code == 201, body
    return sha256(manifest)


@pytest_twisted.ensureDeferred
async def test_hosted_repositories_work_next_to_the_cache(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Without a default upstream every unprefixed name is hosted; with one, names whose
    first component is a host name (``example.com/...``) stay hosted."""
    image = fake.content.add_image("library/alpine", "latest", LAYERS)
    registry = await proxied(default="false")
    digest = await _push_image(registry.url, "team/app", "v1")
    response, body = await fetch(f"{registry.url}/v2/team/app/manifests/v1")
    assert response.code == 200
    assert sha256(body) == digest
    manifest = await pull(registry, "docker.io/library/alpine", "latest")
    assert manifest["digest"] == image.digest
    response, _ = await fetch(f"{registry.url}/v2/alpine/manifests/latest")
    assert response.code == 404  # not proxied without a default upstream
    mirror = await proxied()
    digest = await _push_image(mirror.url, "example.com/team/app", "v1")
    response, body = await fetch(f"{mirror.url}/v2/example.com/team/app/manifests/v1")
    assert response.code == 200
    assert sha256(body) == digest
    manifest = await pull(mirror, "alpine", "latest")
    assert manifest["digest"] == image.digest
    response, body = await fetch(f"{mirror.url}/v2/_catalog")
    assert set(json.loads(body)["repositories"]) == {
        "docker.io/library/alpine",
        "example.com/team/app",
    }


@pytest_twisted.ensureDeferred
async def test_containerds_ns_may_name_an_upstream_by_its_host(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """``?ns=`` naming an upstream's registry host (a port when not the default) reaches it
    without a ``prefix`` (a default upstream needs none); a name under another upstream's
    prefix does not reach it that way, and a host no upstream is stays 404."""
    image = fake.content.add_image("library/alpine", "latest", LAYERS)
    other = {"remoteurl": "http://127.0.0.1:9", "prefix": "other", "timeout": "2s"}
    registry = await proxied({"proxy:other": other}, prefix="")
    url = registry.url
    host = fake.url.removeprefix("http://").rstrip("/")
    response, body = await fetch(f"{url}/v2/library/alpine/manifests/latest?ns={host}")
    assert response.code == 200, body
    assert sha256(body) == image.digest
    assert header(response, "oci-namespace") == host
    # The fake is not Docker Hub: docker.io names no upstream here.
    response, _ = await fetch(f"{url}/v2/library/alpine/manifests/latest?ns=docker.io")
    assert response.code == 404
    assert await error_codes(response) == ["NAME_UNKNOWN"]
    # other/... is the other upstream's: not served as the default's.
    response, _ = await fetch(f"{url}/v2/other/alpine/manifests/latest?ns={host}")
    assert response.code == 404
    assert await error_codes(response) == ["NAME_UNKNOWN"]
    # The other upstream by its host: its prefix is added (it refuses connections: 503).
    response, body = await fetch(f"{url}/v2/library/alpine/manifests/latest?ns=127.0.0.1:9")
    assert response.code == 503, body
    assert header(response, "oci-namespace") == "127.0.0.1:9"
    assert json.loads(body)["errors"][0]["detail"]["name"] == "other/library/alpine"


@pytest_twisted.ensureDeferred
async def test_ns_by_host_always_asks_for_the_name_under_the_prefix(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """With ``?ns=<host>`` containerd names the repository as that registry knows it, even
    one starting with the upstream's prefix here: ``loc/team/app`` there is not ``team/app``."""
    fake.content.add_image("team/app", "a", [100])
    nested = fake.content.add_image("loc/team/app", "x", [200], seed="nested")
    registry = await proxied(prefix="loc", default="false")
    host = fake.url.removeprefix("http://").rstrip("/")
    url = f"{registry.url}/v2/loc/team/app"
    response, body = await fetch(f"{url}/tags/list?ns={host}")
    assert response.code == 200, body
    assert json.loads(body) == {"name": "loc/team/app", "tags": ["x"]}
    response, body = await fetch(f"{url}/manifests/x?ns={host}")
    assert response.code == 200, body
    assert sha256(body) == nested.digest
    response, _ = await fetch(f"{url}/manifests/a?ns={host}")
    assert response.code == 404
