"""
`registry.front` answers the ``/v2/`` API without Klein's routing: it must take exactly the
requests Klein would route to the API, and answer them byte for byte as Klein's route does.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from registry.api.errors import BLOB_UNKNOWN, RegistryError
from registry.app import METHODS
from registry.app_routes import KleinRoutes
from registry.front import _Route, klein_can_route, v2_rest
from registry.storage.driver import StorageError

OWN_METHODS = frozenset(method.encode() for method in METHODS)


@attrs.define
class PathOnly:
    """What `v2_rest` reads of a request, made as twisted.web's ``Request.process`` does."""

    method: bytes
    postpath: list[bytes]

    def getRequestHostname(self) -> bytes:
        return b"localhost"

    @classmethod
    def of(cls, method: bytes, path: bytes) -> PathOnly:
        return cls(method, [unquote_to_bytes(part) for part in path[1:].split(b"/")])


def klein_route(method: bytes, path: bytes) -> tuple[str, dict[str, Any]] | None:
    """The endpoint and arguments Klein's werkzeug map gives the request (None: an error)."""
    request = PathOnly.of(method, path)
    try:
        path_info = (b"/" + b"/".join(request.postpath)).decode("utf-8")
        adapter = KleinRoutes.router.url_map.bind(
            "localhost", "", path_info=path_info, default_method=method.decode(), url_scheme="http"
        )
        rule, arguments = adapter.match(return_rule=True)
    except Exception:
        return None
    return str(rule.endpoint), arguments


PIECES = st.sampled_from(
    [b"v2", b"v2", b"", b"a", b"b", b"manifests", b"blobs", b"latest", b"%2F", b"%0a", b"%0d",
     b"%00", b"%7f", b"%ff", b"%c3%a9", b"\xc3\xa9", b"%", b"%2", b"..", b".", b" ", b"%20",
     b"tags", b"list", b"_catalog", b"sha256:" + b"a" * 64, b"ui", b"health", b"metrics"]
)  # fmt: skip


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from([*OWN_METHODS, b"TRACE", b"PROPFIND", b"get"]),
    pieces=st.lists(PIECES, min_size=0, max_size=6),
    trailing=st.booleans(),
)
def test_takes_only_what_klein_routes_to_the_api(
    method: bytes, pieces: list[bytes], trailing: bool
) -> None:
    """
    Every request `v2_rest` takes is one werkzeug routes to ``base`` or ``v2``, same rest;
    but for paths that are not UTF-8, which Klein cannot route and the API answers itself
    (tests/e2e/test_front_answers.py).
    """
    path = b"/" + b"/".join(pieces) + (b"/" if trailing else b"")
    request = PathOnly.of(method, path)
    rest = v2_rest(request, OWN_METHODS)  # type: ignore[arg-type]
    if rest is not None and klein_can_route(request):  # type: ignore[arg-type]
        expected = ("base", {}) if rest == "" else ("v2", {"rest": rest})
        assert klein_route(method, path) == expected, path


@pytest.mark.parametrize(
    "path",
    [b"/v2/", b"/v2", b"/v2/a/b/manifests/latest", b"/v2/library/x/blobs/sha256:" + b"0" * 64,
     b"/v2/_catalog", b"/v2/a/tags/list", b"/v2/a/blobs/uploads/", b"/v2/%c3%a9/manifests/x"],
)  # fmt: skip
def test_takes_the_api_paths(path: bytes) -> None:
    """The API's own requests take the short way (otherwise nothing is gained)."""
    for method in OWN_METHODS:
        assert v2_rest(PathOnly.of(method, path), OWN_METHODS) is not None  # type: ignore[arg-type]


class _CarriesOn:
    """A route that carries on after its client left (it caught the cancellation), then
    answers: 404, or a storage failure."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.waiting: Deferred[None] = Deferred()
        self.release: Deferred[None] = Deferred()

    async def dispatch(self, request: object, rest: str) -> bytes:
        with contextlib.suppress(CancelledError):
            await self.waiting
        await self.release
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        RegistryError(BLOB_UNKNOWN, {"digest": "sha256:" + "0" * 64}),
        StorageError("S3 at http://127.0.0.1:9/b/ unreachable"),
    ],
    ids=["registry-error", "storage-error"],
)
def test_an_answer_after_the_client_left_is_dropped_without_a_traceback(
    error: Exception, log_watch: Any
) -> None:
    """The autouse log watch fails this test on a critical event or a failure."""
    app = _CarriesOn(error)
    request = DummyRequest([b"v2", b"a", b"blobs", b"sha256:" + b"0" * 64])
    _Route(app, request).start("a/blobs/sha256:" + "0" * 64)  # type: ignore[arg-type]
    request.processingFailed(Failure(ConnectionDone("the client left")))
    assert app.waiting.called  # cancelled
    app.release.callback(None)
    assert request.written == []
