"""
Edges of authentication, over real sockets: the empty Basic credentials skopeo and podman
send, the catalog with bearer tokens and no policy, and the 429 status line of the login
limiter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest_twisted
import treq

from tests.auth import pki
from tests.e2e.client import raw_request, sha256, split_response
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry
from tests.e2e.ocilayout import Layout
from tests.e2e.tools import skopeo

PASSWORD = "alice-secret-pw"
EMPTY_BASIC = "Basic Og=="  # base64(":")


async def htpasswd_registry(
    start_registry: Starter, tmp_path: Path, max_failures: int
) -> InProcessRegistry:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"alice:{hashed}\n")
    return await start_registry(
        {
            "auth": {"anonymous_pull": "public/**", "max_failures": str(max_failures)},
            "auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "edges"},
        }
    )


async def raw_get(
    url: str, path: str, authorization: str | None
) -> tuple[bytes, dict[str, str], bytes]:
    extra = f"Authorization: {authorization}\r\n" if authorization else ""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
    return split_response(await raw_request(url, request.encode()))


@pytest_twisted.ensureDeferred
async def test_empty_basic_credentials_are_anonymous(
    start_registry: Starter, tmp_path: Path
) -> None:
    """
    ``Basic Og==`` pulls what anonymous callers may pull, gets the challenge elsewhere, and is
    never counted as a failed login: many of them do not lock the address out.
    """
    registry = await htpasswd_registry(start_registry, tmp_path, max_failures=2)
    for _ in range(4):
        status, _, body = await raw_get(registry.url, "/v2/public/app/tags/list", EMPTY_BASIC)
        assert status == b"HTTP/1.1 404 Not Found"  # allowed; the repository is just empty
        assert json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
        status, headers, body = await raw_get(
            registry.url, "/v2/private/app/tags/list", EMPTY_BASIC
        )
        assert status == b"HTTP/1.1 401 Unauthorized"
        assert headers["www-authenticate"] == 'Basic realm="edges"'
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    # The catalog is open to anonymous callers when anonymous_pull is set (docs/auth.md).
    status, _, body = await raw_get(registry.url, "/v2/_catalog", EMPTY_BASIC)
    assert (status, json.loads(body)) == (b"HTTP/1.1 200 OK", {"repositories": []})
    # Not locked out: a real login still goes through.
    status, _, _ = await raw_get(registry.url, "/v2/", "Basic YWxpY2U6YWxpY2Utc2VjcmV0LXB3")
    assert status == b"HTTP/1.1 200 OK"


@pytest_twisted.ensureDeferred
async def test_skopeo_pulls_anonymously_after_a_basic_challenge(
    start_registry: Starter, tmp_path: Path
) -> None:
    """skopeo answers the Basic challenge of ``GET /v2/`` with ``Basic Og==``."""
    registry = await htpasswd_registry(start_registry, tmp_path, max_failures=2)
    host = registry.url.removeprefix("http://")
    layout = Layout(tmp_path / "image")
    _, descriptor = layout.image("amd64", [{"f": b"public content"}])
    layout.tag(descriptor, "v1")
    await skopeo(
        "copy", "--dest-tls-verify=false", "--preserve-digests", f"--dest-creds=alice:{PASSWORD}",
        f"oci:{layout.root}:v1", f"docker://{host}/public/app:v1",
    )  # fmt: skip
    for _ in range(3):  # more than max_failures: nothing is counted
        inspected = await skopeo("inspect", "--tls-verify=false", f"docker://{host}/public/app:v1")
        assert json.loads(inspected)["Digest"] == descriptor["digest"]


@pytest_twisted.ensureDeferred
async def test_failed_logins_get_429_too_many_requests(
    start_registry: Starter, tmp_path: Path
) -> None:
    registry = await htpasswd_registry(start_registry, tmp_path, max_failures=2)
    # Two different wrong passwords (the same one again would count once).
    for wrong in ("Basic YWxpY2U6d3Jvbmc=", "Basic YWxpY2U6d3Jvbmcy"):  # alice:wrong, :wrong2
        status, _, _ = await raw_get(registry.url, "/v2/", wrong)
        assert status == b"HTTP/1.1 401 Unauthorized"
    status, headers, body = await raw_get(registry.url, "/v2/", wrong)
    assert status == b"HTTP/1.1 429 Too Many Requests"
    assert int(headers["retry-after"]) > 0
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"


@pytest_twisted.ensureDeferred
async def test_token_catalog_needs_the_catalog_scope(
    start_registry: Starter, tmp_path: Path
) -> None:
    """Without a policy, a token lists the catalog only with ``registry:catalog:*``."""
    ca_key, signing_key = pki.new_key("ec"), pki.new_key("ec")
    ca = pki.certificate("token CA", ca_key, ca=True)
    signing = pki.certificate("token signer", signing_key, (ca_key, ca))
    registry = await start_registry(
        {
            "auth.token": {
                "realm": "https://auth.example.test/token",
                "service": "test-registry",
                "issuer": "test-issuer",
                "rootcertbundle": pki.write(tmp_path / "token-ca.pem", pki.pem_cert(ca)),
            }
        }
    )

    def bearer(*access: dict[str, Any]) -> str:
        claims = pki.claims(time.time(), list(access))
        return "Bearer " + pki.sign_token(signing_key, {"x5c": pki.x5c(signing, ca)}, claims)

    pusher = bearer(
        pki.repo_access("team/app", "pull", "push"), pki.repo_access("other/app", "pull", "push")
    )
    for name in ("team/app", "other/app"):
        digest = sha256(name.encode())
        response = await treq.post(
            f"{registry.url}/v2/{name}/blobs/uploads/?digest={digest}",
            data=name.encode(),
            headers={"Authorization": pusher},
        )
        assert response.code == 201, await response.text()

    # A token for one repository does not list the catalog.
    status, headers, body = await raw_get(
        registry.url, "/v2/_catalog", bearer(pki.repo_access("team/app", "pull"))
    )
    assert status == b"HTTP/1.1 401 Unauthorized"
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert 'scope="registry:catalog:*"' in headers["www-authenticate"]
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    # Nor does no token: the challenge names the scope to ask for.
    status, headers, _ = await raw_get(registry.url, "/v2/_catalog", None)
    assert status == b"HTTP/1.1 401 Unauthorized"
    assert 'scope="registry:catalog:*"' in headers["www-authenticate"]
    # With the catalog scope: every repository.
    catalog = bearer({"type": "registry", "name": "catalog", "actions": ["*"]})
    status, _, body = await raw_get(registry.url, "/v2/_catalog", catalog)
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body) == {"repositories": ["other/app", "team/app"]}


@pytest_twisted.ensureDeferred
async def test_of_several_authorization_headers_the_first_counts(
    start_registry: Starter, tmp_path: Path
) -> None:
    """Two Authorization headers: the first says who is asking, as for registry:2 and for
    nginx's ``$http_authorization`` (what a reverse proxy in front logs or filters on).  The
    last one counted here, so the registry and the proxy disagreed on who was calling."""
    import base64

    registry = await htpasswd_registry(start_registry, tmp_path, max_failures=100)
    good = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    bad = "Basic " + base64.b64encode(b"nobody:secret").decode()

    async def status(first: str, second: str) -> bytes:
        request = (
            f"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {first}\r\n"
            f"Authorization: {second}\r\nConnection: close\r\n\r\n"
        )
        answer: bytes = split_response(await raw_request(registry.url, request.encode()))[0]
        return answer

    assert await status(bad, good) == b"HTTP/1.1 401 Unauthorized"
    assert await status(good, bad) == b"HTTP/1.1 200 OK"
