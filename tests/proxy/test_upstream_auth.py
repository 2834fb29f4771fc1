"""Token flow, caching, expiry, Basic auth, TLS trust and name mapping, over real loopback HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import Clock

from registry.api.digests import Digest
from registry.client._bounded import BoundedMap
from registry.client.errors import UntrustedCertificate
from registry.proxy.errors import UpstreamNotFound, UpstreamUnauthorized
from registry.proxy.upstream import UpstreamClient
from tests.fakes.content import Image
from tests.fakes.tls import make_test_pki
from tests.fakes.upstream import FakeUpstream, start_fake_upstream
from tests.proxy.conftest import ClientFactory, reactor


@pytest_twisted.ensureDeferred
async def test_anonymous_token_flow(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """/v2/ gives the challenge, the token is fetched without credentials for the repository's
    pull scope, and the manifest request carries it."""
    client = make_client()
    manifest = await client.manifest("library/alpine", "latest")
    assert manifest.digest == Digest.parse(image.digest)
    assert manifest.body == image.manifest
    assert fake.count("GET", "ping") == 1
    assert fake.count("GET", "token") == 1
    token_request = next(r for r in fake.log if r.kind == "token")
    assert token_request.authorization is None
    manifest_request = next(r for r in fake.log if r.kind == "manifest")
    assert manifest_request.authorization is not None
    assert manifest_request.authorization.startswith("Bearer ")
    assert client.token_requests == 1


@pytest_twisted.ensureDeferred
async def test_token_with_credentials(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.credentials = ("alice", "s3cret")
    client = make_client(username="alice", password="s3cret")
    manifest = await client.manifest("library/alpine", "latest")
    assert manifest.digest == Digest.parse(image.digest)
    token_request = next(r for r in fake.log if r.kind == "token")
    assert token_request.authorization is not None
    assert token_request.authorization.startswith("Basic ")

    anonymous = make_client()
    with pytest.raises(UpstreamUnauthorized) as info:
        await anonymous.manifest("library/alpine", "latest")
    assert info.value.status == 401
    wrong = make_client(username="alice", password="nope")
    with pytest.raises(UpstreamUnauthorized):
        await wrong.manifest("library/alpine", "latest")


@pytest_twisted.ensureDeferred
async def test_one_token_for_many_calls(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """Sequential and concurrent calls for one repository share one ping and one token fetch;
    another repository needs its own scope."""
    client = make_client()
    calls = [ensureDeferred(client.manifest("library/alpine", "latest")) for _ in range(8)]
    results = await DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
    assert all(ok for ok, _ in results)
    for _ in range(3):
        await client.manifest("library/alpine", "latest", "HEAD")
    await client.blob_head("library/alpine", image.layers[0].digest)
    assert fake.count("GET", "ping") == 1
    assert fake.count("GET", "token") == 1
    assert client.tokens.fetches == 1

    fake.content.add_image("library/busybox", "1", [10])
    await client.manifest("library/busybox", "1")
    assert fake.count("GET", "token") == 2


@pytest_twisted.ensureDeferred
async def test_expires_in_below_60_is_clamped(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """An upstream saying expires_in=10 gets its token reused for 60 s of our clock."""
    fake.switches.token_expires_in = 10
    clock = Clock()
    client = make_client(clock=clock)
    await client.manifest("library/alpine", "latest", "HEAD")
    clock.advance(59)
    await client.manifest("library/alpine", "latest", "HEAD")
    assert fake.count("GET", "token") == 1
    clock.advance(1.5)
    await client.manifest("library/alpine", "latest", "HEAD")
    assert fake.count("GET", "token") == 2


@pytest_twisted.ensureDeferred
async def test_token_expiry_follows_expires_in(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.token_expires_in = 300
    fake.switches.token_fields = ("access_token",)  # only the OAuth2 field
    clock = Clock()
    client = make_client(clock=clock)
    await client.manifest("library/alpine", "latest", "HEAD")
    clock.advance(299)
    await client.manifest("library/alpine", "latest", "HEAD")
    assert fake.count("GET", "token") == 1
    clock.advance(2)
    await client.manifest("library/alpine", "latest", "HEAD")
    assert fake.count("GET", "token") == 2


@pytest_twisted.ensureDeferred
async def test_token_renewed_once_on_401(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """A token the upstream stops honouring before its expiry is replaced on the 401."""
    client = make_client()
    await client.manifest("library/alpine", "latest", "HEAD")
    fake.revoke_tokens()
    manifest = await client.manifest("library/alpine", "latest")
    assert manifest.digest == Digest.parse(image.digest)
    assert fake.count("GET", "token") == 2
    assert fake.count("GET", "manifest") == 2  # the 401 and the retry
    assert fake.count("GET", "ping") == 1


@pytest_twisted.ensureDeferred
async def test_token_without_the_scope_is_unauthorized(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    """A token asked for by this very call that does not cover the repository ends in an
    error at once: another token for the same scope would be refused the same way."""
    fake.switches.ratelimit_remaining = 100
    original = fake.authorized

    def never_for_alpine(request: object, name: str | None) -> bool:
        return name is None and original(request, name)  # type: ignore[arg-type]

    fake.authorized = never_for_alpine  # type: ignore[method-assign]
    client = make_client()
    with pytest.raises(UpstreamUnauthorized):
        await client.manifest("library/alpine", "latest")
    assert fake.count("GET", "manifest") == 1


@pytest_twisted.ensureDeferred
async def test_basic_auth_upstream(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.auth = "basic"
    fake.switches.credentials = ("bob", "pw")
    client = make_client(username="bob", password="pw")
    manifest = await client.manifest("library/alpine", "latest")
    assert manifest.digest == Digest.parse(image.digest)
    blob = await client.blob("library/alpine", image.layers[0].digest)
    data = await blob.read()
    assert len(data) == image.layers[0].size
    assert fake.count(kind="token") == 0
    registry_requests = [r for r in fake.log if r.kind in ("manifest", "blob")]
    assert all((r.authorization or "").startswith("Basic ") for r in registry_requests)
    assert fake.cdn_auth_rejections == 0

    with pytest.raises(UpstreamUnauthorized):
        await make_client(username="bob", password="wrong").manifest("library/alpine", "latest")


@pytest_twisted.ensureDeferred
async def test_no_auth_upstream(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.auth = "none"
    client = make_client()
    manifest = await client.manifest("library/alpine", "latest")
    assert manifest.body == image.manifest
    assert all(r.authorization is None for r in fake.log)


@pytest_twisted.ensureDeferred
async def test_library_mapping(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    hub_style = make_client(docker_hub_library=True)
    manifest = await hub_style.manifest("alpine", "latest")
    assert manifest.digest == Digest.parse(image.digest)
    assert fake.log[-1].name == "library/alpine"
    token_scope_ok = hub_style.tokens.cached(
        (f"{fake.url}/token", "fake-registry", "repository:library/alpine:pull")
    )
    assert token_scope_ok is not None

    plain = make_client()  # 127.0.0.1 is not Docker Hub: no mapping by default
    assert plain.upstream_name("alpine") == "alpine"
    with pytest.raises(UpstreamNotFound) as info:
        await plain.manifest("alpine", "latest")
    assert info.value.code == "NAME_UNKNOWN"
    assert plain.upstream_name("someone/app") == "someone/app"

    hub = UpstreamClient(reactor, "https://registry-1.docker.io")
    assert hub.upstream_name("alpine") == "library/alpine"
    assert hub.upstream_name("bitnami/redis") == "bitnami/redis"
    await hub.close()


@pytest_twisted.ensureDeferred
async def test_tls_upstream_with_ca_bundle(tmp_path: Path, make_client: ClientFactory) -> None:
    """Verified against the given CA; the same server fails verification without it (at
    once: a configuration error, not an outage)."""
    pki = make_test_pki(tmp_path)
    tls_fake = await start_fake_upstream(reactor, tls=pki.server_options)
    try:
        image = tls_fake.content.add_image("library/alpine", "3", [5000])
        assert tls_fake.url.startswith("https://")
        client = make_client(url=tls_fake.url, ca_bundle=pki.ca_path)
        manifest = await client.manifest("library/alpine", "3")
        assert manifest.digest == Digest.parse(image.digest)
        blob = await client.blob("library/alpine", image.layers[0].digest)
        assert len(await blob.read()) == 5000

        untrusting = make_client(url=tls_fake.url)
        with pytest.raises(UntrustedCertificate):
            await untrusting.manifest("library/alpine", "3")
    finally:
        await tls_fake.stop()


@pytest_twisted.ensureDeferred
async def test_token_table_stays_at_its_cap(fake: FakeUpstream, make_client: ClientFactory) -> None:
    """A token per scope, and scopes are names clients choose: pulling 40 distinct names keeps
    8 tokens (the least recently used go), and the names still in the table reuse theirs."""
    for i in range(40):
        fake.content.add_image(f"team/app{i}", "latest", [100])
    client = make_client(max_tokens=8)
    for i in range(40):
        await client.manifest(f"team/app{i}", "latest")
        assert len(client.tokens) == min(i + 1, 8)
    assert fake.count("GET", "token") == 40
    await client.manifest("team/app39", "latest")  # still cached
    assert fake.count("GET", "token") == 40
    await client.manifest("team/app0", "latest")  # dropped long ago: fetched again
    assert fake.count("GET", "token") == 41
    assert len(client.tokens) == 8


def test_bounded_map_expires_and_caps() -> None:
    """The table behind every client-keyed cache: a cap with least-recently-used eviction,
    and entries gone at their expiry even if never asked for again."""
    clock = Clock()
    table: BoundedMap[str, int] = BoundedMap(clock, max_entries=3, max_age=10)
    for i, key in enumerate("abc"):
        table.put(key, i)
    assert table.get("a") == 0  # now most recently used
    table.put("d", 3)
    assert sorted(table) == ["a", "c", "d"]
    clock.advance(11)
    table.put("e", 4)  # the sweep drops every expired entry
    assert list(table) == ["e"]
    assert table.get("e") == 4
    clock.advance(10)
    assert table.get("e") is None
    assert len(table) == 0
