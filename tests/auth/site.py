"""
A tiny twisted.web site that does what the registry's handlers do with a controller: ask for
the access named by ``?scope=`` (space-separated, empty for the ``/v2/`` ping) and render a
RegistryError as OCI error JSON with its headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from registry.api.errors import RegistryError
from registry.auth.interfaces import IAccessController
from registry.auth.scopes import parse_scopes


class AuthorizeResource(Resource):
    isLeaf = True

    def __init__(self, controller: IAccessController) -> None:
        super().__init__()
        self.controller = controller

    def render_GET(self, request: Any) -> Any:
        scope = request.args.get(b"scope", [b""])[0].decode()
        Deferred.fromCoroutine(self._handle(request, parse_scopes(scope)))
        return NOT_DONE_YET

    async def _handle(self, request: Any, wanted: Any) -> None:
        try:
            principal = await self.controller.authorize(request, wanted)
        except RegistryError as e:
            request.setResponseCode(e.status)
            for name, value in e.headers.items():
                request.setHeader(name, value)
            body: Any = e.to_json()
        else:
            body = {"principal": principal.name, "groups": list(principal.groups)}
        request.setHeader("content-type", "application/json")
        request.write(json.dumps(body).encode())
        request.finish()


@asynccontextmanager
async def serving(
    controller: IAccessController, endpoint: IStreamServerEndpoint | None = None
) -> AsyncIterator[int]:
    """Listen (on 127.0.0.1, an ephemeral port) for the duration; yields the port number."""
    from twisted.internet import reactor

    site = Site(AuthorizeResource(controller))
    endpoint = endpoint or TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(site)
    try:
        yield port.getHost().port
    finally:
        await port.stopListening()


def http_client(context_factory: Any = None) -> Any:
    """A treq client without persistent connections, so nothing outlives a test."""
    import treq
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    kwargs = {"contextFactory": context_factory} if context_factory is not None else {}
    return treq.client.HTTPClient(Agent(reactor, pool=pool, **kwargs))
