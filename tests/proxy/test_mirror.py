"""A complete mirror: tag lists and referrers of proxied repositories come from the upstream
(cached ones when it is down), and the catalog lists what is cached.  Real HTTP on loopback."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import bcrypt
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.e2e.client import header, sha256
from tests.e2e.harness import sleep
from tests.fakes.content import OCI_INDEX, OCI_MANIFEST
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import fetch

A = "library/alpine"
SIGNATURE = "application/vnd.example.signature.v1+json"
SBOM = "application/vnd.example.sbom.v1+json"
EMPTY = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def _codes(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


def _referrer(
    fake: FakeUpstream, subject: str, size: int, artifact_type: str, note: str = ""
) -> dict[str, object]:
    """Store an OCI manifest whose ``subject`` is ``subject`` upstream (``note`` makes it
    another manifest of the same type); its descriptor."""
    body = json.dumps(
        {
            **({"annotations": {"note": note}} if note else {}),
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": EMPTY,
                "size": 2,
            },
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size},
        }
    ).encode()
    digest = fake.content.add_manifest(A, OCI_MANIFEST, body)
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(body),
        "artifactType": artifact_type,
    }


@pytest_twisted.ensureDeferred
async def test_tag_lists_come_from_the_upstream_and_cached_ones_when_it_is_down(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    image = fake.content.add_image(A, "latest", [1000])
    for tag in ("3.19", "3.20", "edge"):
        fake.content.retag(A, tag, image.digest)
    # Each request asks the upstream, down or back (not held off: tests/proxy/test_hold_off.py).
    registry = await proxied(hold_off="0")
    url = f"{registry.url}/v2/alpine/tags/list"
    response, body = await fetch(url)
    assert response.code == 200
    assert json.loads(body) == {"name": "alpine", "tags": ["3.19", "3.20", "edge", "latest"]}
    response, body = await fetch(f"{url}?n=2")
    assert json.loads(body)["tags"] == ["3.19", "3.20"]
    assert header(response, "link") == '</v2/alpine/tags/list?last=3.20&n=2>; rel="next"'
    response, body = await fetch(f"{url}?n=2&last=3.20")
    assert json.loads(body)["tags"] == ["edge", "latest"]
    assert header(response, "link") is None
    assert fake.count("GET", "tags", name=A) == 3
    response, body = await fetch(f"{registry.url}/v2/nothing-here/tags/list")
    assert response.code == 404
    assert _codes(body) == ["NAME_UNKNOWN"]
    # Only "latest" is cached; with the upstream down, that is the list.
    response, _ = await fetch(f"{registry.url}/v2/alpine/manifests/latest")
    assert response.code == 200
    # Only a blob of redis is cached (pulled by digest): no tag of it is known here.
    redis = fake.content.add_image("library/redis", "7", [500])
    response, _ = await fetch(f"{registry.url}/v2/redis/blobs/{redis.layers[0].digest}")
    assert response.code == 200
    await fake.go_down()
    response, body = await fetch(url)
    assert response.code == 200
    assert json.loads(body)["tags"] == ["latest"]
    # Nothing cached for a repository: not "unknown" (the upstream could not say), unavailable.
    response, body = await fetch(f"{registry.url}/v2/library/busybox/tags/list")
    assert response.code == 503
    assert _codes(body) == ["UNAVAILABLE"]
    response, body = await fetch(f"{registry.url}/v2/redis/tags/list")
    assert response.code == 503, body
    assert _codes(body) == ["UNAVAILABLE"]
    await fake.come_up()
    fake.switches.fail_status = 429
    response, body = await fetch(f"{registry.url}/v2/library/busybox/tags/list")
    assert response.code == 429
    assert _codes(body) == ["TOOMANYREQUESTS"]


@pytest_twisted.ensureDeferred
async def test_referrers_come_from_the_upstream_referrers_api(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    image = fake.content.add_image(A, "latest", [1000], oci=True)
    size = len(image.manifest)
    signature = _referrer(fake, image.digest, size, SIGNATURE)
    sbom = _referrer(fake, image.digest, size, SBOM)
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/referrers/{image.digest}"
    response, body = await fetch(url)
    assert response.code == 200
    assert header(response, "content-type") == OCI_INDEX
    index = json.loads(body)
    assert index["mediaType"] == OCI_INDEX
    assert index["manifests"] == sorted([signature, sbom], key=lambda d: str(d["digest"]))
    response, body = await fetch(f"{url}?artifactType={quote(SBOM)}")
    assert header(response, "oci-filters-applied") == "artifactType"
    assert json.loads(body)["manifests"] == [sbom]
    response, body = await fetch(f"{url}?n=1")
    assert len(json.loads(body)["manifests"]) == 1
    assert header(response, "link") is not None
    assert fake.count("GET", "referrers", name=A) == 3
    # A manifest with no referrers: an empty index.
    other = "sha256:" + "1" * 64
    response, body = await fetch(f"{registry.url}/v2/alpine/referrers/{other}")
    assert response.code == 200
    assert json.loads(body)["manifests"] == []


@pytest_twisted.ensureDeferred
async def test_referrers_fall_back_to_the_tag_schema(proxied: Proxied, fake: FakeUpstream) -> None:
    """An upstream without the referrers API (Docker Hub): the ``sha256-<hex>`` tag holds an
    index of the referrers; it is cached like any tag and served when the upstream is down."""
    fake.switches.referrers_api = False
    image = fake.content.add_image(A, "latest", [1000], oci=True)
    signature = _referrer(fake, image.digest, len(image.manifest), SIGNATURE)
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [signature]}
    ).encode()
    tag = image.digest.replace(":", "-")
    fake.content.add_manifest(A, OCI_INDEX, index, tag)
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/referrers/{image.digest}"
    response, body = await fetch(url)
    assert response.code == 200
    assert json.loads(body)["manifests"] == [signature]
    assert fake.count("GET", "referrers", name=A) == 1
    assert fake.count("GET", "manifest", name=A, ref=tag) == 1
    await fake.go_down()
    response, body = await fetch(url)
    assert response.code == 200
    assert json.loads(body)["manifests"] == [signature]


@pytest_twisted.ensureDeferred
async def test_the_catalog_lists_cached_repositories(proxied: Proxied, fake: FakeUpstream) -> None:
    """Repositories appear once something was cached through them: a manifest, or only a blob."""
    image = fake.content.add_image(A, "latest", [1000])
    busybox = fake.content.add_image("library/busybox", "latest", [2000])
    registry = await proxied()
    _, body = await fetch(f"{registry.url}/v2/_catalog")
    assert json.loads(body)["repositories"] == []
    _response, body = await fetch(f"{registry.url}/v2/alpine/manifests/latest")
    assert sha256(body) == image.digest
    layer = busybox.layers[0].digest
    _, data = await fetch(f"{registry.url}/v2/busybox/blobs/{layer}")
    assert sha256(data) == layer
    _, body = await fetch(f"{registry.url}/v2/_catalog")
    assert json.loads(body)["repositories"] == [
        "docker.io/library/alpine",
        "docker.io/library/busybox",
    ]


def _index_bytes(descriptors: list[dict[str, object]]) -> bytes:
    """The index the registry answers, byte for byte (compact JSON, in digest order)."""
    ordered = sorted(descriptors, key=lambda d: str(d["digest"]))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ordered}
    return json.dumps(index, separators=(",", ":")).encode()


@pytest_twisted.ensureDeferred
async def test_referrers_pages_of_the_upstream_are_merged(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """An upstream that splits the referrers over three pages (``Link: <...>; rel="next"``):
    the client gets one index with all of them, and the ``artifactType`` filter applies to
    every page."""
    fake.switches.referrers_page = 2
    image = fake.content.add_image(A, "latest", [1000], oci=True)
    size = len(image.manifest)
    kinds = [SIGNATURE, SBOM, SIGNATURE, SBOM, SIGNATURE]
    listed = [_referrer(fake, image.digest, size, k, str(i)) for i, k in enumerate(kinds)]
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/referrers/{image.digest}"
    response, body = await fetch(url)
    assert response.code == 200
    assert body == _index_bytes(listed)
    assert header(response, "oci-filters-applied") is None
    assert fake.count("GET", "referrers", name=A) == 3
    response, body = await fetch(f"{url}?artifactType={quote(SIGNATURE)}")
    assert header(response, "oci-filters-applied") == "artifactType"
    assert body == _index_bytes([d for d in listed if d["artifactType"] == SIGNATURE])
    assert fake.count("GET", "referrers", name=A) == 6


@pytest_twisted.ensureDeferred
async def test_referrers_next_page_on_another_origin_is_not_followed(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """A next link to another origin (the same server under another host name, so that a
    request, had it been made, would be counted) is not followed: the first page is the
    answer."""
    fake.switches.referrers_page = 2
    fake.switches.referrers_next_origin = fake.url.replace("127.0.0.1", "localhost")
    image = fake.content.add_image(A, "latest", [1000], oci=True)
    size = len(image.manifest)
    listed = [_referrer(fake, image.digest, size, SIGNATURE, str(i)) for i in range(3)]
    registry = await proxied()
    response, body = await fetch(f"{registry.url}/v2/alpine/referrers/{image.digest}")
    assert response.code == 200
    first_page = sorted(listed, key=lambda d: str(d["digest"]))[:2]
    assert body == _index_bytes(first_page)
    assert fake.count("GET", "referrers", name=A) == 1


@pytest.mark.parametrize("origin", ["http://127.0.0.1:1:2", "http://[::1", "http://:80"])
@pytest_twisted.ensureDeferred
async def test_a_referrers_next_link_that_is_no_usable_url_is_not_followed(
    proxied: Proxied, fake: FakeUpstream, origin: str
) -> None:
    """A next link naming no URL that can be requested (a second port, a bracket missing, no
    host) is not followed either: the first page is the answer, not a 500."""
    fake.switches.referrers_page = 2
    fake.switches.referrers_next_origin = origin
    image = fake.content.add_image(A, "latest", [1000], oci=True)
    size = len(image.manifest)
    listed = [_referrer(fake, image.digest, size, SIGNATURE, str(i)) for i in range(3)]
    registry = await proxied()
    response, body = await fetch(f"{registry.url}/v2/alpine/referrers/{image.digest}")
    assert response.code == 200, body
    first_page = sorted(listed, key=lambda d: str(d["digest"]))[:2]
    assert body == _index_bytes(first_page)
    assert fake.count("GET", "referrers", name=A) == 1


@pytest_twisted.ensureDeferred
async def test_a_200_that_is_not_a_manifest_is_not_cached(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """An upstream (or a captive portal, a broken proxy on the way) answering a manifest GET
    with 200 and some other body, no digest header: 502, and nothing kept for the tag."""
    image = fake.content.add_image(A, "latest", [1000])
    registry = await proxied()
    fake.switches.fail_status = 200  # every answer: 200 with an OCI error body
    for tag in ("latest", "no-such-tag"):
        response, body = await fetch(f"{registry.url}/v2/alpine/manifests/{tag}")
        assert response.code == 502, body
        assert _codes(body) == ["UNAVAILABLE"]
        assert b"not a manifest" in body
    fake.switches.fail_status = None
    response, body = await fetch(f"{registry.url}/v2/alpine/tags/list")
    assert json.loads(body)["tags"] == ["latest"]  # the upstream's list: back
    await fake.go_down()
    response, body = await fetch(f"{registry.url}/v2/alpine/manifests/no-such-tag")
    assert response.code == 503  # nothing cached for it, stale or not
    await fake.come_up()
    response, body = await fetch(f"{registry.url}/v2/alpine/manifests/latest")
    assert response.code == 200
    assert body == image.manifest


@pytest_twisted.ensureDeferred
async def test_clients_asking_for_referrers_together_queue_for_the_upstream(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Each upstream referrers list may be many pages held in memory at once: clients asking
    together (here five) get them two at a time from the upstream, not all at once."""
    image = fake.content.add_image(A, "latest", [1000], oci=True)
    signature = _referrer(fake, image.digest, len(image.manifest), SIGNATURE)
    registry = await proxied()
    hold = fake.hold("GET", "referrers", name=A)
    url = f"{registry.url}/v2/alpine/referrers/{image.digest}"
    asking = [Deferred.fromCoroutine(fetch(url)) for _ in range(5)]
    for _ in range(500):  # bounded: until the first two reach the upstream
        if hold.arrived >= 2:
            break
        await sleep(0.01)
    await sleep(0.2)  # time for more to arrive, were they not queued
    assert hold.arrived == 2
    hold.release()
    answers = await gatherResults(asking)
    assert [response.code for response, _ in answers] == [200] * 5
    assert all(json.loads(body)["manifests"] == [signature] for _, body in answers)


@pytest_twisted.ensureDeferred
async def test_tag_lists_with_containerds_ns_name_the_requested_repository(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """``?ns=docker.io`` (containerd's mirror requests) selects the upstream, but the list's
    ``name`` is the repository the request named, and each page's ``Link`` keeps the ``ns``
    so that the next page comes from the same upstream."""
    for tag in ["v1", "v2", "v3"]:
        fake.content.add_image("library/app", tag, [1000], seed=tag)
    registry = await proxied()
    url = registry.url
    response, body = await fetch(f"{url}/v2/library/app/tags/list?ns=docker.io")
    assert response.code == 200
    assert header(response, "oci-namespace") == "docker.io"
    assert body == b'{"name":"library/app","tags":["v1","v2","v3"]}'
    response, body = await fetch(f"{url}/v2/library/app/tags/list?ns=docker.io&n=2")
    assert body == b'{"name":"library/app","tags":["v1","v2"]}'
    link = header(response, "link")
    assert link == '</v2/library/app/tags/list?ns=docker.io&last=v2&n=2>; rel="next"'
    response, body = await fetch(url + link[1 : link.index(">")])
    assert response.code == 200
    assert header(response, "oci-namespace") == "docker.io"
    assert body == b'{"name":"library/app","tags":["v3"]}'
    assert header(response, "link") is None
    # Named with the prefix, with or without ns: the name as asked; the link as asked.
    response, body = await fetch(f"{url}/v2/docker.io/library/app/tags/list?ns=docker.io&n=2")
    assert body == b'{"name":"docker.io/library/app","tags":["v1","v2"]}'
    assert header(response, "link") == (
        '</v2/docker.io/library/app/tags/list?ns=docker.io&last=v2&n=2>; rel="next"'
    )
    response, body = await fetch(f"{url}/v2/docker.io/library/app/tags/list?n=2")
    assert body == b'{"name":"docker.io/library/app","tags":["v1","v2"]}'
    assert header(response, "link") == (
        '</v2/docker.io/library/app/tags/list?last=v2&n=2>; rel="next"'
    )


@pytest_twisted.ensureDeferred
async def test_referrers_pages_with_containerds_ns_link_with_the_ns(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    image = fake.content.add_image(A, "latest", [1000], oci=True)
    size = len(image.manifest)
    first, second = sorted(
        [_referrer(fake, image.digest, size, SIGNATURE), _referrer(fake, image.digest, size, SBOM)],
        key=lambda d: str(d["digest"]),
    )
    registry = await proxied()
    path = f"/v2/{A}/referrers/{image.digest}"
    response, body = await fetch(f"{registry.url}{path}?ns=docker.io&n=1")
    assert json.loads(body)["manifests"] == [first]
    link = header(response, "link")
    assert link == f'<{path}?ns=docker.io&last={quote(str(first["digest"]))}&n=1>; rel="next"'
    response, body = await fetch(registry.url + link[1 : link.index(">")])
    assert header(response, "oci-namespace") == "docker.io"
    assert json.loads(body)["manifests"] == [second]


@pytest_twisted.ensureDeferred
async def test_containerds_ns_does_not_rename_a_write(proxied: Proxied) -> None:
    """``?ns=`` names the upstream of a read.  On a write it is ignored: an upload's body is
    checked and stored under the repository of its path before any route is rewritten, so a
    final PUT given ``ns=docker.io`` was recorded (catalog, Location, events) under
    ``docker.io/team/app``, a repository nobody checked access to, while its blob went to
    ``team/app``.  Now both writes here name ``team/app`` only."""
    registry = await proxied(default="false")
    url = registry.url
    blob = b"written with an ns"
    digest = sha256(blob)
    response, _ = await fetch(f"{url}/v2/team/app/blobs/uploads/", "POST")
    assert response.code == 202
    location = header(response, "location")
    assert location is not None
    separator = "&" if "?" in location else "?"
    response, body = await fetch(
        f"{url}{location}{separator}digest={digest}&ns=docker.io", "PUT", data=blob
    )
    assert response.code == 201, body
    assert header(response, "location") == f"/v2/team/app/blobs/{digest}"
    assert header(response, "oci-namespace") is None
    other = b"monolithic with an ns"
    response, body = await fetch(
        f"{url}/v2/team/other/blobs/uploads/?digest={sha256(other)}&ns=docker.io",
        "POST",
        data=other,
    )
    assert response.code == 201, body
    assert header(response, "location") == f"/v2/team/other/blobs/{sha256(other)}"
    response, body = await fetch(f"{url}/v2/_catalog")
    assert json.loads(body) == {"repositories": ["team/app", "team/other"]}
    response, body = await fetch(f"{url}/v2/team/app/blobs/{digest}")
    assert (response.code, body) == (200, blob)


@pytest_twisted.ensureDeferred
async def test_containerds_ns_tells_which_upstreams_exist_only_to_who_may_read(
    proxied: Proxied, tmp_path: Path
) -> None:
    """An ``ns=`` no upstream here is configured for is ``404 NAME_UNKNOWN`` naming it, so
    that containerd tries its next host; a caller who may not read the path's repository
    gets the challenge instead, as without the ``ns=``: the namespaces a cache has upstreams
    for (``docker.io`` yes, ``quay.io`` no) are not told to anonymous callers."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"alice:{hashed}\n")
    registry = await proxied(
        {"auth": {}, "auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "ns"}}
    )
    challenges = []
    for ns in ("docker.io", "quay.io"):
        response, body = await fetch(f"{registry.url}/v2/library/app/manifests/latest?ns={ns}")
        assert response.code == 401, body
        assert [e["code"] for e in json.loads(body)["errors"]] == ["UNAUTHORIZED"]
        challenges.append(header(response, "www-authenticate"))
    assert challenges == ['Basic realm="ns"'] * 2
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    response, body = await fetch(
        f"{registry.url}/v2/library/app/manifests/latest?ns=quay.io", headers=alice
    )
    assert response.code == 404, body
    [error] = json.loads(body)["errors"]
    assert error["code"] == "NAME_UNKNOWN"
    assert error["message"] == "no upstream is configured for namespace quay.io"


@pytest_twisted.ensureDeferred
async def test_containerds_ns_answers_a_refused_caller_alike_for_every_namespace(
    proxied: Proxied, fake: FakeUpstream, tmp_path: Path
) -> None:
    """A caller refused the name a namespace would be served under gets the same challenge
    whether an upstream serves that namespace (``docker.io``, or the upstream's own
    ``host:port``) or not (``quay.io``, ``gcr.io``), and no ``OCI-Namespace``: a grant on the
    path's repository alone (``library/**``, what Docker daemons ask for) told the namespaces
    apart (401 for a served one, 404 for any other)."""
    fake.content.add_image("library/app", "latest", [100])
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"alice:{hashed}\n")
    auth = {"anonymous_pull": "library/**"}
    registry = await proxied(
        {"auth": auth, "auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "ns"}}
    )
    path = f"{registry.url}/v2/library/app/manifests/latest"
    response, body = await fetch(path)
    assert response.code == 200, body
    upstream_host = fake.url.split("://", 1)[1]
    for ns in ("docker.io", upstream_host, "quay.io", "gcr.io"):
        response, body = await fetch(f"{path}?ns={ns}")
        assert response.code == 401, (ns, body)
        assert [e["code"] for e in json.loads(body)["errors"]] == ["UNAUTHORIZED"]
        assert header(response, "www-authenticate") == 'Basic realm="ns"'
        assert header(response, "oci-namespace") is None, ns
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    response, body = await fetch(f"{path}?ns=docker.io", headers=alice)
    assert response.code == 200, body
    assert header(response, "oci-namespace") == "docker.io"
    response, body = await fetch(f"{path}?ns=gcr.io", headers=alice)
    assert response.code == 404, body
    assert header(response, "oci-namespace") is None
