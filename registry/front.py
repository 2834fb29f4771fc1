"""
The ``/v2/`` API answered without Klein's routing on every request.

Klein routes each request through werkzeug: it binds a map adapter (the Host header decoded,
the port from a ``getsockname`` call), walks the rules' state machine over the path, adapts the
request to ``IKleinRequest`` and wraps the route in two Deferreds.  For a manifest GET or a blob
HEAD that is about a sixth of the request's CPU, and every registry request goes to the same two
routes (`KleinRoutes.base` and `KleinRoutes.v2`, `registry.app_routes`) anyway.
`FrontResource` recognises those requests with a few string checks and calls
`RegistryApp.dispatch` itself; everything else (the UI, health, metrics, and any path werkzeug
would treat differently) goes to Klein as before.  Klein's resource is built, and Klein and
werkzeug imported, at the first request that goes there: a worker serving only the API does
without them.

What Klein does around a route is kept: the route's Deferred is cancelled when the client goes
away, a failure after that is only logged, and a failure before it is answered by
`RegistryApp.answer_failure`, the same function Klein's error handler calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from registry.api.errors import NAME_INVALID, RegistryError
from registry.http import responses
from registry.storage.driver import StorageError

if TYPE_CHECKING:
    from registry.app import RegistryApp

log = Logger()

# Characters werkzeug's ``path`` converter does not match (``.`` stops at a newline); any
# control character is left to Klein, so that only ordinary paths take the short way.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def v2_rest(request: IRequest, methods: frozenset[bytes]) -> str | None:
    """
    The ``rest`` Klein would route ``request`` to `KleinRoutes.v2` with ("" for
    `KleinRoutes.base`), or None when the request is not certainly one of those two routes.

    ``methods`` are the routes' methods (werkzeug answers others with 405).  The path is what
    Klein matches: the segments twisted.web has already percent-decoded
    (``request.postpath`` at the root), decoded as UTF-8.
    """
    if request.method not in methods:
        return None
    segments = request.postpath
    if not segments or segments[0] != b"v2":
        return None
    if len(segments) == 1 or (len(segments) == 2 and not segments[1]):
        return ""  # "/v2" and "/v2/"
    raw = b"/".join(segments[1:])
    # The path converter's value starts with no "/" ("/v2//x", "/v2/%2Fx" go elsewhere).
    if raw.startswith(b"/") or _CONTROL.search(raw):
        return None
    # Bytes that are not UTF-8 become U+FFFD, which no name, tag or digest admits: the API
    # answers with its own error (NAME_INVALID, DIGEST_INVALID, ...) instead of Klein's 400
    # and the traceback Klein logs with it.
    return raw.decode("utf-8", "replace")


def klein_can_route(request: IRequest) -> bool:
    """Whether the decoded path and the host name are UTF-8, as Klein needs to route them."""
    try:
        for segment in request.postpath:
            segment.decode("utf-8")
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@implementer(IResource)
class FrontResource:
    """
    The site's root: ``/v2/`` requests to `RegistryApp.dispatch`, the rest to the resource
    ``klein`` builds (called once, at the first such request).
    """

    isLeaf = True

    def __init__(
        self, app: RegistryApp, klein: Callable[[], IResource], methods: Iterable[str]
    ) -> None:
        self._app = app
        self._make_klein: Callable[[], IResource] | None = klein
        self._klein: IResource | None = None
        self._methods = frozenset(method.encode("ascii") for method in methods)

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self  # a leaf: twisted.web does not ask

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("FrontResource has no children")

    def render(self, request: IRequest) -> Any:
        rest = v2_rest(request, self._methods)
        if rest is None:
            if not klein_can_route(request):
                # Klein would answer the same but log a traceback for the client's bytes.
                if request.path.startswith(b"/v2/"):  # an API client reads the OCI envelope
                    reason = "the URL is not UTF-8"
                    invalid = RegistryError(NAME_INVALID, {"reason": reason}, reason)
                    return responses.error(request, invalid)
                request.setResponseCode(400)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"" if request.method == b"HEAD" else b"Non-UTF-8 encoding in URL or Host."
            return self._routed().render(request)
        _Route(self._app, request).start(rest)
        return NOT_DONE_YET

    def _routed(self) -> IResource:
        if self._klein is None:
            assert self._make_klein is not None
            self._klein, self._make_klein = self._make_klein(), None
        return self._klein


class _Route:
    """One ``/v2/`` request in flight: the route's Deferred, its answer, its failure."""

    def __init__(self, app: RegistryApp, request: IRequest) -> None:
        self._app = app
        # twisted.web's Request: ``notifyFinish`` is not part of IRequest.
        self._request: Any = request
        self._finished = False
        self._running: Deferred[Any] | None = None

    def start(self, rest: str) -> None:
        # Before the route runs, as Klein does: a route that finishes the request itself, or a
        # client gone meanwhile, is noticed.
        self._request.notifyFinish().addCallbacks(self._done, self._gone)
        d = Deferred.fromCoroutine(self._app.dispatch(self._request, rest))
        self._running = d
        d.addErrback(self._failed)
        d.addCallback(self._write)
        d.addErrback(lambda failure: log.failure("Unhandled error writing response", failure))

    def _done(self, _: object) -> None:
        self._finished = True

    def _gone(self, _: Failure) -> None:
        self._finished = True
        if self._running is not None:
            self._running.cancel()

    def _failed(self, failure: Failure) -> bytes | None:
        if self._finished:  # nobody to answer
            if failure.check(CancelledError, RegistryError):
                return None  # an answer (404, say) the route reached after its client left
            if failure.check(StorageError):
                log.warn(
                    "storage failure after the client left ({method} {uri}): {reason}",
                    method=self._request.method.decode("latin-1"),
                    uri=self._request.uri.decode("latin-1")[:300],
                    reason=str(failure.value),
                )
                return None
            log.failure("Unhandled Error Processing Request.", failure)
            return None
        return self._app.answer_failure(self._request, failure)

    def _write(self, body: bytes | None) -> None:
        if body:
            self._request.write(body)
        if not self._finished:
            self._request.finish()
