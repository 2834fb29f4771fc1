"""Which S3 requests ``[storage] answertimeout`` applies to: those S3 answers as soon as it
has read them (the end-to-end behaviour against a hung S3 is in tests/e2e/test_s3_outage.py)."""

from __future__ import annotations

import pytest

from registry.storage.s3._client import _answers_quickly

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("method", "query", "headers", "body", "timed"),
    [
        ("GET", None, None, None, True),
        ("HEAD", None, None, None, True),
        ("DELETE", {"uploadId": "u"}, None, None, True),  # an abort
        ("PUT", None, None, b"x" * MiB, True),  # a small object
        ("POST", {"uploads": ""}, None, b"", True),  # starting a multipart upload
        ("POST", {"delete": ""}, None, b"<Delete/>", True),
        ("PUT", None, None, b"x" * (MiB + 1), False),  # sending it takes time
        ("PUT", {"partNumber": "1", "uploadId": "u"}, None, b"x" * 10, False),
        ("PUT", None, None, lambda: None, False),  # a streamed body
        ("PUT", None, {"x-amz-copy-source": "/b/k"}, None, False),  # a server-side copy
        ("POST", {"uploadId": "u"}, None, b"<CompleteMultipartUpload/>", False),
    ],
)
def test_which_requests_are_timed(
    method: str,
    query: dict[str, str] | None,
    headers: dict[str, str] | None,
    body: object,
    timed: bool,
) -> None:
    assert _answers_quickly(method, query, headers, body) is timed  # type: ignore[arg-type]
