"""The cache's storage failing in the middle of a fill: the client still gets the whole,
verified blob from the upstream ("served without keeping it"), one log line says so, nothing
is left at the blob's address or in the fills folder, and the next pull fills again.

The failures are real: a filesystem storage on a small tmpfs (mounting it needs root) with
room for the first 64 MiB reservation window of the layer but not for the whole layer, so a
write fails with ENOSPC mid-body; and SeaweedFS behind a front that answers 500 to the fill's
parts mid-body."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from registry.storage.s3 import _client as s3_client
from tests.e2e.client import get, sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import blob_data_path, fill_files, wait_for
from tests.storage.s3front import RecordingFront, Seen, s3_front  # noqa: F401 - the fixture
from tests.storage.s3server import S3Server, signed_request

MiB = 1024 * 1024
# Past the filesystem writer's first reservation window (64 MiB), which is made at the
# fill's start and so never fails mid-body.
LAYER = 70 * MiB
DISK = 80 * MiB
FREE = 67 * MiB  # room for the first window and a little: the write at about 67 MiB fails


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the storage failure test needs root under CI=true (to mount a tmpfs)")
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def leave_free(disk: Path, free: int) -> Path:
    """Write a filler file so that about ``free`` bytes are left; returns it."""
    stat = os.statvfs(disk)
    take = stat.f_bavail * stat.f_frsize - free
    assert take > 0
    filler = disk / "filler"
    block = b"\0" * MiB
    with open(filler, "wb") as file:
        for _ in range(take // MiB):
            file.write(block)
        file.write(b"\0" * (take % MiB))
    return filler


@pytest_twisted.ensureDeferred
async def test_a_fill_whose_storage_fails_mid_body_serves_the_whole_blob_and_keeps_nothing(
    tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    image = fake.content.add_image("library/big", "latest", [LAYER])
    digest = image.layers[0].digest
    registry = await proxied({"storage": {"rootdirectory": str(tmpfs)}})
    url = f"{registry.url}/v2/library/big/blobs/{digest}"
    filler = leave_free(tmpfs, FREE)

    logs: list[tuple[str, str, dict[str, Any]]] = []

    def observer(event: dict[str, Any]) -> None:
        logs.append((event["log_level"].name, formatEvent(event), event))

    globalLogPublisher.addObserver(observer)
    try:
        response, body = await get(url)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.code == 200
    assert len(body) == LAYER
    assert sha256(body) == digest
    said = [(level, text) for level, text, _ in logs if "without keeping" in text]
    assert len(said) == 1, said
    level, text = said[0]
    assert level == "warn"
    assert text.startswith(
        f"proxy hub: serving {digest} ({LAYER} bytes) without keeping it: the cache's storage"
        " failed: writing docker/registry/v2/txregistry/proxy/hub/fills/"
    ), text
    assert text.endswith(": No space left on device"), text
    assert not [e for _, _, e in logs if e.get("log_failure") is not None]
    assert not [text for level, text, _ in logs if level in ("error", "critical")]
    assert not blob_data_path(tmpfs, digest).exists()
    await wait_for(lambda: fill_files(tmpfs) == [])
    assert fake.count("GET", "cdn", ref=digest) == 1

    # Room again: the next pull fills the cache, and the one after is served from it.
    filler.unlink()
    response, body = await get(url)
    assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
    await wait_for(blob_data_path(tmpfs, digest).exists)
    assert fake.count("GET", "cdn", ref=digest) == 2
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert fake.count("GET", "cdn", ref=digest) == 2


def is_part(seen: Seen) -> bool:
    return seen.method == "PUT" and "partNumber" in seen.query


@pytest_twisted.ensureDeferred
async def test_a_fill_whose_s3_parts_are_refused_serves_the_whole_blob_and_keeps_nothing(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    proxied: Proxied,
    fake: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 answers 500 to every attempt at the fill's parts (a real SeaweedFS behind a front
    that refuses them mid-body): the client gets the whole blob from the upstream through the
    spool and the window, no upload is completed, and the next pull fills again."""
    monkeypatch.setattr(s3_client, "RETRY_DELAYS", (0.05, 0.05, 0.05))
    size = 12 * MiB  # parts of 5 MiB: a multipart upload
    image = fake.content.add_image("library/s3big", "latest", [size])
    digest = image.layers[0].digest
    root = f"/fillfail/{uuid.uuid4().hex}"
    section = s3_server.storage_section(root, chunksize="5MiB")
    section["regionendpoint"] = s3_front.endpoint
    registry = await proxied({"storage": section})
    url = f"{registry.url}/v2/library/s3big/blobs/{digest}"
    fault = s3_front.fault(is_part, "answer_up", after=1_000_000, count=1000)

    logs: list[tuple[str, str, dict[str, Any]]] = []

    def observer(event: dict[str, Any]) -> None:
        logs.append((event["log_level"].name, formatEvent(event), event))

    globalLogPublisher.addObserver(observer)
    try:
        response, body = await get(url)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.code == 200
    assert (len(body), sha256(body)) == (size, digest)
    said = [(level, text) for level, text, _ in logs if "without keeping" in text]
    assert len(said) == 1, said
    assert said[0][0] == "warn"
    assert said[0][1].startswith(
        f"proxy hub: serving {digest} ({size} bytes) without keeping it: the cache's storage"
        " failed: "
    ), said
    assert not [e for _, _, e in logs if e.get("log_failure") is not None]
    assert not [text for level, text, _ in logs if level in ("error", "critical")]
    hex_ = digest.split(":", 1)[1]
    data_key = f"blobs/sha256/{hex_[:2]}/{hex_}/data"
    # Nothing completed, nothing at the blob's address.
    assert not [s for s in s3_front.seen if s.method == "POST" and "uploadId" in s.query]
    assert not s3_front.on_key(data_key)
    status, _ = await deferToThread(
        signed_request,
        "HEAD",
        f"{s3_server.endpoint}/{s3_server.bucket}{root}/docker/registry/v2/{data_key}",
    )
    assert status == 404
    assert fake.count("GET", "cdn", ref=digest) == 1

    # S3 healthy again: the next pull fills, and the one after is served from the cache.
    fault.count = 0
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    await wait_for(lambda: bool(s3_front.on_key(data_key)), within=30)
    assert fake.count("GET", "cdn", ref=digest) == 2
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert fake.count("GET", "cdn", ref=digest) == 2
