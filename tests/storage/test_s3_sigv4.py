"""
The driver's SigV4 signer against botocore's, byte for byte, on fixed clocks.

SeaweedFS (tests/storage/test_driver_s3.py) checks that signatures are accepted; this checks
the cases it cannot tell apart: session tokens, keys needing percent-encoding, query strings,
ports, signed payload hashes, and presigned URLs.
"""

from __future__ import annotations

import datetime
import hashlib
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from registry.storage.s3._settings import quote_key
from registry.storage.s3._sigv4 import UNSIGNED_PAYLOAD, SigV4

NOW = datetime.datetime(2026, 12, 5, 3, 4, 5, tzinfo=datetime.UTC)
KEY = "a/docker/registry/v2/repositories/x y+z/_uploads/é~1/data"
URLS = [
    f"http://127.0.0.1:8333/bucket/{quote_key(KEY)}",
    f"https://bucket.s3.eu-west-1.amazonaws.com/{quote_key(KEY)}?partNumber=3&uploadId=a%2Fb%3D",
    "https://s3.amazonaws.com:443/bucket/?list-type=2&prefix=a%2Fb%20c&delimiter=%2F",
    "http://[::1]:9000/bucket/k?uploads=",
]


def botocore_headers(
    method: str, url: str, headers: dict[str, str], body: bytes | None, token: str | None
) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or b"")

    class Config:
        s3 = {"payload_signing_enabled": body is not None}

    request.context["client_config"] = Config()
    signer = S3SigV4Auth(Credentials("AKID", "se/cret", token), "s3", "eu-west-1")
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        signer.add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("token", [None, "session/token=="])
@pytest.mark.parametrize("body", [None, b"", b"<Part>1</Part>"])
def test_headers_match_botocore(url: str, token: str | None, body: bytes | None) -> None:
    extra = {
        "Content-Type": "application/xml",
        "x-amz-copy-source": "/bucket/a%20b",
        "Range": "bytes=0-9",
    }
    payload = UNSIGNED_PAYLOAD if body is None else hashlib.sha256(body).hexdigest()
    ours = SigV4("AKID", "se/cret", "eu-west-1", token).headers("PUT", url, extra, payload, NOW)
    theirs = botocore_headers("PUT", url, extra, body, token)
    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Content-SHA256"] == theirs["X-Amz-Content-SHA256"]
    assert ours.get("X-Amz-Security-Token") == theirs.get("X-Amz-Security-Token")


@pytest.mark.parametrize("url", URLS[:2])
@pytest.mark.parametrize("token", [None, "session/token=="])
def test_presigned_url_matches_botocore(url: str, token: str | None) -> None:
    ours = SigV4("AKID", "se/cret", "eu-west-1", token).presign("GET", url, 1200, NOW)
    request = AWSRequest(method="GET", url=url)
    signer = S3SigV4QueryAuth(Credentials("AKID", "se/cret", token), "s3", "eu-west-1", 1200)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        signer.add_auth(request)
    theirs = str(request.url)
    assert urlsplit(ours).path == urlsplit(theirs).path
    assert sorted(parse_qsl(urlsplit(ours).query)) == sorted(parse_qsl(urlsplit(theirs).query))
