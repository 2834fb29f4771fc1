"""
Property-based fuzzing of the running server: whatever the path, method, query, ``Range`` or
``Content-Range``, the answer is never a 5xx, errors are the OCI envelope, and nothing is
written outside the storage root.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import RegistryProcess

SEGMENTS = st.sampled_from(
    ["..", ".", "%2e%2e", "%2F", "a", "blobs", "uploads", "manifests", "tags", "list", "_catalog",
     "referrers", "sha256:" + "a" * 64, "sha256:zz", "latest", "UPPER", "-x", "a.b", "x" * 300,
     "..%2f..%2fetc", "%00", "~", "%", "\u00e9", "etc", "passwd"]
)  # fmt: skip
PATHS = st.lists(st.one_of(SEGMENTS, st.text(min_size=1, max_size=12)), min_size=0, max_size=8)
METHODS = st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"])
HEADER_VALUES = st.one_of(
    st.sampled_from(["bytes=0-1", "bytes=-5", "bytes=5-", "bytes=9-1", "0-10", "bytes 0-9/*",
                     "bytes=99999999999999999999-", "-", "", "bytes=0-0,2-3"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)  # fmt: skip
QUERIES = st.sampled_from(
    ["", "?n=2", "?n=-1", "?n=abc", "?n=99999999999999999999", "?last=zzz", "?digest=sha256:x",
     "?digest=sha256:" + "b" * 64, "?mount=sha256:" + "c" * 64 + "&from=../x", "?ns=docker.io",
     "?artifactType=%00"]
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    workdir = tmp_path_factory.mktemp("fuzz")
    process = RegistryProcess(
        workdir, {"storage": {"delete_enabled": "true", "rootdirectory": str(workdir / "data")}}
    )
    process.start()
    yield process
    process.stop()


def snapshot(folder: Path) -> set[str]:
    found = set()
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(base, name), folder))
    return found


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=METHODS, segments=PATHS, query=QUERIES, range_=HEADER_VALUES, content_range=HEADER_VALUES,
       body=st.binary(max_size=64))  # fmt: skip
def test_no_5xx_and_nothing_outside_root(
    server: RegistryProcess,
    method: str,
    segments: list[str],
    query: str,
    range_: str,
    content_range: str,
    body: bytes,
) -> None:
    outside_before = snapshot(server.workdir) - {
        p for p in snapshot(server.workdir) if p.startswith("data") or p.startswith("registry.")
    }
    path = "/v2/" + "/".join(quote(segment, safe=":%~") for segment in segments) + query
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.putheader("Range", range_.encode("latin-1", "replace"))
        connection.putheader("Content-Range", content_range.encode("latin-1", "replace"))
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status < 500, (method, path, response.status, payload[:300])
    if response.status >= 400 and method != "HEAD":
        document = json.loads(payload)
        assert set(document) == {"errors"}, payload[:300]
        assert all({"code", "message"} <= set(e) for e in document["errors"])
    outside_after = snapshot(server.workdir) - {
        p for p in snapshot(server.workdir) if p.startswith("data") or p.startswith("registry.")
    }
    assert outside_after == outside_before
    # ".trash" is the filesystem driver's own (deletes move there first; the start-up storage
    # probe deletes its object).
    for stored in snapshot(server.workdir / "data") if (server.workdir / "data").exists() else ():
        assert stored.startswith(("docker", ".trash")), stored
