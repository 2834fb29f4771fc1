"""
A Docker token service on loopback for the project's registry (``[auth.token]``) or registry:2:
it checks Basic credentials, grants every scope asked for (but under the names a user is
``refused``), signs a JWT with a test CA's key, and logs each request (its ``Authorization``
and scopes) so tests can see who got what.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.auth import pki


@attrs.define
class TokenService:
    url: str
    sections: dict[str, dict[str, str]]
    users: dict[str, str]
    log: list[tuple[str | None, list[str]]] = attrs.field(factory=list)
    # User -> repository names under which they get nothing (a token without that access).
    refused: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    # The CA bundle tokens are checked against (for registries configured by hand).
    bundle: str = ""


class _TokenResource(Resource):
    isLeaf = True

    def __init__(self, service: TokenService, key: Any, chain: list[str]) -> None:
        super().__init__()
        self._service = service
        self._key = key
        self._chain = chain

    def render_GET(self, request: Any) -> bytes:
        authorization = request.getHeader("authorization")
        scopes = [s.decode() for s in request.args.get(b"scope", [])]
        self._service.log.append((authorization, scopes))
        user = "anonymous"
        if authorization:
            raw = base64.b64decode(authorization.removeprefix("Basic ")).decode()
            name, _, password = raw.partition(":")
            if self._service.users.get(name) != password:
                request.setResponseCode(401)
                return b'{"details": "bad credentials"}'
            user = name
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name.startswith(self._service.refused.get(user, ())):
                continue
            if kind == "repository" and user != "anonymous":
                access.append(pki.repo_access(name, *actions.split(",")))
            elif kind == "repository":
                access.append(pki.repo_access(name, "pull"))
        claims = pki.claims(time.time(), access, sub=user)
        token = pki.sign_token(self._key, {"x5c": self._chain}, claims)
        request.setHeader("content-type", "application/json")
        return json.dumps({"token": token, "expires_in": 300}).encode()


@asynccontextmanager
async def token_service(folder: Path, users: dict[str, str]) -> AsyncIterator[TokenService]:
    """A token service and the registry config sections that trust it."""
    ca_key, key = pki.new_key("rsa"), pki.new_key("rsa")
    ca = pki.certificate("token CA", ca_key, ca=True)
    signer = pki.certificate("token signer", key, (ca_key, ca))
    bundle = pki.write(folder / "token-ca.pem", pki.pem_cert(ca))
    service = TokenService("", {}, users, bundle=str(bundle))
    site = Site(_TokenResource(service, key, pki.x5c(signer, ca)))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    service.url = f"http://127.0.0.1:{port.getHost().port}/token"
    service.sections = {
        "auth.token": {
            "realm": service.url,
            "service": "test-registry",
            "issuer": "test-issuer",
            "rootcertbundle": bundle,
        }
    }
    try:
        yield service
    finally:
        await port.stopListening()
