"""
Retries: idempotent calls survive a flaky front (503s, dropped connections) with backoff;
non-idempotent ones are not repeated blindly; a chunked upload cut off resumes from the
offset the registry reports.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted

from registry.client import Unavailable
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.flaky import flaky_front
from tests.e2e.client import get
from tests.e2e.harness import InProcessRegistry


@pytest_twisted.ensureDeferred
async def test_idempotent_calls_are_retried(
    registry: InProcessRegistry, make_client: ClientFactory
) -> None:
    direct = make_client(registry.url)
    manifest, blobs = images.image("amd64", [b"layer bytes"])
    for dgst, data in blobs.items():
        await direct.upload_blob("f/x", data, dgst)
    await direct.put_manifest("f/x", "v1", manifest)
    failures = {"GET": 2, "HEAD": 1}

    def rule(method: str, path: str) -> int | str | None:
        if "/manifests/" in path and failures.get(method, 0) > 0:
            failures[method] -= 1
            return 503 if method == "HEAD" or failures[method] == 1 else "drop"
        return None

    async with flaky_front(registry.url, rule) as front:
        client = make_client(front.url, retries=3)
        got = await client.get_manifest("f/x", "v1")
        assert got.body == manifest
        head = await client.head_manifest("f/x", "v1")
        assert head is not None and str(head.digest) == images.digest(manifest)
        outcomes = [o for m, p, o in front.seen if "/manifests/" in p]
        assert outcomes == [503, "drop", None, 503, None]
        # Without retries the first failure is the answer.
        failures["HEAD"] = 1
        once = make_client(front.url, retries=0)
        with pytest.raises(Unavailable) as info:
            await once.head_manifest("f/x", "v1")
        assert info.value.status == 503


@pytest_twisted.ensureDeferred
async def test_post_is_not_retried(registry: InProcessRegistry, make_client: ClientFactory) -> None:
    def rule(method: str, path: str) -> int | str | None:
        return 503 if method == "POST" else None

    async with flaky_front(registry.url, rule) as front:
        client = make_client(front.url, retries=3)
        with pytest.raises(Unavailable) as info:
            await client.upload_blob("f/y", b"data")
        assert info.value.status == 503 and info.value.code == "UNAVAILABLE"
        assert [m for m, _, _ in front.seen if m == "POST"] == ["POST"]


@pytest_twisted.ensureDeferred
async def test_chunked_upload_resumes_after_a_lost_chunk(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The second PATCH is dropped: the client asks the session's offset and carries on;
    the committed blob has the right bytes and digest."""
    data = os.urandom(100_000)
    source = tmp_path / "src"
    source.write_bytes(data)
    patches = 0

    def rule(method: str, path: str) -> int | str | None:
        nonlocal patches
        if method == "PATCH":
            patches += 1
            if patches == 2:
                return "drop"
        return None

    async with flaky_front(registry.url, rule) as front:
        client = make_client(front.url, retries=2)
        dgst = await client.upload_blob("f/z", source, chunk_size=30_000)
        assert str(dgst) == images.digest(data)
        kinds = [m for m, p, _ in front.seen if "/uploads/" in p]
        assert kinds == ["POST", "PATCH", "PATCH", "GET", "PATCH", "PATCH", "PATCH", "PUT"]
    _, body = await get(f"{registry.url}/v2/f/z/blobs/{dgst}")
    assert body == data


@pytest_twisted.ensureDeferred
async def test_upload_shapes_on_the_wire(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Monolithic is POST + one PUT carrying the bytes (bytes, or a file with a known
    digest); a file without a digest is streamed in one PATCH and committed by digest;
    chunked is one PATCH per chunk."""
    data = os.urandom(50_000)
    source = tmp_path / "src"
    source.write_bytes(data)
    async with flaky_front(registry.url, lambda method, path: None) as front:
        client = make_client(front.url)
        shapes = []
        for kwargs in ({"digest": images.digest(data)}, {}, {"chunk_size": 20_000}):
            front.seen.clear()
            assert str(await client.upload_blob("s/h", source, **kwargs)) == images.digest(data)
            shapes.append([m for m, p, _ in front.seen if "/uploads/" in p])
        front.seen.clear()
        await client.upload_blob("s/h", b"bytes")
        shapes.append([m for m, p, _ in front.seen if "/uploads/" in p])
    assert shapes == [
        ["POST", "PUT"],
        ["POST", "PATCH", "PUT"],
        ["POST", "PATCH", "PATCH", "PATCH", "PUT"],
        ["POST", "PUT"],
    ]
    _, body = await get(f"{registry.url}/v2/s/h/blobs/{images.digest(data)}")
    assert body == data
