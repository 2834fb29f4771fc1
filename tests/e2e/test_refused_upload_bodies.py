"""
A monolithic push under a digest this registry does not take is refused before anything is
stored: no upload is started (on S3 one would have held a write lease, renewed for ever).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
import treq

from tests.e2e.conftest import Starter


@pytest.mark.parametrize("digest", ["md5:" + "0" * 32, "sha256:xyz", "sha512:" + "1" * 64])
@pytest_twisted.ensureDeferred
async def test_a_push_under_an_unusable_digest_starts_no_upload(
    start_registry: Starter, tmp_path: Path, digest: str
) -> None:
    root = tmp_path / "root"
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    for body in (b"", b"x", b"y" * 300_000):
        response = await treq.post(
            f"{registry.url}/v2/team/app/blobs/uploads/?digest={digest}",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        answer = json.loads(await response.content())
        assert response.code == 400, answer
        assert answer["errors"][0]["code"] == "DIGEST_INVALID", answer
    uploads = root / "docker/registry/v2/repositories/team/app/_uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
