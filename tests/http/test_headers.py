"""registry.http.headers: header values as text whatever their bytes (the wire side is
tests/e2e/test_header_bytes.py)."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from registry.client._session import header
from registry.http.headers import header_values


def test_values_beyond_utf8_are_read_byte_for_byte() -> None:
    headers = Headers({b"WWW-Authenticate": [b'Bearer realm="\xff"', b"Basic"]})
    assert header_values(headers, "www-authenticate") == ['Bearer realm="\xff"', "Basic"]
    # The client library's reading of an upstream's answer (the proxy's too).
    assert header(headers, "WWW-Authenticate") == "Basic"
    assert header_values(headers, "absent") == []
    assert header(headers, "absent") is None
