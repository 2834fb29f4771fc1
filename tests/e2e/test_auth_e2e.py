"""
Authentication, authorization and TLS through the running registry: htpasswd with a policy
over TLS (skopeo with --dest-creds and --dest-cert-dir), client certificates, bearer tokens
from a test token service, catalog filtering, and what failed logins leave in the logs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_twisted
import treq
from twisted.logger import globalLogPublisher

from tests.auth import pki
from tests.e2e.client import error_codes, header
from tests.e2e.conftest import Starter
from tests.e2e.ocilayout import Layout
from tests.e2e.tools import skopeo

PASSWORDS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}

POLICY = """
[groups]
admins = ["alice"]
team-a = ["bob"]

[[rule]]
groups = ["admins"]
repositories = ["**"]
actions = ["*"]

[[rule]]
groups = ["team-a"]
repositories = ["team-a/**"]
actions = ["pull", "push"]
"""


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca_key = pki.new_key("ec")
        self.ca = pki.certificate("test CA", ca_key, ca=True)
        server_key = pki.new_key("ec")
        server = pki.certificate("127.0.0.1", server_key, (ca_key, self.ca), server=True)
        client_key = pki.new_key("ec")
        client = pki.certificate("alice", client_key, (ca_key, self.ca), client=True)
        self.ca_pem = pki.write(folder / "ca.pem", pki.pem_cert(self.ca))
        self.server_cert = pki.write(folder / "server.pem", pki.pem_cert(server))
        self.server_key = pki.write(folder / "server.key", pki.pem_key(server_key))
        self.client_pem = pki.pem_cert(client) + pki.pem_key(client_key)
        # skopeo's --cert-dir wants the CA as *.crt
        self.cert_dir = folder / "certs.d"
        self.cert_dir.mkdir()
        pki.write(self.cert_dir / "ca.crt", pki.pem_cert(self.ca))

    def listen(self) -> str:
        return (
            "ssl:{port}:interface=127.0.0.1"
            f":privateKey={self.server_key}:certKey={self.server_cert}"
        )

    def client_options(self, with_certificate: bool) -> Any:
        return pki.client_tls(self.ca, self.client_pem if with_certificate else None)


class _Policy:
    """A contextFactory for treq's Agent trusting the test CA (and optionally a client cert)."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.options


def tls_client(authority: Pki, with_certificate: bool = False) -> Any:
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import directlyProvides

    policy = _Policy(authority.client_options(with_certificate))
    directlyProvides(policy, IPolicyForHTTPS)
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


def basic(user: str, password: str | None = None) -> dict[str, str]:
    secret = password if password is not None else PASSWORDS[user]
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def authority(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return Pki(folder)


@pytest.fixture
def htpasswd_sections(tmp_path: Path) -> dict[str, dict[str, str]]:
    lines = [
        f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
        for user, pw in PASSWORDS.items()
    ]
    (tmp_path / "htpasswd").write_text("\n".join(lines) + "\n")
    (tmp_path / "policy.toml").write_text(POLICY)
    return {
        "auth": {"policy": str(tmp_path / "policy.toml"), "max_failures": "5"},
        "auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "test-realm"},
    }


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) + " " + repr(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_htpasswd_policy_over_tls(
    start_registry: Starter,
    authority: Pki,
    htpasswd_sections: dict[str, dict[str, str]],
    tmp_path: Path,
    captured_logs: list[str],
) -> None:
    registry = await start_registry(htpasswd_sections, authority.listen())
    client = tls_client(authority)
    url = registry.url

    response = await client.get(f"{url}/v2/")
    assert response.code == 401
    assert header(response, "www-authenticate") == 'Basic realm="test-realm"'
    assert await error_codes(response) == ["UNAUTHORIZED"]
    response = await client.get(f"{url}/v2/", headers=basic("alice", "wrong-password"))
    assert response.code == 401
    response = await client.get(f"{url}/v2/", headers=basic("alice"))
    assert response.code == 200
    # As registry:2: the access asked for in the detail, which clients print after the
    # message ("unauthorized: authentication required").
    response = await client.get(f"{url}/v2/team/app/tags/list")
    assert response.code == 401
    assert json.loads(await response.content()) == {
        "errors": [
            {
                "code": "UNAUTHORIZED",
                "message": "authentication required",
                "detail": [
                    {"Type": "repository", "Class": "", "Name": "team/app", "Action": "pull"}
                ],
            }
        ]
    }

    # skopeo over TLS, trusting the test CA through --dest-cert-dir, pushing as alice.
    layout = Layout(tmp_path / "image")
    _, descriptor = layout.image("amd64", [{"f": b"content"}])
    layout.tag(descriptor, "v1")
    host = url.removeprefix("https://")
    await skopeo(
        "copy", "--preserve-digests", f"--dest-cert-dir={authority.cert_dir}",
        f"--dest-creds=alice:{PASSWORDS['alice']}", f"oci:{layout.root}:v1",
        f"docker://{host}/private/app:v1",
    )  # fmt: skip
    await skopeo(
        "copy", "--preserve-digests", f"--dest-cert-dir={authority.cert_dir}",
        f"--dest-creds=bob:{PASSWORDS['bob']}", f"oci:{layout.root}:v1",
        f"docker://{host}/team-a/app:v1",
    )  # fmt: skip
    with pytest.raises(AssertionError):
        await skopeo(
            "copy", f"--dest-cert-dir={authority.cert_dir}",
            f"--dest-creds=bob:{PASSWORDS['bob']}", f"oci:{layout.root}:v1",
            f"docker://{host}/private/other:v1",
        )  # fmt: skip

    response = await client.get(f"{url}/v2/private/app/manifests/v1", headers=basic("bob"))
    assert response.code == 403
    assert await error_codes(response) == ["DENIED"]
    response = await client.get(f"{url}/v2/team-a/app/manifests/v1", headers=basic("bob"))
    assert response.code == 200
    assert header(response, "docker-content-digest") == descriptor["digest"]

    # The catalog shows each user only what they may pull.
    response = await client.get(f"{url}/v2/_catalog", headers=basic("bob"))
    assert json.loads(await response.content()) == {"repositories": ["team-a/app"]}
    response = await client.get(f"{url}/v2/_catalog", headers=basic("alice"))
    assert json.loads(await response.content()) == {"repositories": ["private/app", "team-a/app"]}

    # A mount from a repository bob may not pull becomes a plain upload, never a 201.
    layer = json.loads(
        await (
            await client.get(f"{url}/v2/team-a/app/manifests/v1", headers=basic("bob"))
        ).content()
    )["layers"][0]["digest"]
    response = await client.post(
        f"{url}/v2/team-a/new/blobs/uploads/?mount={layer}&from=private/app", headers=basic("bob")
    )
    assert response.code == 202
    response = await client.post(
        f"{url}/v2/team-a/new/blobs/uploads/?mount={layer}&from=team-a/app", headers=basic("bob")
    )
    assert response.code == 201

    # Failed logins: rate limited per source after 5, logged with the address, no secrets.
    codes = []
    for n in range(7):  # a guesser: each attempt another password (a repeat counts once)
        response = await client.get(f"{url}/v2/", headers=basic("bob", f"guess-{n}"))
        await response.content()
        codes.append(response.code)
    # One wrong password was already counted above; max_failures is 5.
    assert codes == [401] * 4 + [429] * 3
    text = "\n".join(captured_logs)
    assert "127.0.0.1" in text
    for secret in [
        *PASSWORDS.values(),
        "guess-",
        base64.b64encode(b"bob:guess-0").decode(),
    ]:
        assert secret not in text


@pytest_twisted.ensureDeferred
async def test_client_certificates(start_registry: Starter, authority: Pki, tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    registry = await start_registry(
        {
            "http": {"clientcas": authority.ca_pem, "clientauth": "required"},
            "auth": {"client_certificate_users": "true", "policy": str(tmp_path / "policy.toml")},
        },
        authority.listen(),
    )
    with_cert = tls_client(authority, with_certificate=True)
    response = await with_cert.get(f"{registry.url}/v2/_catalog")
    assert response.code == 200
    response = await with_cert.post(f"{registry.url}/v2/private/x/blobs/uploads/")
    assert response.code == 202  # alice (the certificate's CN) is an admin
    without = tls_client(authority, with_certificate=False)
    with pytest.raises(Exception):  # noqa: B017 - the handshake fails, whatever the error type
        await without.get(f"{registry.url}/v2/")


def _token_sections(tmp_path: Path, key: Any, ca: Any) -> dict[str, dict[str, str]]:
    bundle = pki.write(tmp_path / "token-ca.pem", pki.pem_cert(ca))
    return {
        "auth.token": {
            "realm": "https://auth.example.test/token",
            "service": "test-registry",
            "issuer": "test-issuer",
            "rootcertbundle": bundle,
        }
    }


@pytest_twisted.ensureDeferred
async def test_bearer_tokens(start_registry: Starter, tmp_path: Path) -> None:
    ca_key = pki.new_key("rsa")
    ca = pki.certificate("token CA", ca_key, ca=True)
    signing_key = pki.new_key("rsa")
    signing = pki.certificate("token signer", signing_key, (ca_key, ca))
    registry = await start_registry(_token_sections(tmp_path, signing_key, ca))
    url = f"{registry.url}/v2/team/app/tags/list"

    def token(**overrides: Any) -> dict[str, str]:
        claims = pki.claims(time.time(), [pki.repo_access("team/app", "pull")])
        claims.update(overrides)
        raw = pki.sign_token(signing_key, {"x5c": pki.x5c(signing, ca)}, claims)
        return {"Authorization": f"Bearer {raw}"}

    response = await treq.get(url)
    assert response.code == 401
    challenge = header(response, "www-authenticate") or ""
    assert challenge.startswith('Bearer realm="https://auth.example.test/token"')
    assert 'service="test-registry"' in challenge
    assert 'scope="repository:team/app:pull"' in challenge

    response = await treq.get(url, headers=token())
    assert response.code == 404  # authorized; the repository just does not exist
    assert await error_codes(response) == ["NAME_UNKNOWN"]

    good = token()["Authorization"]
    head, payload, signature = good.removeprefix("Bearer ").split(".")
    tampered_payload = (
        base64.urlsafe_b64encode(
            json.dumps(
                {**json.loads(base64.urlsafe_b64decode(payload + "==")), "sub": "mallory"}
            ).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    refused = {
        "tampered": {"Authorization": f"Bearer {head}.{tampered_payload}.{signature}"},
        "expired": token(exp=int(time.time()) - 600, nbf=int(time.time()) - 900),
        "wrong audience": token(aud="another-registry"),
        "wrong issuer": token(iss="someone-else"),
    }
    for reason, headers in refused.items():
        response = await treq.get(url, headers=headers)
        assert response.code == 401, reason
        assert await error_codes(response) == ["UNAUTHORIZED"], reason

    response = await treq.post(f"{registry.url}/v2/team/app/blobs/uploads/", headers=token())
    assert response.code == 401
    assert 'error="insufficient_scope"' in (header(response, "www-authenticate") or "")
    assert 'scope="repository:team/app:pull,push"' in (header(response, "www-authenticate") or "")


@pytest_twisted.ensureDeferred
async def test_plain_listener_warning_with_auth(
    start_registry: Starter,
    htpasswd_sections: dict[str, dict[str, str]],
    captured_logs: list[str],
) -> None:
    await start_registry(htpasswd_sections, "tcp:{port}:interface=0.0.0.0")
    assert any("tcp:" in line and "warn" in line.lower() for line in captured_logs), captured_logs[
        :5
    ]
    captured_logs.clear()
    await start_registry(htpasswd_sections)  # loopback only: no warning
    assert not any("clear" in line.lower() and "tcp:" in line for line in captured_logs)


@pytest_twisted.ensureDeferred
async def test_http2_only_when_asked(
    start_registry: Starter, authority: Pki, tmp_path: Path
) -> None:
    """ALPN offers h2 only with [http] http2 = true; pushes and pulls work over both."""
    from tests.e2e.tools import run

    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(300_000))
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    curl = ["curl", "-sS", "--http2", "--cacert", authority.ca_pem, "-o", "/dev/null",
            "-w", "%{http_version} %{http_code}"]  # fmt: skip
    for enabled, version in (("false", "1.1"), ("true", "2")):
        registry = await start_registry({"http": {"http2": enabled}}, authority.listen())
        pushed = await run(*curl, "-X", "POST", "-H", "Content-Type: application/octet-stream",
                           "--data-binary", f"@{blob}",
                           f"{registry.url}/v2/h2/blobs/uploads/?digest={digest}")  # fmt: skip
        assert pushed == f"{version} 201", (enabled, pushed)
        out = tmp_path / f"pulled-{enabled}"
        pulled = await run(*curl[:-4], "-o", str(out), "-w", "%{http_version} %{http_code}",
                           f"{registry.url}/v2/h2/blobs/{digest}")  # fmt: skip
        assert pulled == f"{version} 200", (enabled, pulled)
        assert out.read_bytes() == blob.read_bytes()


class _TokenServer:
    """Signs tokens as a token server would, for a registry started with `sections`."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca_key = pki.new_key("rsa")
        self.ca = pki.certificate("token CA", self.ca_key, ca=True)
        self.key = pki.new_key("rsa")
        self.cert = pki.certificate("token signer", self.key, (self.ca_key, self.ca))
        self.sections = _token_sections(tmp_path, self.key, self.ca)

    def raw(self, access: list[dict[str, Any]], **overrides: Any) -> str:
        claims = pki.claims(time.time(), access)
        claims.update(overrides)
        return pki.sign_token(self.key, {"x5c": pki.x5c(self.cert, self.ca)}, claims)

    def bearer(self, access: list[dict[str, Any]], **overrides: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.raw(access, **overrides)}"}


async def _push_tiny_image(url: str, name: str, headers: dict[str, str]) -> None:
    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    response = await treq.post(
        f"{url}/v2/{name}/blobs/uploads/?digest={digest}", data=config, headers=headers
    )
    assert response.code == 201, await response.text()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest, "size": len(config)},
        "layers": [],
    }  # fmt: skip
    response = await treq.put(
        f"{url}/v2/{name}/manifests/v1",
        data=json.dumps(manifest).encode(),
        headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert response.code == 201, await response.text()


@pytest_twisted.ensureDeferred
async def test_ui_list_needs_the_catalog_scope_like_the_catalog(
    start_registry: Starter, tmp_path: Path
) -> None:
    """
    Under token auth the UI's repository list (and its ?q= search) answers exactly as
    `GET /v2/_catalog` does: a token without ``registry:catalog:*`` sees no names (401 with
    that scope), one with it sees what the catalog lists.
    """
    tokens = _TokenServer(tmp_path)
    registry = await start_registry(tokens.sections)
    url = registry.url
    for name in ("bob/app", "carol/secret"):
        await _push_tiny_image(url, name, tokens.bearer([pki.repo_access(name, "pull", "push")]))

    catalog_challenge = (
        'Bearer realm="https://auth.example.test/token",service="test-registry",'
        'scope="registry:catalog:*",error="insufficient_scope"'
    )
    for access in ([], [pki.repo_access("bob/app", "pull")]):
        headers = tokens.bearer(access)
        response = await treq.get(f"{url}/v2/_catalog", headers=headers)
        assert response.code == 401
        assert header(response, "www-authenticate") == catalog_challenge
        assert await error_codes(response) == ["UNAUTHORIZED"]
        # The cache and storage pages tell of the whole registry: the same rule.
        for path in ("/ui/", "/ui/?q=secret", "/ui/storage", "/ui/cache"):
            response = await treq.get(f"{url}{path}", headers=headers)
            body = (await response.content()).decode()
            assert response.code == 401, (access, path)
            assert header(response, "www-authenticate") == catalog_challenge
            assert "carol/secret" not in body and "bob/app" not in body

    catalog = tokens.bearer([{"type": "registry", "name": "catalog", "actions": ["*"]}])
    response = await treq.get(f"{url}/v2/_catalog", headers=catalog)
    assert json.loads(await response.content()) == {"repositories": ["bob/app", "carol/secret"]}
    response = await treq.get(f"{url}/ui/?q=secret", headers=catalog)
    body = (await response.content()).decode()
    assert response.code == 200
    assert "carol/secret" in body and "bob/app" not in body

    # With a policy, what the subject may pull is not what the token lists: still 401.
    (tmp_path / "policy.toml").write_text(POLICY)
    with_policy = await start_registry(
        {**tokens.sections, "auth": {"policy": str(tmp_path / "policy.toml")}}
    )
    response = await treq.get(f"{with_policy.url}/ui/", headers=tokens.bearer([], sub="alice"))
    assert response.code == 401
    assert header(response, "www-authenticate") == catalog_challenge


async def _status_becomes(
    url: str, headers: dict[str, str], wanted: int, tries: int = 100
) -> list[int]:
    """GET ``url`` until it answers ``wanted`` (the files are stat-ed at most once a second);
    the statuses seen, so a 500 on the way shows."""
    from tests.e2e.harness import sleep

    seen: list[int] = []
    for _ in range(tries):
        response = await treq.get(url, headers=headers)
        await response.content()
        seen.append(response.code)
        if response.code == wanted:
            return seen
        await sleep(0.05)
    raise AssertionError(f"never {wanted}: {seen[-5:]}")


@pytest_twisted.ensureDeferred
async def test_unreadable_auth_files_fail_closed_and_recover(
    start_registry: Starter, tmp_path: Path, captured_logs: list[str]
) -> None:
    """
    An htpasswd or policy file that becomes a directory, or whose folder becomes a file, is
    treated as deleted: nobody logs in (401) / everything is denied (403), with one log line
    naming the file and why, never a 500 or the old users and grants; readable again, it is
    used again.
    """
    folder = tmp_path / "auth"
    folder.mkdir()
    htpasswd = folder / "htpasswd"
    htpasswd.write_text(
        f"alice:{bcrypt.hashpw(PASSWORDS['alice'].encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
    )
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    registry = await start_registry(
        {
            "auth": {"policy": str(policy), "max_failures": "0"},
            "auth.htpasswd": {"path": str(htpasswd), "realm": "test-realm", "cache_seconds": "0"},
        }
    )
    ping = f"{registry.url}/v2/"
    pull = f"{registry.url}/v2/private/app/tags/list"
    assert await _status_becomes(ping, basic("alice"), 200) == [200]

    saved = htpasswd.read_bytes()
    htpasswd.unlink()
    htpasswd.mkdir()
    assert set(await _status_becomes(ping, basic("alice"), 401)) <= {200, 401}
    response = await treq.get(ping, headers=basic("alice"))
    assert response.code == 401
    assert header(response, "www-authenticate") == 'Basic realm="test-realm"'
    assert await error_codes(response) == ["UNAUTHORIZED"]
    htpasswd.rmdir()
    htpasswd.write_bytes(saved)
    assert set(await _status_becomes(ping, basic("alice"), 200)) <= {200, 401}

    folder.rename(tmp_path / "auth.moved")
    folder.write_text("not a folder")  # now .../auth/htpasswd: NotADirectoryError
    assert set(await _status_becomes(ping, basic("alice"), 401)) <= {200, 401}
    folder.unlink()
    (tmp_path / "auth.moved").rename(folder)
    assert set(await _status_becomes(ping, basic("alice"), 200)) <= {200, 401}

    # Any other OSError too (here ELOOP, which root meets as anyone does, unlike EACCES).
    htpasswd.unlink()
    htpasswd.symlink_to(htpasswd)
    assert set(await _status_becomes(ping, basic("alice"), 401)) <= {200, 401}
    htpasswd.unlink()
    htpasswd.write_bytes(saved)
    assert set(await _status_becomes(ping, basic("alice"), 200)) <= {200, 401}

    # alice is an admin; an unusable policy denies her everything, as a deleted one does.
    response = await treq.get(pull, headers=basic("alice"))
    assert response.code == 404  # allowed; the repository just does not exist
    policy.unlink()
    policy.mkdir()
    assert set(await _status_becomes(pull, basic("alice"), 403)) <= {403, 404}
    response = await treq.get(pull, headers=basic("alice"))
    assert await error_codes(response) == ["DENIED"]
    policy.rmdir()
    policy.write_text(POLICY)
    assert set(await _status_becomes(pull, basic("alice"), 404)) <= {403, 404}

    text = "\n".join(captured_logs)
    assert "Traceback" not in text and "log_failure" not in text
    for problem in (
        f"htpasswd file unusable, no user can log in: cannot read {htpasswd}: is a directory",
        f"htpasswd file unusable, no user can log in: cannot read {htpasswd}: not a directory",
        f"htpasswd file unusable, no user can log in: cannot read {htpasswd}: too many levels "
        "of symbolic links",
        f"access policy unusable, denying all: cannot read {policy}: is a directory",
    ):
        assert sum(line.startswith(problem + " ") for line in captured_logs) == 1, problem


@pytest_twisted.ensureDeferred
async def test_token_times_must_be_finite_and_sane(
    start_registry: Starter, tmp_path: Path, captured_logs: list[str]
) -> None:
    """
    A validly signed token whose exp, nbf or iat is NaN, infinite, huge or negative is an
    invalid token (401), never a 500 (int too large for a float) nor a token that never
    expires (Python's json reads NaN and Infinity).
    """
    tokens = _TokenServer(tmp_path)
    registry = await start_registry({**tokens.sections, "auth": {"max_failures": "0"}})
    url = f"{registry.url}/v2/team/app/tags/list"
    access = [pki.repo_access("team/app", "pull")]
    challenge = (
        'Bearer realm="https://auth.example.test/token",service="test-registry",'
        'scope="repository:team/app:pull",error="invalid_token"'
    )
    huge = 10**400
    bad = {
        "exp huge": {"exp": huge},
        "exp NaN": {"exp": float("nan")},
        "exp Infinity": {"exp": float("inf")},
        "exp negative": {"exp": -(10**400)},
        "nbf huge": {"nbf": huge},
        "nbf minus huge": {"nbf": -huge},
        "nbf NaN": {"nbf": float("nan")},
        "nbf -Infinity": {"nbf": float("-inf")},
        "iat huge": {"iat": huge},
        "iat NaN": {"iat": float("nan")},
        "iat a string": {"iat": "yesterday"},
    }
    for reason, claims in bad.items():
        response = await treq.get(url, headers=tokens.bearer(access, **claims))
        assert response.code == 401, reason
        assert header(response, "www-authenticate") == challenge, reason
        assert await error_codes(response) == ["UNAUTHORIZED"], reason
    response = await treq.get(url, headers=tokens.bearer(access))
    assert response.code == 404  # the same token with sane times is accepted
    text = "\n".join(captured_logs)
    assert "Traceback" not in text and "log_failure" not in text


@pytest_twisted.ensureDeferred
async def test_invalid_tokens_are_not_failed_logins(
    start_registry: Starter, tmp_path: Path, captured_logs: list[str]
) -> None:
    """
    However many expired or garbage tokens an address sends, its other token users are not
    refused with 429: only password failures count toward max_failures.
    """
    tokens = _TokenServer(tmp_path)
    registry = await start_registry({**tokens.sections, "auth": {"max_failures": "2"}})
    url = f"{registry.url}/v2/team/app/tags/list"
    access = [pki.repo_access("team/app", "pull")]
    expired = tokens.raw(access, exp=int(time.time()) - 600, nbf=int(time.time()) - 900)
    codes = []
    for raw in [expired, "garbage", "a.b.c"] * 3:
        response = await treq.get(url, headers={"Authorization": f"Bearer {raw}"})
        assert await error_codes(response) == ["UNAUTHORIZED"]
        codes.append(response.code)
        assert 'error="invalid_token"' in (header(response, "www-authenticate") or "")
    assert codes == [401] * 9
    response = await treq.get(url, headers=tokens.bearer(access))
    assert response.code == 404  # authorized; the repository just does not exist
    assert await error_codes(response) == ["NAME_UNKNOWN"]
    text = "\n".join(captured_logs)
    assert "refused a bearer token from 127.0.0.1" in text
    assert expired not in text


@pytest_twisted.ensureDeferred
async def test_mount_challenge_names_the_source_without_requiring_it(
    start_registry: Starter, tmp_path: Path
) -> None:
    """
    A cross-repository mount without credentials is challenged for the target's pull,push
    and the source's pull, as registry:2's first challenge is, so one token covers both; a
    token without the source's pull still gets a plain upload (202), never a refusal.
    """
    tokens = _TokenServer(tmp_path)
    registry = await start_registry(tokens.sections)
    url = registry.url
    await _push_tiny_image(
        url, "carol/app", tokens.bearer([pki.repo_access("carol/app", "pull", "push")])
    )
    digest = "sha256:" + hashlib.sha256(b"{}").hexdigest()  # the config blob pushed above
    mount = f"{url}/v2/bob/app/blobs/uploads/?mount={digest}&from=carol/app"

    response = await treq.post(mount)
    assert response.code == 401
    assert header(response, "www-authenticate") == (
        'Bearer realm="https://auth.example.test/token",service="test-registry",'
        'scope="repository:bob/app:pull,push repository:carol/app:pull"'
    )
    assert await error_codes(response) == ["UNAUTHORIZED"]

    target_only = tokens.bearer([pki.repo_access("bob/app", "pull", "push")])
    response = await treq.post(mount, headers=target_only)
    await response.content()
    assert response.code == 202  # not allowed to pull carol/app: a plain upload
    assert (header(response, "location") or "").startswith("/v2/bob/app/blobs/uploads/")

    both = tokens.bearer(
        [pki.repo_access("bob/app", "pull", "push"), pki.repo_access("carol/app", "pull")]
    )
    response = await treq.post(mount, headers=both)
    await response.content()
    assert response.code == 201
    assert header(response, "docker-content-digest") == digest

    # Without a mount (or mounting from itself) the challenge names the target only.
    for plain in ("", f"?mount={digest}&from=bob/app"):
        response = await treq.post(f"{url}/v2/bob/app/blobs/uploads/{plain}")
        assert response.code == 401
        assert header(response, "www-authenticate") == (
            'Bearer realm="https://auth.example.test/token",service="test-registry",'
            'scope="repository:bob/app:pull,push"'
        )
