"""Whom the cache trusts: credentials stay with the upstream's own token realm, and a blob is
served or linked through a repository only after that repository's own upstream confirmed it.

Real HTTP on loopback: a registry proxying the fake upstream, whose requests are recorded and
can be held until the test releases them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import LogLevel

from registry.api.digests import Digest
from registry.api.errors import UNAVAILABLE, RegistryError
from registry.proxy.cache import Limits
from registry.proxy.upstream import UpstreamClient
from registry.storage.memory import MemoryDriver
from tests.auth.conftest import LogCapture
from tests.e2e.client import header, push_blob, sha256
from tests.fakes.content import BytesBlob, GeneratedBlob
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import blob_data_path, fetch, hub_cache, reactor, storage_root, wait_for

A = "library/alpine"  # upstream names; locally docker.io/library/...
B = "library/busybox"
ALICE = "Basic " + base64.b64encode(b"alice:s3cret").decode()  # the configured credentials


def _serious(logs: LogCapture) -> list[str]:
    """Critical events, tracebacks and unhandled errors: none may appear in normal operation."""
    found = []
    for event in logs.events:
        text = str(event.get("log_format", "")) + str(event.get("log_failure", ""))
        serious = event.get("log_level") in (LogLevel.critical, LogLevel.error)
        if serious or "log_failure" in event or "Traceback" in text or "Unhandled" in text:
            found.append(text)
    return found


def _link(root: Path, upstream_name: str, digest: str) -> Path:
    algorithm, hex_ = digest.split(":", 1)
    return (
        root
        / "docker/registry/v2/repositories/docker.io"
        / upstream_name
        / "_layers"
        / algorithm
        / hex_
        / "link"
    )


def _blob_url(base: str, upstream_name: str, digest: str) -> str:
    return f"{base}/v2/{upstream_name.removeprefix('library/')}/blobs/{digest}"


async def _outcome(url: str, method: str = "GET") -> tuple[int, bytes | None]:
    """Status and body, or None for a body that did not arrive whole (a dropped connection)."""
    response = await treq.request(method, url)
    try:
        return response.code, await response.content()
    except Exception:
        return response.code, None


def _start(url: str, method: str = "GET") -> Deferred[tuple[int, bytes | None]]:
    return ensureDeferred(_outcome(url, method))


@pytest_twisted.ensureDeferred
async def test_a_redirect_target_asking_for_auth_gets_no_credentials(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """The CDN answers 401 with a Bearer challenge naming its own realm: the configured
    credentials are not sent there, no token is asked of it, the request fails as an upstream
    error, and the upstream's own challenge stays the one used afterwards."""
    fake.switches.credentials = ("alice", "s3cret")
    image = fake.content.add_image(A, "latest", [4096, 5000])
    registry = await proxied(username="alice", password="s3cret")
    first, second = image.layers
    fake.switches.cdn_challenge = True
    response, body = await fetch(_blob_url(registry.url, A, first.digest))
    assert response.code == 502, body
    [error] = json.loads(body)["errors"]
    assert error["code"] == "UNAVAILABLE"
    # Said as it is: the configured credentials are not in question.
    assert error["message"] == "a host the upstream redirected to asked for authentication"
    # A HEAD redirected to the CDN (some registries do that) is refused the same way.
    fake.switches.redirect_blob_head = True
    assert image.config is not None
    status, _ = await _outcome(_blob_url(registry.url, A, image.config), "HEAD")
    assert status == 502
    fake.switches.redirect_blob_head = False
    cdn = [(r.method, r.kind) for r in fake.log if r.kind in ("cdn", "cdn-token")]
    assert cdn == [("GET", "cdn"), ("HEAD", "cdn")]  # no token asked of the CDN's realm
    assert all(r.authorization is None for r in fake.log if r.kind == "cdn")
    # The upstream's own realm stays the one tokens come from.
    fake.switches.cdn_challenge = False
    for layer in (first, second):
        response, data = await fetch(_blob_url(registry.url, A, layer.digest))
        assert response.code == 200
        assert sha256(data) == layer.digest
    assert fake.count(kind="cdn-token") == 0
    assert all(r.authorization is None for r in fake.log if r.kind == "cdn")
    tokens = [r for r in fake.log if r.kind == "token"]
    assert tokens
    assert all((r.authorization or "").startswith("Basic ") for r in tokens)


async def _cached_through_third(
    proxied: Proxied, fake: FakeUpstream, size: int
) -> tuple[Any, GeneratedBlob]:
    """A registry where blob D is stored (pulled through ``library/c``); upstream, ``A`` has
    D and ``B`` exists without it."""
    blob = GeneratedBlob("shared", size)
    fake.content.add_blob("library/c", blob)
    fake.content.add_blob(A, blob)
    fake.content.add_image(B, "latest", [1000])
    registry = await proxied()
    response, data = await fetch(_blob_url(registry.url, "library/c", blob.digest))
    assert response.code == 200
    assert sha256(data) == blob.digest
    return registry, blob


@pytest_twisted.ensureDeferred
async def test_a_head_in_flight_for_one_repository_answers_nothing_for_another(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """While A's upstream HEAD of D is held, B's HEAD and GET of D (D stored locally for a
    third repository) get B's own answer: 404, and no link for B."""
    registry, blob = await _cached_through_third(proxied, fake, 50_000)
    root = storage_root(registry)
    held = fake.hold("HEAD", "blob", name=A, ref=blob.digest)
    through_a = _start(_blob_url(registry.url, A, blob.digest), "HEAD")
    try:
        await wait_for(lambda: held.arrived == 1)
        for method in ("HEAD", "GET"):
            through_b = _start(_blob_url(registry.url, B, blob.digest), method)
            await wait_for(lambda d=through_b: d.called, within=5)  # type: ignore[misc]
            status, body = through_b.result
            assert status == 404, (method, body)
            if method == "GET":
                assert body is not None
                assert [e["code"] for e in json.loads(body)["errors"]] == ["BLOB_UNKNOWN"]
        assert fake.count("HEAD", "blob", name=B, ref=blob.digest) >= 1
    finally:
        held.release()
    status, _ = await through_a
    assert status == 200
    assert not _link(root, B, blob.digest).exists()
    status, _ = await _outcome(_blob_url(registry.url, B, blob.digest))
    assert status == 404
    assert not _link(root, B, blob.digest).exists()


@pytest_twisted.ensureDeferred
async def test_a_fill_in_flight_for_one_repository_is_not_served_through_another(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """While A's fill of D is under way (its body held half way), a GET of D through B (whose
    upstream has no D) is answered 404 BLOB_UNKNOWN at once, with B's own HEAD, and B never
    links D."""
    blob = GeneratedBlob("only-a", 200_000)
    fake.content.add_blob(A, blob)
    fake.content.add_image(B, "latest", [1000])
    registry = await proxied()
    root = storage_root(registry)
    held = fake.hold_body(blob.digest, after=100_000)
    through_a = _start(_blob_url(registry.url, A, blob.digest))
    try:
        await wait_for(lambda: held.arrived == 1)
        through_b = _start(_blob_url(registry.url, B, blob.digest))
        await wait_for(lambda: through_b.called, within=5)
        status, body = through_b.result
        assert status == 404
        assert body is not None
        assert [e["code"] for e in json.loads(body)["errors"]] == ["BLOB_UNKNOWN"]
        assert fake.count("HEAD", "blob", name=B, ref=blob.digest) == 1
    finally:
        held.release()
    status, data = await through_a
    assert status == 200
    assert data is not None and sha256(data) == blob.digest
    assert _link(root, A, blob.digest).exists()
    assert not _link(root, B, blob.digest).exists()
    # With D stored now, B is still asked about upstream, and still refused.
    status, _ = await _outcome(_blob_url(registry.url, B, blob.digest))
    assert status == 404
    assert not _link(root, B, blob.digest).exists()
    assert fake.count("GET", "cdn", ref=blob.digest) == 1


@pytest_twisted.ensureDeferred
async def test_a_confirmed_repository_joins_the_fill_in_flight(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """When B's upstream confirms D (its own HEAD), B joins A's fill: both get the bytes from
    one upstream body, and both repositories link D."""
    blob = GeneratedBlob("both", 300_000)
    fake.content.add_blob(A, blob)
    fake.content.add_blob(B, blob)
    registry = await proxied()
    root = storage_root(registry)
    held = fake.hold("GET", "blob", name=A, ref=blob.digest)
    through_a = _start(_blob_url(registry.url, A, blob.digest))
    try:
        await wait_for(lambda: held.arrived == 1)
        through_b = _start(_blob_url(registry.url, B, blob.digest))
        await wait_for(lambda: fake.count("HEAD", "blob", name=B, ref=blob.digest) == 1)
    finally:
        held.release()
    for outcome in (await through_a, await through_b):
        status, data = outcome
        assert status == 200
        assert data is not None and sha256(data) == blob.digest
    assert fake.count("GET", "cdn", ref=blob.digest) == 1
    assert fake.count("GET", "blob", name=B) == 0
    assert _link(root, A, blob.digest).exists()
    assert _link(root, B, blob.digest).exists()
    assert blob_data_path(root, blob.digest).exists()


@pytest_twisted.ensureDeferred
async def test_a_stalled_fill_ends_a_joined_request_cleanly(
    proxied: Proxied, fake: FakeUpstream, logs: LogCapture
) -> None:
    """A's fill stalls half way, and so does every resume of it (the upstream ignores the
    ``Range`` and stalls at the same byte); B (confirmed) joined it.  Both requests end once
    the fill gives up, with a short body (the connection drops: never a complete wrong
    blob), nothing is linked, and the log has no critical event or traceback."""
    size = 2 * 1024 * 1024
    blob = GeneratedBlob("stalls", size)
    fake.content.add_blob(A, blob)
    fake.content.add_blob(B, blob)
    registry = await proxied(timeout="1s")
    root = storage_root(registry)
    fake.switches.stall_blob_after = size // 2
    fake.switches.ignore_range = True
    response_a = await treq.get(_blob_url(registry.url, A, blob.digest))
    assert response_a.code == 200
    body_a = ensureDeferred(_body_or_none(response_a))
    through_b = _start(_blob_url(registry.url, B, blob.digest))
    results = [await body_a, await through_b]
    assert results[0] is None
    status_b, body_b = results[1]
    assert body_b is None or status_b >= 500
    assert fake.count("GET", "cdn", ref=blob.digest) == 4  # the first GET and three resumes
    assert not blob_data_path(root, blob.digest).exists()
    assert not _link(root, B, blob.digest).exists()
    assert _serious(logs) == []
    # The next pull, with the upstream healthy, works for both.
    fake.switches.stall_blob_after = None
    for name in (A, B):
        response, data = await fetch(_blob_url(registry.url, name, blob.digest))
        assert response.code == 200
        assert header(response, "docker-content-digest") == blob.digest
        assert sha256(data) == blob.digest


async def _body_or_none(response: Any) -> bytes | None:
    try:
        data: bytes = await response.content()
    except Exception:
        return None
    return data


@pytest_twisted.ensureDeferred
async def test_tables_keyed_by_client_choices_stay_at_their_caps(fake: FakeUpstream) -> None:
    """Tags, names and digests are chosen by clients: asking about 30 distinct tags and 30
    distinct blobs through a cache whose tables hold 4 entries leaves at most 4 in each."""
    image = fake.content.add_image(A, "latest", [100])
    blobs = [GeneratedBlob(f"many-{i}", 10) for i in range(30)]
    for i, blob in enumerate(blobs):
        fake.content.add_blob(A, blob)
        fake.content.retag(A, f"t{i}", image.digest)
    driver = MemoryDriver()
    client = UpstreamClient(reactor, fake.url, timeout=5, max_tokens=4)
    cache = hub_cache(fake.url, client, driver, limits=Limits(inflight=4, remembered=4))
    try:
        for i, blob in enumerate(blobs):
            await cache.manifest_get(A, A, f"t{i}")
            await cache.blob_stat(A, A, Digest.parse(blob.digest))
            assert all(size <= 4 for size in cache.table_sizes().values()), cache.table_sizes()
        sizes = cache.table_sizes()
        assert sizes["checked"] == 4
        assert sizes["confirmed"] == 4
        assert sizes["heads"] == sizes["fills"] == sizes["revalidations"] == 0
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_upstream_calls_in_flight_are_capped(fake: FakeUpstream) -> None:
    """With one upstream HEAD held and a cap of one call in flight, a HEAD of another digest
    is refused at once (503 UNAVAILABLE with Retry-After) rather than queued without bound;
    the same digest through the same repository still shares the held call."""
    first, second = GeneratedBlob("cap-1", 10), GeneratedBlob("cap-2", 10)
    for blob in (first, second):
        fake.content.add_blob(A, blob)
    driver = MemoryDriver()
    client = UpstreamClient(reactor, fake.url, timeout=5)
    cache = hub_cache(fake.url, client, driver, limits=Limits(inflight=1))
    held = fake.hold("HEAD", "blob", name=A, ref=first.digest)
    try:
        one = ensureDeferred(cache.blob_stat(A, A, Digest.parse(first.digest)))
        same = ensureDeferred(cache.blob_stat(A, A, Digest.parse(first.digest)))
        await wait_for(lambda: held.arrived == 1)
        with pytest.raises(RegistryError) as refused:
            await cache.blob_stat(A, A, Digest.parse(second.digest))
        assert refused.value.code is UNAVAILABLE
        assert refused.value.headers == {"Retry-After": "1"}
        assert cache.table_sizes()["heads"] == 1
    finally:
        held.release()
    assert (await one).size == (await same).size == 10
    assert fake.count("HEAD", "blob", name=A, ref=first.digest) == 1
    assert (await cache.blob_stat(A, A, Digest.parse(second.digest))).size == 10
    await client.close()


@pytest_twisted.ensureDeferred
async def test_max_inflight_caps_fills_over_the_wire(proxied: Proxied, fake: FakeUpstream) -> None:
    """``[proxy:NAME] max_inflight = 1``: while one blob's upstream GET is held, a pull of
    another blob gets 503 UNAVAILABLE with Retry-After at once; both pull fine afterwards."""
    first, second = GeneratedBlob("wire-cap-1", 100), GeneratedBlob("wire-cap-2", 100)
    for blob in (first, second):
        fake.content.add_blob(A, blob)
    registry = await proxied(max_inflight="1")
    held = fake.hold("GET", "blob", name=A, ref=first.digest)
    url = f"{registry.url}/v2/alpine/blobs/"
    try:
        one = ensureDeferred(fetch(url + first.digest))
        await wait_for(lambda: held.arrived == 1)
        response, body = await fetch(url + second.digest)
        assert response.code == 503
        assert header(response, "retry-after") == "1"
        assert [e["code"] for e in json.loads(body)["errors"]] == ["UNAVAILABLE"]
    finally:
        held.release()
    response, body = await one
    assert response.code == 200 and sha256(body) == first.digest
    response, body = await fetch(url + second.digest)
    assert response.code == 200 and sha256(body) == second.digest


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_claims_a_hosted_blob_gets_it_only_by_sending_it(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """A private hosted repository stores D.  The upstream answers a HEAD of D for A (its
    size is right) but cannot send D's bytes (its bodies are corrupted): the cache does not
    serve the hosted copy through A on the strength of that HEAD.  It fetches D, the bytes
    fail the digest, and A gets no link: what a claim unlocks is only what the upstream
    itself delivers."""
    data = b"a hosted private layer " * 4000
    blob = BytesBlob(data)
    fake.content.add_blob(A, blob)
    fake.switches.corrupt_blobs = True
    registry = await proxied(default="false")
    await push_blob(registry.url, "team/private", data)
    url = f"{registry.url}/v2/docker.io/{A}/blobs/{blob.digest}"
    for method in ("GET", "HEAD"):
        _, body = await _outcome(url, method)
        assert body != data, method
    assert fake.count("GET", "cdn", ref=blob.digest) >= 1
    assert not _link(storage_root(registry), A, blob.digest).exists()
    _, body = await _outcome(url)
    assert body != data


@pytest_twisted.ensureDeferred
async def test_a_fill_in_flight_does_not_make_a_hosted_copy_servable_through_a_head(
    proxied: Proxied, fake: FakeUpstream, logs: LogCapture
) -> None:
    """A private hosted repository stores D.  A's fill of D is under way (its upstream cannot
    send D: its bodies are corrupted); B's upstream confirms D with a HEAD of the right size.
    B joins the fill, which fails: B never receives the hosted bytes, and never links them.
    (The HEAD made B eligible to join the fill, not to be linked to whatever bytes of D the
    storage holds.)"""
    data = b"a hosted private layer, not the upstream's " * 6000
    blob = BytesBlob(data)
    fake.content.add_blob(A, blob)
    fake.content.add_blob(B, blob)
    registry = await proxied(default="false")
    await push_blob(registry.url, "team/private", data)
    root = storage_root(registry)
    fake.switches.corrupt_blobs = True
    held = fake.hold_body(blob.digest, after=1000)
    url_a = f"{registry.url}/v2/docker.io/{A}/blobs/{blob.digest}"
    url_b = f"{registry.url}/v2/docker.io/{B}/blobs/{blob.digest}"
    through_a = _start(url_a)
    try:
        await wait_for(lambda: held.arrived == 1)
        through_b = _start(url_b)
        await wait_for(lambda: fake.count("HEAD", "blob", name=B, ref=blob.digest) == 1)
        for _ in range(20):  # a few reactor turns: a hosted copy would be served by now
            await wait_for(lambda: True)
        assert not through_b.called or through_b.result[1] != data
    finally:
        held.release()
    for outcome in (await through_a, await through_b):
        assert outcome[1] != data
    assert not _link(root, A, blob.digest).exists()
    assert not _link(root, B, blob.digest).exists()
    assert _serious(logs) == []


@pytest.mark.parametrize("claimed", [2 * 300_000, 120_000], ids=["over", "under"])
@pytest_twisted.ensureDeferred
async def test_a_joined_fill_of_another_size_than_the_head_said_is_not_served(
    proxied: Proxied, fake: FakeUpstream, logs: LogCapture, claimed: int
) -> None:
    """B's upstream HEAD gives D another size than the body A's fill is receiving: B does not
    join (502), so it neither gets a short blob as a complete answer nor waits for bytes past
    the blob's end (which held the reactor in a loop), and A's pull is unharmed."""
    blob = GeneratedBlob("sized", 300_000)
    fake.content.add_blob(A, blob)
    fake.content.add_blob(B, blob)
    fake.switches.head_sizes = {B: claimed}
    registry = await proxied()
    root = storage_root(registry)
    held = fake.hold_body(blob.digest, after=100_000)
    through_a = _start(_blob_url(registry.url, A, blob.digest))
    try:
        await wait_for(lambda: held.arrived == 1)
        response = await treq.get(_blob_url(registry.url, B, blob.digest))
        body = await _body_or_none(response)
        assert response.code == 502, body
        assert body is not None
        assert json.loads(body)["errors"] == [
            {
                "code": "UNAVAILABLE",
                "message": "the upstream's answers disagree on this blob's size",
                "detail": {"name": f"docker.io/{B}", "digest": blob.digest},
            }
        ]
    finally:
        held.release()
    status, data = await through_a
    assert status == 200 and data is not None and sha256(data) == blob.digest
    assert not _link(root, B, blob.digest).exists()
    assert _serious(logs) == []
    # The registry still answers at once (no loop holds its reactor).
    response, _ = await fetch(f"{registry.url}/v2/")
    assert response.code == 200


def _exchanges(fake: FakeUpstream) -> list[tuple[str, str, str | None]]:
    """What the fake received, in order: method, kind and ``Authorization`` (a Bearer
    token's value, random, said as "Bearer")."""
    found = []
    for r in fake.log:
        authorization = r.authorization
        if authorization is not None and authorization.startswith("Bearer "):
            authorization = "Bearer"
        found.append((r.method, r.kind, authorization))
    return found


@pytest_twisted.ensureDeferred
async def test_a_token_realm_only_a_repository_path_names_gets_nothing(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """The upstream's ``/v2/`` answers 200 without a challenge; its repository paths answer
    401 naming a token realm on another origin (the CDN's ``/token``).  ``/v2/`` announces
    no realm, so there is none to trust: each pull is 502 UNAVAILABLE, the realm gets no
    request at all (neither the configured credentials nor a token request), and nothing is
    learned from that answer.  Once ``/v2/`` itself names a realm, that one is used."""
    fake.switches.credentials = ("alice", "s3cret")
    image = fake.content.add_image(A, "latest", [100])
    fake.switches.open_ping = True
    fake.switches.path_realm = f"{fake.cdn_url}/token"
    registry = await proxied(username="alice", password="s3cret")
    url = f"{registry.url}/v2/alpine/manifests/latest"
    for _ in range(2):
        response, body = await fetch(url)
        assert response.code == 502, body
        assert json.loads(body) == {
            "errors": [
                {
                    "code": "UNAVAILABLE",
                    "message": "upstream answer cannot be trusted",
                    "detail": {
                        "name": "docker.io/library/alpine",
                        "reference": "latest",
                        "upstream": (
                            "/v2/library/alpine/manifests/latest asked for bearer auth with "
                            f"realm '{fake.cdn_url}/token', which the registry's /v2/ does not "
                            "announce; nothing was sent there"
                        ),
                    },
                }
            ]
        }
    # Each 401 made the cache ask /v2/ again, which still named no realm.
    assert _exchanges(fake) == [
        ("GET", "ping", None),
        ("GET", "manifest", None),
        ("GET", "ping", None),
        ("GET", "manifest", None),
        ("GET", "ping", None),
    ]
    # /v2/ now names the upstream's own token service, and so do its paths.
    fake.log.clear()
    fake.switches.open_ping = False
    fake.switches.path_realm = None
    response, body = await fetch(url)
    assert response.code == 200, body
    assert body == image.manifest
    assert _exchanges(fake) == [
        ("GET", "manifest", None),
        ("GET", "ping", None),
        ("GET", "token", ALICE),
        ("GET", "manifest", "Bearer"),
    ]


@pytest_twisted.ensureDeferred
async def test_a_path_asking_for_basic_gets_the_credentials_when_v2_asked_for_nothing(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """``/v2/`` open, the repositories behind Basic auth: the configured credentials go to
    the upstream's own origin (the only place Basic ever sends them), without asking
    ``/v2/`` again."""
    fake.switches.credentials = ("alice", "s3cret")
    fake.switches.auth = "basic"
    fake.switches.open_ping = True
    image = fake.content.add_image(A, "latest", [100])
    registry = await proxied(username="alice", password="s3cret")
    response, body = await fetch(f"{registry.url}/v2/alpine/manifests/latest")
    assert response.code == 200, body
    assert body == image.manifest
    assert _exchanges(fake) == [
        ("GET", "ping", None),
        ("GET", "manifest", None),
        ("GET", "manifest", ALICE),
    ]
