"""
An absolute-form request target (``GET http://host:port/v2/ HTTP/1.1``, RFC 9112 section
3.2.2) is routed by its path, as registry:2 does; it used to get 404 for the whole URL.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from registry.http.request import origin_form
from tests.e2e.harness import InProcessRegistry
from tests.e2e.test_misdirected import address, exchange


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://127.0.0.1:5000/v2/", b"/v2/"),
        (b"HTTPS://registry.example/v2/x/tags/list?n=1", b"/v2/x/tags/list?n=1"),
        (b"http://127.0.0.1:5000", b"/"),
        (b"http://127.0.0.1:5000?n=1", b"/?n=1"),
        (b"/v2/", b"/v2/"),
        (b"/v2/?next=http://x/", b"/v2/?next=http://x/"),
        (b"ftp://host/v2/", b"ftp://host/v2/"),
    ],
)
def test_origin_form(target: bytes, expected: bytes) -> None:
    assert origin_form(target) == expected


@pytest_twisted.ensureDeferred
async def test_an_absolute_form_target_is_routed_by_its_path(registry: InProcessRegistry) -> None:
    where = address(registry.url)
    head = f"GET {registry.url}/v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await deferToThread(exchange, where, head.encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert answer.endswith(b"\r\n\r\n{}"), answer[-300:]


@pytest_twisted.ensureDeferred
async def test_an_absolute_form_upload_streams_to_its_upload(registry: InProcessRegistry) -> None:
    """Uploads are routed before twisted.web has the request line: that path takes it too
    (a 2 MiB body would otherwise be refused as over the 1 MiB in-memory limit)."""
    where = address(registry.url)
    data = os.urandom(2 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    head = (
        f"POST {registry.url}/v2/abs/form/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
        f"Host: x\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    answer = await deferToThread(exchange, where, head.encode() + data)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:500]
    head = f"HEAD {registry.url}/v2/abs/form/blobs/{digest} HTTP/1.1\r\nHost: x\r\n"
    answer = await deferToThread(exchange, where, (head + "Connection: close\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:500]
