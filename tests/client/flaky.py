"""
A flaky front for a registry on loopback: a reverse proxy that answers the chosen requests
with an error status (and code) or by dropping the connection, and passes the rest through
(bodies are small in these tests: each is read whole, both ways).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

# Hop-by-hop headers, and the length, which each side sets for the body it sends.
_NOT_FORWARDED = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"}

# (method, path) -> None (pass through), an HTTP status (its error code UNAVAILABLE), a status
# and the error code to answer with, or "drop"
Rule = Callable[[str, str], "int | str | tuple[int, str] | None"]


@attrs.define
class Flaky:
    url: str
    rule: Rule
    seen: list[tuple[str, str, int | str | tuple[int, str] | None]] = attrs.field(factory=list)


class _Front(Resource):
    isLeaf = True

    def __init__(self, flaky: Flaky, host: str, port: int) -> None:
        super().__init__()
        self._flaky = flaky
        self._host, self._port = host, port
        # A connection per request, as a plain proxy: nothing left in treq's shared pool for
        # the tests that follow.
        self._pool = HTTPConnectionPool(reactor, persistent=False)

    def render(self, request: Any) -> Any:
        method, path = request.method.decode(), request.uri.decode()
        outcome = self._flaky.rule(method, path)
        self._flaky.seen.append((method, path, outcome))
        if outcome == "drop":
            request.transport.abortConnection()
            return b""
        if isinstance(outcome, int | tuple):
            status, code = outcome if isinstance(outcome, tuple) else (outcome, "UNAVAILABLE")
            request.setResponseCode(status)
            request.setHeader("content-type", "application/json")
            return b'{"errors": [{"code": "%s", "message": "flaky"}]}' % code.encode()
        forwarded = Deferred.fromCoroutine(self._forward(request))
        forwarded.addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _forward(self, request: Any) -> None:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _NOT_FORWARDED:
                headers.setRawHeaders(name, values)
        headers.setRawHeaders(b"host", [f"{self._host}:{self._port}".encode()])
        body = request.content.read()
        response = await treq.request(
            request.method.decode(),
            f"http://{self._host}:{self._port}{request.uri.decode()}",
            headers=headers,
            data=body or None,
            allow_redirects=False,
            pool=self._pool,
        )
        content = await treq.content(response)
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _NOT_FORWARDED:
                request.responseHeaders.setRawHeaders(name, values)
        if request.method != b"HEAD":  # a HEAD keeps the length the registry announced
            request.setHeader(b"content-length", str(len(content)).encode())
            request.write(content)
        request.finish()

    def _failed(self, failure: Failure, request: Any) -> None:
        self._flaky.seen.append(("error", failure.getErrorMessage(), None))
        request.transport.abortConnection()


@asynccontextmanager
async def flaky_front(target: str, rule: Rule) -> AsyncIterator[Flaky]:
    parts = urlsplit(target)
    flaky = Flaky("", rule)
    site = Site(_Front(flaky, parts.hostname or "127.0.0.1", parts.port or 80))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    flaky.url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        yield flaky
    finally:
        await port.stopListening()
