"""
A registry that checks nothing, on loopback: it takes every upload and commits whatever body
a complete PUT brought under the digest the PUT names, whether the bytes hash to it or not.
Only a client can keep such a registry from storing a blob under the wrong digest; what it
committed is in `TrustingRegistry.commits`.

twisted.web reads a request's whole body before the resource sees it: a request cut off
before its ``Content-Length`` (or its last chunk) never reaches `_Trusting`, as it would not
be committed by any registry.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
from twisted.internet import reactor as _reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

reactor: Any = _reactor

_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>blobs/uploads|blobs|manifests)/?(?P<ref>[^/]*)$")


@attrs.frozen
class Commit:
    """A blob the registry stored: under ``claimed``, with bytes that hash to ``actual``."""

    name: str
    claimed: str
    actual: str
    size: int


class _Trusting(Resource):
    isLeaf = True

    def __init__(self, registry: TrustingRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request: Request) -> bytes:
        method = request.method.decode()
        parts = urlsplit(request.uri.decode("latin-1"))
        self.registry.requests.append((method, parts.path))
        body = request.content.read() if request.content is not None else b""
        if parts.path in ("/v2/", "/v2"):
            return b"{}"
        match = _PATH.match(parts.path)
        if match is None:
            request.setResponseCode(404)
            return b""
        name, kind, ref = match["name"], match["kind"], match["ref"]
        sessions = self.registry.sessions
        if kind == "blobs":
            stored = self.registry.blobs.get(ref)
            if stored is None:
                request.setResponseCode(404)
                return b""
            request.setHeader(b"content-length", str(len(stored)).encode())
            request.setHeader(b"docker-content-digest", ref.encode())
            return b"" if method == "HEAD" else stored
        if kind == "manifests":
            if method == "PUT":
                request.setResponseCode(201)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                request.setHeader(b"docker-content-digest", digest.encode())
            else:
                request.setResponseCode(404)
            return b""
        if method == "POST":
            self.registry.opened += 1
            ref = str(self.registry.opened)
            sessions[ref] = b""
        if ref not in sessions:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            error = {"code": "BLOB_UPLOAD_UNKNOWN", "message": "unknown upload"}
            return json.dumps({"errors": [error]}).encode()
        location = f"/v2/{name}/blobs/uploads/{ref}".encode()
        if method == "DELETE":
            del sessions[ref]
            self.registry.cancelled += 1
            request.setResponseCode(204)
            return b""
        sessions[ref] += body
        held = len(sessions[ref])
        request.setHeader(b"location", location)
        request.setHeader(b"range", f"0-{max(held - 1, 0)}".encode())
        if method != "PUT":
            request.setResponseCode(202)
            return b""
        claimed = parse_qs(parts.query).get("digest", [""])[0]
        data = sessions.pop(ref)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        self.registry.commits.append(Commit(name, claimed, actual, len(data)))
        self.registry.blobs[claimed] = data
        request.setResponseCode(201)
        request.setHeader(b"docker-content-digest", claimed.encode())
        return b""


@attrs.define
class TrustingRegistry:
    """The running fake: ``url``, what it committed, its sessions."""

    url: str = ""
    commits: list[Commit] = attrs.field(factory=list)
    blobs: dict[str, bytes] = attrs.field(factory=dict)
    sessions: dict[str, bytes] = attrs.field(factory=dict)
    requests: list[tuple[str, str]] = attrs.field(factory=list)
    opened: int = 0
    cancelled: int = 0


@asynccontextmanager
async def trusting_registry() -> AsyncIterator[TrustingRegistry]:
    """A `TrustingRegistry` listening on 127.0.0.1 (a port the OS picks) until the block ends."""
    registry = TrustingRegistry()
    port = reactor.listenTCP(0, Site(_Trusting(registry)), interface="127.0.0.1")
    registry.url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        yield registry
    finally:
        await port.stopListening()
