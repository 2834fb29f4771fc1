"""
An HTTP/1.1 request without ``Host`` is 400 (RFC 9112 section 3.2; registry:2 answers the
same), whatever its method, and its body reaches no upload; HTTP/1.0 may leave it out.
"""

from __future__ import annotations

import pytest_twisted
import treq

from tests.e2e.client import header, raw_request, split_response, start_upload
from tests.e2e.harness import InProcessRegistry

TEXT = b"missing required Host header\n"


@pytest_twisted.ensureDeferred
async def test_an_http11_request_without_host_is_400_and_its_body_goes_nowhere(
    registry: InProcessRegistry,
) -> None:
    location = await start_upload(registry.url, "nohost/app")
    path = location.removeprefix(registry.url)
    for request in (
        b"GET /v2/ HTTP/1.1\r\n\r\n",
        b"HEAD /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"PATCH " + path.encode() + b" HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    ):
        status, headers, body = split_response(await raw_request(registry.url, request))
        assert status == b"HTTP/1.1 400 Bad Request", request
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["connection"] == "close"
        assert headers["content-length"] == str(len(TEXT))
        assert body == (b"" if request.startswith(b"HEAD") else TEXT)
    response = await treq.get(location)
    assert (response.code, header(response, "range")) == (204, "0-0")  # nothing written
    # HTTP/1.0 needs no Host.
    status, _, body = split_response(await raw_request(registry.url, b"GET /v2/ HTTP/1.0\r\n\r\n"))
    assert (status, body) == (b"HTTP/1.0 200 OK", b"{}")
