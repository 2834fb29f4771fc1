"""
``[storage] redirect = true`` on S3 (a real SeaweedFS): a blob GET answers 307 to a presigned
URL that serves the bytes, without the blob's year-long ``Cache-Control`` (the URL expires);
a HEAD is answered by the registry itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq

from tests.e2e.client import push_blob, raw_headers
from tests.e2e.harness import RegistryProcess
from tests.storage.s3server import S3Server


@pytest.fixture
def redirecting(s3_server: S3Server, tmp_path: Path) -> Iterator[RegistryProcess]:
    section = s3_server.storage_section(f"/redirect/{uuid.uuid4().hex}", redirect="true")
    process = RegistryProcess(tmp_path, {"storage": section, "http": {"workers": "1"}})
    process.start()
    yield process
    process.stop()


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_not_cached_past_its_url(redirecting: RegistryProcess) -> None:
    data = os.urandom(50_000)
    digest = await push_blob(redirecting.url, "team/app", data)
    url = f"{redirecting.url}/v2/team/app/blobs/{digest}"
    status, headers = await raw_headers("GET", url)
    assert status == 307, headers
    assert "cache-control" not in headers, headers
    assert headers["docker-content-digest"] == digest
    assert "X-Amz-Signature=" in headers["location"]
    response = await treq.get(headers["location"])
    assert (response.code, await response.content()) == (200, data)

    status, headers = await raw_headers("HEAD", url)
    assert status == 200, headers
    assert (headers["content-length"], headers["cache-control"]) == (
        str(len(data)),
        "max-age=31536000",
    )
