"""
Uploads whose request is cut mid-body (a TCP relay passes part of the body to the registry,
then ends the stream: `tests.fakes.cutter`), on registry:2 and on txregistry.

A cut chunk resumes from the offset the registry reports where it can (txregistry); where the
registry refuses to resume (registry:2: ``BLOB_UPLOAD_INVALID``, "upload resumed at wrong
offset", on the status GET or on the resumed PATCH), the session is cancelled and the upload
starts again in a fresh one.  A cut monolithic upload (bytes, or a file with its digest) is
sent again whole in a fresh session.  Every attempt counts against ``retries``.
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
from tests.e2e.tools import Registry2Process
from tests.fakes.cutter import cutting_relay

MiB = 1024 * 1024


def patch(method: str, path: str) -> bool:
    return method == "PATCH"


def put(method: str, path: str) -> bool:
    return method == "PUT" and "/blobs/uploads/" in path


def source(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return path, data


async def stored(url: str, name: str, digest: str) -> bytes:
    response, body = await get(f"{url}/v2/{name}/blobs/{digest}")
    assert response.code == 200
    return body


@pytest_twisted.ensureDeferred
async def test_a_chunk_cut_on_registry2_starts_a_fresh_session(
    registry2: Registry2Process, make_client: ClientFactory, tmp_path: Path
) -> None:
    """registry:2 refuses to resume the session whose PATCH was cut (``BLOB_UPLOAD_INVALID``
    on the status GET): the client tries to cancel it, opens another and sends the file
    again from byte 0.  registry:2 refuses that DELETE too (the same wrong offset), so the
    old session is the one left in ``uncancelled_uploads``."""
    path, data = source(tmp_path, 6 * MiB)
    target = f"http://{registry2.host}"
    async with cutting_relay(target) as relay:
        cut = relay.cut(patch, after=2 * MiB)
        client = make_client(relay.url, retries=2)
        dgst = await client.upload_blob("cut/chunks", path, chunk_size=4 * MiB)
        assert str(dgst) == images.digest(data)
        assert cut.done == 1
        methods = relay.methods()
        # The cut PATCH, the refused status GET, the old session cancelled (refused), then
        # the whole file in a new session.
        assert methods == ["POST", "PATCH", "GET", "DELETE", "POST", "PATCH", "PATCH", "PUT"]
        first = next(path for method, path in relay.seen if method == "PATCH")
        assert [url.split("?")[0] for url in client.uncancelled_uploads] == [
            relay.url + first.split("?")[0]
        ]
    assert await stored(target, "cut/chunks", str(dgst)) == data


@pytest_twisted.ensureDeferred
async def test_a_resumed_chunk_refused_starts_a_fresh_session(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The status GET answers, but the resumed PATCH is refused (a front answers it 404
    ``BLOB_UPLOAD_INVALID``, as registry:2 does when the cut request's bytes land after the
    GET): the session is cancelled (txregistry accepts that) and the upload starts again."""
    path, data = source(tmp_path, 100_000)
    patches = 0

    def rule(method: str, path: str) -> int | str | tuple[int, str] | None:
        nonlocal patches
        if method == "PATCH":
            patches += 1
            if patches == 1:
                return "drop"
            if patches == 2:
                return (404, "BLOB_UPLOAD_INVALID")
        return None

    async with flaky_front(registry.url, rule) as front:
        client = make_client(front.url, retries=2)
        dgst = await client.upload_blob("cut/refused", path, chunk_size=60_000)
        assert str(dgst) == images.digest(data)
        methods = [m for m, p, _ in front.seen if "/blobs/uploads/" in p]
        assert methods == [
            "POST",
            "PATCH",
            "GET",
            "PATCH",
            "DELETE",
            "POST",
            "PATCH",
            "PATCH",
            "PUT",
        ]
        assert client.uncancelled_uploads == []
    assert await stored(registry.url, "cut/refused", str(dgst)) == data


@pytest_twisted.ensureDeferred
async def test_a_chunk_cut_on_txregistry_resumes_the_session(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    """txregistry reports what it holds of the cut PATCH: the same session carries on."""
    path, data = source(tmp_path, 6 * MiB)
    async with cutting_relay(registry.url) as relay:
        cut = relay.cut(patch, after=2 * MiB)
        client = make_client(relay.url, retries=2)
        dgst = await client.upload_blob("cut/chunks", path, chunk_size=4 * MiB)
        assert str(dgst) == images.digest(data)
        assert cut.done == 1
        methods = relay.methods()
        assert methods[:3] == ["POST", "PATCH", "GET"]
        assert methods.count("POST") == 1 and "DELETE" not in methods
        assert methods[-1] == "PUT"
        assert client.uncancelled_uploads == []
    assert await stored(registry.url, "cut/chunks", str(dgst)) == data


@pytest_twisted.ensureDeferred
async def test_chunk_cuts_beyond_the_retries_fail_the_upload(
    registry2: Registry2Process, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Each cut costs one of ``retries``, fresh sessions included: with ``retries=1`` a
    second cut is the answer (`Unavailable`), and the last session is cancelled."""
    path, _ = source(tmp_path, 3 * MiB)
    async with cutting_relay(f"http://{registry2.host}") as relay:
        cut = relay.cut(patch, after=MiB, count=2)
        client = make_client(relay.url, retries=1)
        with pytest.raises(Unavailable):
            await client.upload_blob("cut/fail", path, chunk_size=2 * MiB)
        assert cut.done == 2
        # The first session refused to resume, a second one cut too: the call fails, and
        # tries to delete it (registry:2 refuses both deletes).
        methods = relay.methods()
        assert methods == ["POST", "PATCH", "GET", "DELETE", "POST", "PATCH", "DELETE"]
        assert len(client.uncancelled_uploads) == 2


@pytest_twisted.ensureDeferred
async def test_a_cut_monolithic_file_upload_is_sent_again(
    registry2: Registry2Process, make_client: ClientFactory, tmp_path: Path
) -> None:
    """``upload_blob(file, digest)`` is one PUT with the file as its body; cut, the client
    re-reads the file from the start and sends it again in a fresh session."""
    path, data = source(tmp_path, 4 * MiB)
    target = f"http://{registry2.host}"
    async with cutting_relay(target) as relay:
        cut = relay.cut(put, after=MiB)
        client = make_client(relay.url, retries=2)
        dgst = await client.upload_blob("cut/whole", path, images.digest(data))
        assert str(dgst) == images.digest(data)
        assert cut.done == 1
        methods = relay.methods()
        assert methods == ["POST", "PUT", "DELETE", "POST", "PUT"]
        # registry:2 refuses to delete the session whose PUT was cut (wrong offset).
        assert len(client.uncancelled_uploads) == 1
    assert await stored(target, "cut/whole", str(dgst)) == data


@pytest_twisted.ensureDeferred
async def test_a_cut_monolithic_bytes_upload_is_sent_again(
    registry: InProcessRegistry, make_client: ClientFactory
) -> None:
    """Bytes can always be sent again: the same, from memory, on txregistry."""
    data = os.urandom(3 * MiB)
    async with cutting_relay(registry.url) as relay:
        cut = relay.cut(put, after=MiB)
        client = make_client(relay.url, retries=2)
        dgst = await client.upload_blob("cut/bytes", data)
        assert str(dgst) == images.digest(data)
        assert cut.done == 1
        methods = relay.methods()
        assert methods == ["POST", "PUT", "DELETE", "POST", "PUT"]
        assert client.uncancelled_uploads == []  # txregistry deletes the cut session
    assert await stored(registry.url, "cut/bytes", str(dgst)) == data
