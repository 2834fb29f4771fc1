"""
`registry.front` on the wire: a registry answering through it and one answering through Klein
alone, on one storage folder, give the same bytes for every request.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

import registry.app
from tests.e2e.conftest import Starter

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def exchange(url: str, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One request on its own connection; the raw answer without its ``Date`` line."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", f"{host}:{port}")
        for name, value in headers.items():
            connection.putheader(name, value)
        if body or method in ("PUT", "POST", "PATCH"):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        lines = [f"{response.status} {response.reason}"]
        lines += sorted(f"{k}: {v}" for k, v in response.getheaders() if k.lower() != "date")
        return "\n".join(lines).encode() + b"\n\n" + response.read()
    finally:
        connection.close()


def push_image(url: str, tag: str = "v1", note: str = "") -> tuple[str, str]:
    """A config blob and an image manifest tagged ``tag`` in ``same/repo``; ``note`` (an
    annotation) makes a different manifest.  Returns their digests (manifest, config)."""
    config = b'{"architecture":"amd64","os":"linux"}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    answer = exchange(url, "POST", f"/v2/same/repo/blobs/uploads/?digest={config_digest}", {},
                       config)  # fmt: skip
    assert answer.startswith(b"201 "), answer
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": [],
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest, "size": len(config)},
         **({"annotations": {"note": note}} if note else {})}
    ).encode()  # fmt: skip
    answer = exchange(url, "PUT", f"/v2/same/repo/manifests/{tag}",
                       {"Content-Type": MANIFEST_TYPE}, manifest)  # fmt: skip
    assert answer.startswith(b"201 "), answer
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), config_digest


def _requests(manifest: str, config: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Requests that change nothing stored, over every kind of route and error."""
    oci = {"Accept": MANIFEST_TYPE}
    out: list[tuple[str, str, dict[str, str], bytes]] = []
    for method in ("GET", "HEAD"):
        out += [
            (method, path, headers, b"")
            for path, headers in [
                ("/v2/", {}), ("/v2", {}), ("/v2/same/repo/manifests/v1", oci),
                (f"/v2/same/repo/manifests/{manifest}", oci), ("/v2/same/repo/manifests/v1", {}),
                ("/v2/same/repo/manifests/v1", {"Accept": "application/vnd.docker.distribution.manifest.v1+json"}),
                ("/v2/same/repo/manifests/nope", oci), ("/v2/other/manifests/v1", oci),
                (f"/v2/same/repo/blobs/{config}", {}), (f"/v2/same/repo/blobs/{config}", {"Range": "bytes=2-5"}),
                ("/v2/same/repo/blobs/sha256:" + "0" * 64, {}), ("/v2/same/repo/blobs/sha256:zz", {}),
                ("/v2/same/repo/tags/list", {}), ("/v2/same/repo/tags/list?n=abc", {}),
                ("/v2/_catalog", {}), ("/v2/_catalog?n=1", {}), ("/v2/UPPER/manifests/v1", {}),
                ("/v2/a%0ab/manifests/v1", {}), ("/v2/a%00b/tags/list", {}), ("/v2/a%7fb/tags/list", {}),
                ("/v2//same/repo/tags/list", {}), ("/v2/same//repo/tags/list", {}),
                ("/v2/same/repo/tags/list/", {}), ("/v2/same%2Frepo/tags/list", {}), ("/v2/..", {}),
                ("/health/live", {}), ("/nothing", {}), ("/v2x", {}),
            ]
        ]  # fmt: skip
    out += [
        ("OPTIONS", "/v2/", {}, b""), ("TRACE", "/v2/", {}, b""), ("PROPFIND", "/v2/a/tags/list", {}, b""),
        ("DELETE", f"/v2/same/repo/manifests/{manifest}", {}, b""),
        ("PUT", "/v2/BAD/manifests/v1", {"Content-Type": MANIFEST_TYPE}, b"{}"),
        ("PUT", "/v2/same/repo/manifests/v2", {"Content-Type": MANIFEST_TYPE}, b"not json"),
        ("PATCH", "/v2/same/repo/blobs/uploads/nope", {}, b"x"), ("POST", "/v2/same/repo/tags/list", {}, b""),
    ]  # fmt: skip
    return out


@pytest_twisted.ensureDeferred
async def test_answers_as_klein_does(
    start_registry: Starter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Two registries on one storage folder, one answering through `registry.front` and one
    through Klein alone: every answer (status, headers but ``Date``, body) is the same.
    """
    storage = {"storage": {"rootdirectory": str(tmp_path / "shared")}}
    front = await start_registry(storage)
    monkeypatch.setattr(registry.app, "FrontResource", lambda app, klein, methods: klein())
    klein = await start_registry(storage)
    manifest, config = await deferToThread(push_image, front.url)
    for method, path, headers, body in _requests(manifest, config):
        ours = await deferToThread(exchange, front.url, method, path, headers, body)
        theirs = await deferToThread(exchange, klein.url, method, path, headers, body)
        assert ours == theirs, (method, path)


@pytest_twisted.ensureDeferred
async def test_paths_that_are_not_utf8(start_registry: Starter) -> None:
    """
    Percent-escapes that do not decode as UTF-8: an API path gets the API's own error for the
    part that cannot be a name or a digest, any other path a plain 400, and nothing is logged
    as a traceback (the log watch fails the test if Klein's decoding error reaches the log).
    """
    running = await start_registry({"storage": {"driver": "inmemory"}})
    codes = {
        "/v2/%ff/manifests/x": (400, "NAME_INVALID"),
        "/v2/a/%fe%ff/tags/list": (400, "NAME_INVALID"),
        "/v2/a/blobs/%ff%fe": (400, "DIGEST_INVALID"),
        # Not routed to the API (an empty first component): the envelope all the same.
        "/v2//%ff": (400, "NAME_INVALID"),
    }
    for path, (status, code) in codes.items():
        answer = await deferToThread(exchange, running.url, "GET", path, {}, b"")
        head, _, body = answer.partition(b"\n\n")
        assert head.startswith(f"{status} ".encode()), (path, answer)
        assert [e["code"] for e in json.loads(body)["errors"]] == [code], (path, body)
    for path in ("/%ff", "/ui/%ff", "/health/%c3"):
        answer = await deferToThread(exchange, running.url, "GET", path, {}, b"")
        assert answer.startswith(b"400 "), (path, answer)
        assert answer.endswith(b"\n\nNon-UTF-8 encoding in URL or Host."), (path, answer)
