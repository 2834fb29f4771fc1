"""
A flaky front for a registry on loopback: a reverse proxy that answers the chosen requests
with an error status or by dropping the connection, and passes the rest through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site

# (method, path) -> None (pass through), an HTTP status, or "drop"
Rule = Callable[[str, str], "int | str | None"]


@attrs.define
class Flaky:
    url: str
    rule: Rule
    seen: list[tuple[str, str, int | str | None]] = attrs.field(factory=list)


class _Front(Resource):
    isLeaf = True

    def __init__(self, flaky: Flaky, host: str, port: int) -> None:
        super().__init__()
        self._flaky = flaky
        self._host, self._port = host, port

    def render(self, request: Any) -> Any:
        method, path = request.method.decode(), request.uri.decode()
        outcome = self._flaky.rule(method, path)
        self._flaky.seen.append((method, path, outcome))
        if outcome == "drop":
            request.transport.abortConnection()
            return b""
        if isinstance(outcome, int):
            request.setResponseCode(outcome)
            request.setHeader("content-type", "application/json")
            return b'{"errors": [{"code": "UNAVAILABLE", "message": "flaky"}]}'
        proxy = ReverseProxyResource(self._host, self._port, request.path)
        return proxy.render(request)


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
