"""
The controllers over a real HTTP server on 127.0.0.1, exercised with treq: statuses, challenge
headers, error bodies, the failed-login limiter and bearer scopes, as a Docker client sees them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import bcrypt
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from registry.auth.controllers import HtpasswdAccessController, TokenAccessController
from registry.auth.htpasswd import Htpasswd
from registry.auth.policy import Policy
from registry.auth.ratelimit import FailureLimiter
from registry.auth.scopes import parse_challenges
from registry.auth.token import TokenVerifier
from tests.auth import pki
from tests.auth.conftest import LogCapture, reactor
from tests.auth.site import http_client, serving

POLICY = """
anonymous_pull = ["public/*"]
[groups]
devs = ["alice"]
[[rule]]
groups = ["devs"]
repositories = ["team/**"]
actions = ["pull", "push"]
"""


async def get(port: int, scope: str = "", **kwargs: Any) -> tuple[int, Any, dict[str, Any]]:
    client = http_client()
    response = await client.get(
        f"http://127.0.0.1:{port}/v2/", params={"scope": scope} if scope else None, **kwargs
    )
    body = json.loads(await response.content())
    headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, body, headers


def basic_controller(
    tmp_path: os.PathLike[str], threadpool: Any, clock: Clock, **limits: Any
) -> HtpasswdAccessController:
    path = os.path.join(tmp_path, "htpasswd")
    with open(path, "w") as f:
        f.write(f"alice:{bcrypt.hashpw(b'wonderland', bcrypt.gensalt(4)).decode()}\n")
        f.write(f"bob:{bcrypt.hashpw(b'builder', bcrypt.gensalt(4)).decode()}\n")
    htpasswd = Htpasswd(path, reactor(), threadpool, clock)
    limiter = FailureLimiter(clock, **limits)
    return HtpasswdAccessController(htpasswd, Policy.from_toml(POLICY), "test realm", limiter)


@pytest_twisted.ensureDeferred
async def test_basic_auth(tmp_path: os.PathLike[str], threadpool: Any) -> None:
    controller = basic_controller(tmp_path, threadpool, Clock())
    async with serving(controller) as port:
        # The /v2/ ping without credentials: 401 with the Basic challenge.
        code, body, headers = await get(port)
        assert code == 401
        assert headers["www-authenticate"] == 'Basic realm="test realm"'
        assert body["errors"][0]["code"] == "UNAUTHORIZED"

        code, body, _ = await get(port, auth=("alice", "wonderland"))
        assert (code, body["principal"], body["groups"]) == (200, "alice", ["devs"])

        code, body, _ = await get(
            port, "repository:team/app:pull,push", auth=("alice", "wonderland")
        )
        assert (code, body["principal"]) == (200, "alice")

        code, body, headers = await get(port, "repository:team/app:pull", auth=("alice", "nope"))
        assert code == 401 and headers["www-authenticate"] == 'Basic realm="test realm"'
        code, body, _ = await get(port, "repository:team/app:pull", auth=("mallory", "x"))
        assert code == 401

        # Known, but not granted: 403 DENIED, no challenge (logging in again will not help).
        code, body, headers = await get(port, "repository:team/app:pull", auth=("bob", "builder"))
        assert code == 403 and "www-authenticate" not in headers
        assert body["errors"][0]["code"] == "DENIED"
        assert body["errors"][0]["detail"] == {"denied": ["repository:team/app:pull"]}
        # Pushing where one may pull: only the push is named as refused.
        code, body, _ = await get(
            port, "repository:public/tools:pull,push", auth=("bob", "builder")
        )
        assert code == 403
        assert body["errors"][0]["detail"] == {"denied": ["repository:public/tools:push"]}

        # Anonymous pull where the policy allows it, and only pull.
        code, body, _ = await get(port, "repository:public/tools:pull")
        assert (code, body["principal"]) == (200, None)
        code, _, headers = await get(port, "repository:public/tools:pull,push")
        assert code == 401 and headers["www-authenticate"].startswith("Basic ")
        # Wrong credentials are not silently downgraded to anonymous.
        code, _, _ = await get(port, "repository:public/tools:pull", auth=("alice", "bad"))
        assert code == 401

        # Garbage in the Authorization header is a failed login, not a crash.
        code, _, _ = await get(
            port, "repository:team/app:pull", headers={"Authorization": "Basic !!!notbase64"}
        )
        assert code == 401


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_rate_limited_and_logged(
    tmp_path: os.PathLike[str], threadpool: Any, logs: LogCapture
) -> None:
    clock = Clock()
    controller = basic_controller(
        tmp_path, threadpool, clock, max_failures=3, window=60, cooldown=120
    )
    async with serving(controller) as port:
        scope = "repository:team/app:pull"
        # One stale password sent again and again (an engine resends its stored credentials
        # with every request, and retries) is one failure, not a lock-out of its address.
        for _ in range(10):
            code, _, _ = await get(port, scope, auth=("alice", "guess-secret-1"))
            assert code == 401
        code, body, _ = await get(port, scope, auth=("bob", "builder"))
        assert code == 403  # checked, and refused by the policy: no 429
        # A guesser's attempts all differ and all count.
        for guess in ("guess-secret-2", "guess-secret-3"):
            code, _, _ = await get(port, scope, auth=("alice", guess))
            assert code == 401
        # Now even the right password is not checked.
        code, body, headers = await get(port, scope, auth=("alice", "wonderland"))
        assert code == 429
        assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert headers["retry-after"] == "120"
        # Requests without credentials still get their answer.
        code, _, _ = await get(port, "repository:public/x:pull")
        assert code == 200
        clock.advance(121)
        code, body, _ = await get(port, scope, auth=("alice", "wonderland"))
        assert (code, body["principal"]) == (200, "alice")
    text = logs.text()
    assert "failed login for 'alice' from 127.0.0.1" in text
    assert "refusing logins for 120s" in text
    assert "guess-secret" not in text and "wonderland" not in text


@pytest_twisted.ensureDeferred
async def test_guesses_sent_all_at_once_are_not_all_checked(
    tmp_path: os.PathLike[str], threadpool: Any, logs: LogCapture
) -> None:
    """Twenty different passwords for a user whose hash takes a while (bcrypt cost 10), sent
    together: they were all checked (twenty 401s, then the cool-down), since the first
    failure was counted only once its check had ended.  Now a source may have only as many
    distinct credentials in checking as it has failures left: three checks, the rest 429."""
    clock = Clock()
    path = os.path.join(tmp_path, "htpasswd")
    with open(path, "w") as f:
        f.write(f"carol:{bcrypt.hashpw(b'right', bcrypt.gensalt(10)).decode()}\n")
    controller = HtpasswdAccessController(
        Htpasswd(path, reactor(), threadpool, clock),
        Policy.from_toml(POLICY),
        "test realm",
        FailureLimiter(clock, max_failures=3, window=60, cooldown=120),
    )
    async with serving(controller) as port:
        answers = await gatherResults(
            [Deferred.fromCoroutine(get(port, auth=("carol", f"guess-{n}"))) for n in range(20)]
        )
    codes = sorted(code for code, _, _ in answers)
    assert codes == [401] * 3 + [429] * 17, codes
    assert logs.text().count("failed login for 'carol'") == 3


@pytest.fixture
def token_setup(tmp_path: os.PathLike[str]) -> tuple[Any, TokenVerifier, Clock]:
    key = pki.new_key("ec")
    cert = pki.certificate("token signer", key, ca=True)
    bundle = pki.write(os.path.join(tmp_path, "bundle.pem"), pki.pem_cert(cert))
    clock = Clock()
    clock.advance(time.time())
    verifier = TokenVerifier.from_files("test-issuer", "test-registry", clock, bundle)
    return (key, cert), verifier, clock


def _token(signer: Any, clock: Clock, access: list[dict[str, Any]], **kw: Any) -> str:
    key, cert = signer
    return pki.sign_token(key, {"x5c": pki.x5c(cert)}, pki.claims(clock.seconds(), access, **kw))


@pytest_twisted.ensureDeferred
async def test_bearer_tokens(token_setup: Any, logs: LogCapture) -> None:
    signer, verifier, clock = token_setup
    controller = TokenAccessController(verifier, "https://auth.test/token")
    async with serving(controller) as port:
        code, body, headers = await get(port, "repository:team/app:pull,push")
        assert code == 401
        assert headers["www-authenticate"] == (
            'Bearer realm="https://auth.test/token",service="test-registry",'
            'scope="repository:team/app:pull,push"'
        )
        good = _token(signer, clock, [pki.repo_access("team/app", "pull", "push")])
        bearer = {"Authorization": f"Bearer {good}"}
        code, body, _ = await get(port, "repository:team/app:pull,push", headers=bearer)
        assert (code, body["principal"]) == (200, "alice")
        code, body, _ = await get(port, "", headers=bearer)
        assert code == 200

        # The token does not cover delete: 401 insufficient_scope naming what is needed.
        code, body, headers = await get(port, "repository:team/app:delete", headers=bearer)
        assert code == 401
        [challenge] = parse_challenges(headers["www-authenticate"])
        assert challenge.get("error") == "insufficient_scope"
        assert challenge.get("scope") == "repository:team/app:delete"

        expired = _token(signer, clock, [pki.repo_access("team/app", "pull")], lifetime=-3600)
        code, body, headers = await get(
            port, "repository:team/app:pull", headers={"Authorization": f"Bearer {expired}"}
        )
        assert code == 401 and 'error="invalid_token"' in headers["www-authenticate"]
        assert body["errors"][0]["code"] == "UNAUTHORIZED"

        # Basic credentials mean nothing to a token registry.
        code, _, headers = await get(port, "repository:team/app:pull", auth=("alice", "x"))
        assert code == 401 and headers["www-authenticate"].startswith("Bearer ")
    assert expired not in logs.text()
    assert "invalid token: token expired" in logs.text()


@pytest_twisted.ensureDeferred
async def test_bearer_tokens_intersected_with_policy(token_setup: Any) -> None:
    signer, verifier, clock = token_setup
    controller = TokenAccessController(
        verifier, "https://auth.test/token", Policy.from_toml(POLICY)
    )
    async with serving(controller) as port:
        access = [pki.repo_access("team/app", "pull"), pki.repo_access("other/app", "pull")]
        alice = {"Authorization": f"Bearer {_token(signer, clock, access)}"}
        code, body, _ = await get(port, "repository:team/app:pull", headers=alice)
        assert (code, body["groups"]) == (200, ["devs"])
        # The token grants it, the policy does not.
        code, body, _ = await get(port, "repository:other/app:pull", headers=alice)
        assert code == 403 and body["errors"][0]["code"] == "DENIED"
        # Tokenless anonymous pulls follow the policy.
        code, body, _ = await get(port, "repository:public/x:pull")
        assert (code, body["principal"]) == (200, None)
        assert controller.may_pull(controller.policy.current().principal("alice"), "team/a")  # type: ignore[union-attr]
        assert not controller.may_pull(controller.policy.current().principal("alice"), "x")  # type: ignore[union-attr]


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest_twisted.ensureDeferred
async def test_hostile_token_headers_are_refused_in_one_line(
    token_setup: Any, logs: LogCapture
) -> None:
    """A header nested deeper than JSON parsing goes, or one whose values carry line breaks:
    401 invalid_token (not a 500 with a traceback), and one log line per refusal."""
    (_, cert), verifier, _ = token_setup
    controller = TokenAccessController(verifier, "https://auth.test/token")
    deep = _b64(b'{"alg":"RS256","x":' + b"[" * 5000 + b"]" * 5000 + b"}")
    # A trusted chain, so that the algorithm is looked at (and named in the error).
    alg = "RS256\n2026-01-01T00:00:00+0000 [registry.app#info] FORGED"
    forged = _b64(json.dumps({"alg": alg, "x5c": pki.x5c(cert)}).encode())
    async with serving(controller) as port:
        for header in (deep, forged):
            token = f"{header}.{_b64(b'{}')}.AAAA"
            code, body, headers = await get(
                port, "repository:team/app:pull", headers={"Authorization": f"Bearer {token}"}
            )
            assert code == 401, body
            assert 'error="invalid_token"' in headers["www-authenticate"]
    refusals = [m for m in logs.messages() if "refused a bearer token" in m]
    assert len(refusals) == 2, refusals
    assert all("\n" not in m and "\r" not in m for m in refusals), refusals
    assert "RecursionError" in refusals[0]
    assert "FORGED" in refusals[1]
