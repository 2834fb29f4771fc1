"""
Credentials end to end: anonymous, Basic (htpasswd), Bearer tokens from a token service,
credentials read from a Docker config.json, TLS with a private CA and a client certificate;
and the credential rules against the fake Docker Hub (tokens only from the realm the
registry's own ``/v2/`` announced, nothing to a redirect target).
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from registry.client import (
    BadResponse,
    Credentials,
    TLSOptions,
    Unauthorized,
    Unavailable,
    UntrustedCertificate,
    credentials_from_config,
)
from tests.auth import pki
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.tokenserver import token_service
from tests.e2e.conftest import Starter
from tests.fakes.tls import make_test_pki
from tests.fakes.upstream import FakeUpstream, start_fake_upstream

USERS = {"alice": "alice-pw"}


def _htpasswd(tmp_path: Path) -> dict[str, dict[str, str]]:
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}"
        for u, p in USERS.items()
    ]
    (tmp_path / "htpasswd").write_text("\n".join(lines) + "\n")
    return {"auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "test"}}


@pytest_twisted.ensureDeferred
async def test_basic_auth_and_config_json(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    registry = await start_registry(_htpasswd(tmp_path))
    anonymous = make_client(registry.url)
    with pytest.raises(Unauthorized) as info:
        await anonymous.upload_blob("a/b", b"data")
    assert info.value.status == 401 and info.value.code == "UNAUTHORIZED"
    wrong = make_client(registry.url, credentials=Credentials("alice", "nope"))
    with pytest.raises(Unauthorized):
        await wrong.upload_blob("a/b", b"data")
    with pytest.raises(Unauthorized):
        await wrong.check()
    # The right credentials, read from a config.json's base64 ``auth``.
    host = registry.url.removeprefix("http://")
    auth = base64.b64encode(b"alice:alice-pw").decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {host: {"auth": auth}}, "credHelpers": {}}))
    found = credentials_from_config(host, config)
    assert found == Credentials("alice", "alice-pw")
    assert credentials_from_config("elsewhere:5000", config) is None
    client = make_client(registry.url, credentials=found)
    await client.check()
    assert str(await client.upload_blob("a/b", b"data")) == images.digest(b"data")
    assert client.session.challenge is not None and client.session.challenge.scheme == "basic"


@pytest_twisted.ensureDeferred
async def test_bearer_tokens_per_scope(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Pushing buys a pull,push token for the repository (a mount also asks pull on the
    source); the token service sees the credentials, the registry only the token."""
    async with token_service(tmp_path, USERS) as tokens:
        registry = await start_registry(tokens.sections)
        client = make_client(registry.url, credentials=Credentials("alice", "alice-pw"))
        dgst = await client.upload_blob("team/app", b"layer")
        assert await client.blob_exists("team/app", dgst) == 5
        assert await client.mount_blob("team/other", dgst, "team/app") is True
        scopes = [s for _, s in tokens.log]
        assert ["repository:team/app:pull,push"] in scopes
        assert ["repository:team/app:pull"] in scopes
        assert ["repository:team/other:pull,push", "repository:team/app:pull"] in scopes
        assert all((a or "").startswith("Basic ") for a, _ in tokens.log)
        # Cached: one token per scope, however many calls.
        before = len(tokens.log)
        await client.blob_exists("team/app", dgst)
        assert len(tokens.log) == before
        # Anonymous gets a pull-only token: the push is refused with the OCI code.
        anonymous = make_client(registry.url)
        with pytest.raises(Unauthorized) as info:
            await anonymous.upload_blob("team/app", b"more")
        assert info.value.code in ("DENIED", "UNAUTHORIZED")


@pytest_twisted.ensureDeferred
async def test_tls_private_ca_and_client_certificate(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    ca_key, key, client_key = pki.new_key("ec"), pki.new_key("ec"), pki.new_key("ec")
    ca = pki.certificate("test CA", ca_key, ca=True)
    server = pki.certificate("127.0.0.1", key, (ca_key, ca), server=True)
    client_cert = pki.certificate("alice", client_key, (ca_key, ca), client=True)
    ca_file = pki.write(tmp_path / "ca.pem", pki.pem_cert(ca))
    cert = pki.write(tmp_path / "server.pem", pki.pem_cert(server))
    server_key = pki.write(tmp_path / "server.key", pki.pem_key(key))
    mine = pki.write(tmp_path / "client.pem", pki.pem_cert(client_cert))
    mine_key = pki.write(tmp_path / "client.key", pki.pem_key(client_key))
    listen = f"ssl:{{port}}:interface=127.0.0.1:privateKey={server_key}:certKey={cert}"
    registry = await start_registry(
        {"http": {"clientcas": ca_file, "clientauth": "required"}}, listen=listen
    )
    assert registry.url.startswith("https://")
    with_cert = make_client(
        registry.url, tls=TLSOptions(ca_file=ca_file, cert_file=mine, key_file=mine_key)
    )
    assert str(await with_cert.upload_blob("t/ls", b"tls")) == images.digest(b"tls")
    assert await with_cert.blob_exists("t/ls", images.digest(b"tls")) == 3
    # The registry refuses the handshake (no client certificate): not our verdict on its
    # certificate, an Unavailable as before.
    without_cert = make_client(registry.url, tls=TLSOptions(ca_file=ca_file), retries=0)
    with pytest.raises(Unavailable):
        await without_cert.blob_exists("t/ls", images.digest(b"tls"))
    untrusted = make_client(
        registry.url, tls=TLSOptions(cert_file=mine, key_file=mine_key), retries=0
    )
    with pytest.raises(UntrustedCertificate, match="certificate verify failed"):
        await untrusted.blob_exists("t/ls", images.digest(b"tls"))
    insecure = make_client(
        registry.url, tls=TLSOptions(verify=False, cert_file=mine, key_file=mine_key)
    )
    assert await insecure.blob_exists("t/ls", images.digest(b"tls")) == 3


@pytest_twisted.ensureDeferred
async def test_credentials_go_only_to_the_announced_realm(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """Blob bytes come from the CDN without ``Authorization``; a CDN that asks for
    authentication gets nothing (no token from its realm) and the call fails as Unauthorized;
    the registry's own challenge stays in use."""
    fake.switches.credentials = ("alice", "s3cret")
    image = fake.content.add_image("library/alpine", "latest", [4096])
    client = make_client(fake.url, credentials=Credentials("alice", "s3cret"))
    layer = image.layers[0]
    data = await (await client.blob("library/alpine", layer.digest)).read()
    assert images.digest(data) == layer.digest
    fake.switches.cdn_challenge = True
    with pytest.raises(Unauthorized) as info:
        await client.blob("library/alpine", layer.digest)
    assert "not the registry" in info.value.reason
    fake.switches.cdn_challenge = False
    again = await (await client.blob("library/alpine", layer.digest)).read()
    assert again == data
    assert fake.count(kind="cdn-token") == 0
    assert all(r.authorization is None for r in fake.log if r.kind == "cdn")
    assert all((r.authorization or "").startswith("Basic ") for r in fake.log if r.kind == "token")


@pytest_twisted.ensureDeferred
async def test_a_realm_one_answer_names_gets_credentials_only_once_v2_names_it(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """A repository path's 401 names another token realm than the registry's ``/v2/`` does
    (a proxy in front of one path, a misbehaving endpoint): the client asks ``/v2/`` again,
    keeps the realm it names, and sends the credentials nowhere else.  Once ``/v2/`` names
    the new realm too, it is the realm."""
    fake.switches.credentials = ("alice", "s3cret")
    fake.content.add_image("library/alpine", "latest", [100])
    client = make_client(fake.url, credentials=Credentials("alice", "s3cret"))
    await client.manifest("library/alpine", "latest")
    fake.switches.path_realm = f"{fake.cdn_url}/token"
    fake.revoke_tokens()
    await client.manifest("library/alpine", "latest")  # a token from the realm /v2/ names
    assert fake.count(kind="cdn-token") == 0
    fake.switches.token_realm = fake.switches.path_realm
    fake.revoke_tokens()
    with contextlib.suppress(Unauthorized):  # the CDN's tokens are no good here
        await client.manifest("library/alpine", "latest")
    assert fake.count(kind="cdn-token") >= 1


@pytest_twisted.ensureDeferred
async def test_a_realm_only_a_path_names_gets_nothing_when_v2_names_none(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """``/v2/`` answers 200 without a challenge, a repository path 401 naming a realm on
    another origin: the call fails (`BadResponse`) and that realm receives nothing, however
    often it is named; the registry's paths get no ``Authorization``."""
    fake.switches.credentials = ("alice", "s3cret")
    fake.switches.open_ping = True
    fake.switches.path_realm = f"{fake.cdn_url}/token"
    fake.content.add_image("library/alpine", "latest", [100])
    client = make_client(fake.url, credentials=Credentials("alice", "s3cret"))
    for _ in range(2):
        with pytest.raises(BadResponse) as info:
            await client.manifest("library/alpine", "latest")
        assert info.value.reason == (
            f"/v2/library/alpine/manifests/latest asked for bearer auth with realm "
            f"'{fake.cdn_url}/token', which the registry's /v2/ does not announce; "
            "nothing was sent there"
        )
    assert [(r.kind, r.authorization) for r in fake.log] == [
        ("ping", None),
        ("manifest", None),
        ("ping", None),
        ("manifest", None),
        ("ping", None),
    ]
    assert client.session.challenge is None


@pytest_twisted.ensureDeferred
async def test_no_credentials_to_a_plain_http_realm_of_an_https_registry(
    fake: FakeUpstream, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A registry reached over https whose challenge names an ``http://`` token service: the
    call fails in words and the plain-http service receives no request at all (the password
    would have crossed the network in Basic); without credentials the anonymous token is
    fetched as before.  ``fake`` plays the plain-http token service here."""
    pki = make_test_pki(tmp_path)
    secure = await start_fake_upstream(reactor, tls=pki.server_options)
    try:
        secure.content.add_image("library/alpine", "3", [100])
        secure.switches.token_realm = f"{fake.url}/token"
        client = make_client(
            secure.url, credentials=Credentials("alice", "s3cret"), tls=TLSOptions(pki.ca_path)
        )
        with pytest.raises(Unauthorized) as info:
            await client.manifest("library/alpine", "3")
        assert info.value.reason == (
            f"the registry at {secure.url} names an insecure token service {fake.url}/token; "
            "credentials are not sent over plain HTTP"
        )
        assert fake.log == []
        anonymous = make_client(secure.url, tls=TLSOptions(pki.ca_path))
        with pytest.raises(Unauthorized):  # the token is the fake's, not the secure one's
            await anonymous.manifest("library/alpine", "3")
        # Asked once (a token refused right after it was asked for is not asked for again),
        # never with a password.
        assert [(r.kind, r.authorization) for r in fake.log] == [("token", None)]
    finally:
        await secure.stop()


def test_tls_files_problem_names_the_file_that_cannot_be_used(tmp_path: Path) -> None:
    """`TLSOptions.problem`: what configuration checks report before the first connection."""
    ca_key, client_key = pki.new_key("ec"), pki.new_key("ec")
    ca = pki.certificate("test CA", ca_key, ca=True)
    ca_file = pki.write(tmp_path / "ca.pem", pki.pem_cert(ca))
    mine = pki.write(
        tmp_path / "client.pem",
        pki.pem_cert(pki.certificate("alice", client_key, (ca_key, ca), client=True)),
    )
    mine_key = pki.write(tmp_path / "client.key", pki.pem_key(client_key))
    text = pki.write(tmp_path / "notes.txt", b"not PEM\n")
    missing = str(tmp_path / "missing.pem")
    assert TLSOptions(ca_file=ca_file, cert_file=mine, key_file=mine_key).problem() is None
    assert TLSOptions().problem() is None
    assert TLSOptions(ca_file=missing).problem() == (
        "ca_file",
        f"cannot read {missing}: no such file or directory",
    )
    assert TLSOptions(ca_file=text).problem() == ("ca_file", f"no PEM certificate in {text}")
    which, reason = TLSOptions(cert_file=text, key_file=mine_key).problem() or ("", "")
    assert which == "cert_file" and reason.startswith(f"{text}: ")
    which, reason = TLSOptions(cert_file=mine, key_file=text).problem() or ("", "")
    assert which == "key_file" and reason.startswith(f"{text}: ")
    which, reason = TLSOptions(cert_file=mine).problem() or ("", "")  # no key in the file
    assert which == "cert_file" and reason.startswith(f"{mine}: ")
    assert TLSOptions(key_file=mine_key).problem() == ("key_file", "needs a certificate file")


class _RedirectingRegistry(Resource):
    """Every path needs Basic alice:alice-pw; a blob GET is redirected to another path of
    the same origin (a registry serving blobs from a route of its own)."""

    isLeaf = True

    def __init__(self, body: bytes, via: str = "") -> None:
        super().__init__()
        self.body = body
        self.via = via  # another origin the blob redirect goes through first
        self.seen: list[tuple[str, str | None]] = []

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode()
        authorization = request.getHeader("authorization")
        self.seen.append((path, authorization))
        if authorization != "Basic " + base64.b64encode(b"alice:alice-pw").decode():
            request.setResponseCode(401)
            request.setHeader("WWW-Authenticate", 'Basic realm="test"')
            return b'{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}'
        if path.startswith("/v2/a/b/blobs/"):
            request.setResponseCode(307)
            request.setHeader("Location", self.via + "/store/" + path.rsplit("/", 1)[1])
            return b""
        if path.startswith("/store/"):
            request.setHeader("Content-Type", "application/octet-stream")
            return self.body
        return b"{}"


@pytest_twisted.ensureDeferred
async def test_a_redirect_within_the_registrys_origin_keeps_the_credentials(
    make_client: ClientFactory,
) -> None:
    """The registry's own origin gets its credentials on every hop (as docker and containerd
    send them): a blob served from another path of the same host, port and scheme."""
    body = b"same origin blob"
    registry = _RedirectingRegistry(body)
    port = reactor.listenTCP(0, Site(registry), interface="127.0.0.1")
    try:
        client = make_client(
            f"http://127.0.0.1:{port.getHost().port}",
            credentials=Credentials("alice", "alice-pw"),
        )
        digest = images.digest(body)
        blob = await client.blob("a/b", digest)
        assert await blob.read() == body
        basic = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
        assert registry.seen[-2:] == [
            (f"/v2/a/b/blobs/{digest}", basic),
            (f"/store/{digest}", basic),
        ]
    finally:
        await port.stopListening()


class _Bouncer(Resource):
    """Another origin (a CDN) that sends every request back to ``target`` + its path: a path
    of the registry's origin that it chooses."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.target = ""
        self.seen: list[tuple[str, str | None]] = []

    def render_GET(self, request: Request) -> bytes:
        self.seen.append((request.path.decode(), request.getHeader("authorization")))
        request.setResponseCode(302)
        request.setHeader("Location", self.target + request.path.decode())
        return b""


@pytest_twisted.ensureDeferred
async def test_a_redirect_back_to_the_registry_from_elsewhere_carries_no_credentials(
    make_client: ClientFactory,
) -> None:
    """Credentials go to the registry's origin only on the hops before the chain leaves it: a
    redirect target elsewhere that sends the client back to the registry, at a path it chose,
    does not get the credentials used there (it would pick which resource they open)."""
    bouncer = _Bouncer()
    cdn = reactor.listenTCP(0, Site(bouncer), interface="127.0.0.1")
    registry = _RedirectingRegistry(b"blob", via=f"http://127.0.0.1:{cdn.getHost().port}")
    port = reactor.listenTCP(0, Site(registry), interface="127.0.0.1")
    bouncer.target = f"http://127.0.0.1:{port.getHost().port}"
    try:
        client = make_client(
            f"http://127.0.0.1:{port.getHost().port}",
            credentials=Credentials("alice", "alice-pw"),
            retries=0,
        )
        digest = images.digest(b"blob")
        with pytest.raises(Unauthorized):
            await (await client.blob("a/b", digest)).read()
        basic = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
        assert (f"/v2/a/b/blobs/{digest}", basic) in registry.seen
        assert (f"/store/{digest}", None) in registry.seen
        assert (f"/store/{digest}", basic) not in registry.seen
        assert {authorization for _, authorization in bouncer.seen} == {None}
    finally:
        await port.stopListening()
        await cdn.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_token_service_refusal_says_who_refused_and_why(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """Wrong credentials at Docker Hub's token service: the error names the token service
    (not "registry 401"), its address and the scope, and carries what it said (its
    ``{"details": ...}``), which was dropped."""
    fake.switches.credentials = ("alice", "s3cret")
    fake.content.add_image("library/alpine", "latest", [100])
    client = make_client(fake.url, credentials=Credentials("alice", "wrong"), retries=0)
    with pytest.raises(Unauthorized) as info:
        await client.manifest("library/alpine", "latest")
    realm = f"{fake.url}/token"
    assert str(info.value) == (
        f"token service 401: {realm} refused a token for repository:library/alpine:pull:"
        " incorrect username or password"
    )
    assert info.value.status == 401


class _RangeWithoutContentRange(Resource):
    """A registry answering a range GET 206 with no ``Content-Range``, or one no parser
    takes."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.content_range: str | None = None

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(206)
        if self.content_range is not None:
            request.setHeader("Content-Range", self.content_range)
        return b"tail"


@pytest_twisted.ensureDeferred
async def test_a_206_without_a_usable_content_range_says_what_came(
    make_client: ClientFactory,
) -> None:
    """Refused, saying what the answer had instead of a range "from -1"."""
    registry = _RangeWithoutContentRange()
    port = reactor.listenTCP(0, Site(registry), interface="127.0.0.1")
    try:
        client = make_client(f"http://127.0.0.1:{port.getHost().port}", retries=0)
        digest = images.digest(b"the whole blob")
        for content_range, said in (
            (None, "no Content-Range"),
            ("bits 4-7", "Content-Range 'bits 4-7'"),
        ):
            registry.content_range = content_range
            with pytest.raises(BadResponse) as caught:
                await client.blob("a/b", digest, offset=4)
            assert str(caught.value) == f"asked for bytes from 4, got {said}"
    finally:
        await port.stopListening()
