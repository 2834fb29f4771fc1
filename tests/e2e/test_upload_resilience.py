"""
Uploads that survive what happens to real pushes: clients leaving mid-body, the server being
restarted or killed between or during chunks, and multi-GiB bodies with bounded memory.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from tests.e2e.client import PatternBody, error_codes, header, sha256, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry, RegistryProcess, sleep


def send_partial_body(url: str, method: str, path: str, total: int, data: bytes) -> None:
    """Send request headers announcing ``total`` bytes, then only ``data``, then hang up."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {total}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        sock.sendall(data)


async def upload_range(location: str) -> str | None:
    response = await treq.get(location)
    await response.content()
    assert response.code == 204
    return header(response, "range")


async def wait_for_range(location: str, reached: Callable[[str | None], bool]) -> str | None:
    """Poll the upload's ``Range`` until ``reached`` says so (bounded: 20 s)."""
    stored = None
    for _ in range(400):
        stored = await upload_range(location)
        if reached(stored):
            return stored
        await sleep(0.05)
    raise AssertionError(f"upload range stayed at {stored}")


@pytest_twisted.ensureDeferred
async def test_client_disconnect_leaves_upload_resumable(registry: InProcessRegistry) -> None:
    data = os.urandom(1_000_000)
    location = await start_upload(registry.url, "resume")
    path = location.removeprefix(registry.url)
    await deferToThread(send_partial_body, registry.url, "PATCH", path, len(data), data[:300_000])
    stored = None
    for _ in range(400):  # up to 20 s: the server finishes writing after the client is gone
        stored = await upload_range(location)
        if stored == "0-299999":
            break
        await sleep(0.05)
    assert stored == "0-299999"

    # The bytes can be visible before the server has seen the client leave: until then the
    # upload is still held by the broken request, and a PATCH gets 416 saying so.
    for _ in range(400):
        response = await treq.patch(
            location, data=data[300_000:], headers={"Content-Range": f"300000-{len(data) - 1}"}
        )
        text = await response.text()
        if "another request is writing" not in text:
            break
        await sleep(0.05)
    assert response.code == 202, text
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry.url}/v2/resume/blobs/{sha256(data)}")
    assert await response.content() == data


@pytest_twisted.ensureDeferred
async def test_a_monolithic_push_broken_off_leaves_no_upload_behind(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    """A ``POST ?digest=`` carries the whole blob and its answer would have been the first
    the client heard of the upload: broken off, nobody can resume or cancel it, so what was
    stored goes at once rather than at the purge, days later."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    data = os.urandom(1_000_000)
    path = f"/v2/broken/post/blobs/uploads/?digest={sha256(data)}"
    uploads = tmp_path / "registry0/data/docker/registry/v2/repositories/broken/post/_uploads"
    globalLogPublisher.addObserver(observe)
    try:
        await deferToThread(
            send_partial_body, registry.url, "POST", path, len(data), data[:300_000]
        )
        for _ in range(400):  # bounded: 20 s for the server to see the client go
            if any("client left mid-upload; broken/post" in line for line in lines):
                break
            await sleep(0.05)
    finally:
        globalLogPublisher.removeObserver(observe)
    left = [line for line in lines if "client left mid-upload" in line]
    assert len(left) == 1 and "removed" in left[0], lines
    assert not uploads.exists() or list(uploads.iterdir()) == []
    # The same push sent whole still works.
    response = await treq.post(f"{registry.url}{path}", data=data)
    assert response.code == 201, await response.text()


@pytest_twisted.ensureDeferred
async def test_space_announced_but_not_sent_is_given_back(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    """
    Disk space is set aside for a body's announced length as it arrives; a client that
    announces 100 MiB and leaves after 2 MiB leaves 2 MiB allocated, not a window more.
    """
    sent = os.urandom(2 * 1024 * 1024)
    location = await start_upload(registry.url, "announced")
    path = location.removeprefix(registry.url)
    await deferToThread(send_partial_body, registry.url, "PATCH", path, 100 * 1024 * 1024, sent)
    data_file = (
        tmp_path
        / "registry0/data/docker/registry/v2/repositories/announced/_uploads"
        / location.rsplit("/", 1)[1]
        / "data"
    )
    allocated = -1
    for _ in range(400):
        if await upload_range(location) == f"0-{len(sent) - 1}":
            allocated = data_file.stat().st_blocks * 512
            if allocated < len(sent) + 64 * 1024:
                break
        await sleep(0.05)
    assert data_file.read_bytes() == sent
    assert len(sent) <= allocated < len(sent) + 64 * 1024


@pytest.fixture
def registry_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    process = RegistryProcess(tmp_path)
    process.start()
    yield process
    process.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest_twisted.ensureDeferred
async def test_restart_between_chunks(registry_process: RegistryProcess, sig: int) -> None:
    first, second = os.urandom(2_000_000), os.urandom(1_500_000)
    location = await start_upload(registry_process.url, "restart/me")
    response = await treq.patch(location, data=first, headers={"Content-Range": "0-1999999"})
    assert response.code == 202
    registry_process.stop(sig)
    registry_process.start()
    assert await upload_range(location) == "0-1999999"
    response = await treq.patch(
        location, data=second, headers={"Content-Range": f"2000000-{3_500_000 - 1}"}
    )
    assert response.code == 202, await response.text()
    whole = first + second
    response = await treq.put(f"{location}?digest={sha256(whole)}")
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry_process.url}/v2/restart/me/blobs/{sha256(whole)}")
    assert hashlib.sha256(await response.content()).hexdigest() == sha256(whole)[7:]


@pytest_twisted.ensureDeferred
async def test_hash_state_is_recorded_after_each_request(
    registry_process: RegistryProcess,
) -> None:
    """
    A PATCH is answered once its bytes are stored, while the hasher may still be catching up;
    the state is then recorded before the upload is used again.  So the next request, even
    right after a kill, continues from the saved state instead of re-hashing the data.
    """
    first = os.urandom(24 * 1024 * 1024)
    second = os.urandom(3 * 1024 * 1024)
    location = await start_upload(registry_process.url, "state/kept")
    upload_id = location.rsplit("/", 1)[1]
    response = await treq.patch(
        location, data=first, headers={"Content-Range": f"0-{len(first) - 1}"}
    )
    assert response.code == 202, await response.text()
    assert await upload_range(location) == f"0-{len(first) - 1}"  # waits for the recording
    state = (
        registry_process.workdir
        / "data/docker/registry/v2/repositories/state/kept/_uploads"
        / upload_id
        / f"txhashstates/sha256/{len(first)}"
    )
    assert state.is_file()

    registry_process.kill()
    registry_process.start()
    assert await upload_range(location) == f"0-{len(first) - 1}"
    response = await treq.patch(
        location,
        data=second,
        headers={"Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"},
    )
    assert response.code == 202, await response.text()
    whole = first + second
    response = await treq.put(f"{location}?digest={sha256(whole)}")
    assert response.code == 201, await response.text()
    assert "re-hashing stored data" not in registry_process.log_text()


def _hold_partial_body(url: str, path: str, total: int, data: bytes) -> socket.socket:
    """Send a head announcing ``total`` bytes, then ``data``; the connection stays open."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {total}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
    )
    return sock


@pytest_twisted.ensureDeferred
async def test_space_set_aside_by_a_killed_writer_is_given_back(
    registry_process: RegistryProcess,
) -> None:
    """
    A PATCH announcing 200 MiB has space set aside ahead of its data; killed (kill -9) with
    1 MB written, nothing of that process gives it back.  The next request on the upload (a
    commit without a body, which sets nothing aside) does, so the blob does not carry tens of
    MiB allocated past its end for good.
    """
    data = os.urandom(1_000_000)
    location = await start_upload(registry_process.url, "killed/reserve")
    upload_id = location.rsplit("/", 1)[1]
    uploads = registry_process.workdir / "data/docker/registry/v2/repositories/killed/reserve"
    data_file = uploads / "_uploads" / upload_id / "data"
    path = location.removeprefix(registry_process.url)
    sock = _hold_partial_body(registry_process.url, path, 200 * 1024 * 1024, data)
    try:
        for _ in range(400):  # bounded: 20 s for the bytes to reach the file
            if data_file.stat().st_size == len(data):
                break
            await sleep(0.05)
        assert data_file.stat().st_size == len(data)
        assert data_file.stat().st_blocks * 512 > len(data) + 32 * 1024 * 1024  # set aside
        registry_process.kill()
    finally:
        sock.close()
    registry_process.start()
    assert data_file.stat().st_blocks * 512 > len(data) + 32 * 1024 * 1024  # still held
    assert await upload_range(location) == f"0-{len(data) - 1}"
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()
    blob = (
        registry_process.workdir
        / "data/docker/registry/v2/blobs/sha256"
        / sha256(data)[7:9]
        / sha256(data)[7:]
        / "data"
    )
    assert blob.read_bytes() == data
    assert blob.stat().st_blocks * 512 < len(data) + 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_small_chunks_back_to_back_then_a_kill(registry_process: RegistryProcess) -> None:
    """
    Each PATCH takes over the hasher of the one before while it is still catching up, so no
    state is recorded in between; a kill right after the last answer then leaves the stored
    bytes to be hashed again, and the digest still comes out right.
    """
    sizes = [100_000 + 37_111 * index for index in range(24)]
    parts = [os.urandom(size) for size in sizes]
    location = await start_upload(registry_process.url, "small/chunks")
    offset = 0
    for part in parts:
        end = offset + len(part) - 1
        response = await treq.patch(
            location, data=part, headers={"Content-Range": f"{offset}-{end}"}
        )
        assert response.code == 202, await response.text()
        assert header(response, "range") == f"0-{end}"
        await response.content()
        offset += len(part)
    registry_process.kill()
    registry_process.start()
    assert await upload_range(location) == f"0-{offset - 1}"
    tail = os.urandom(65_537)
    response = await treq.patch(
        location, data=tail, headers={"Content-Range": f"{offset}-{offset + len(tail) - 1}"}
    )
    assert response.code == 202, await response.text()
    whole = b"".join(parts) + tail
    response = await treq.put(f"{location}?digest={sha256(whole)}")
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry_process.url}/v2/small/chunks/blobs/{sha256(whole)}")
    assert hashlib.sha256(await response.content()).hexdigest() == sha256(whole)[7:]


@pytest_twisted.ensureDeferred
async def test_kill_mid_body(registry_process: RegistryProcess) -> None:
    """Killed while bytes arrive: no blob appears, and the upload resumes where data stopped."""
    data = os.urandom(8_000_000)
    location = await start_upload(registry_process.url, "killed")
    path = location.removeprefix(registry_process.url)
    # A monolithic push cut short by the kill: nothing may become visible.
    await deferToThread(
        send_partial_body,
        registry_process.url,
        "POST",
        f"/v2/killed/blobs/uploads/?digest={sha256(data)}",
        len(data),
        data[:5_000_000],
    )
    await deferToThread(
        send_partial_body, registry_process.url, "PATCH", path, len(data), data[:3_000_000]
    )
    await wait_for_range(location, lambda stored: stored not in (None, "0-0"))  # bytes in
    registry_process.kill()
    registry_process.start()
    response = await treq.head(f"{registry_process.url}/v2/killed/blobs/{sha256(data)}")
    assert response.code == 404

    stored = await upload_range(location)
    assert stored is not None
    size = int(stored.split("-")[1]) + 1
    assert 0 < size <= 3_000_000
    response = await treq.patch(
        location, data=data[size:], headers={"Content-Range": f"{size}-{len(data) - 1}"}
    )
    assert response.code == 202, await response.text()
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry_process.url}/v2/killed/blobs/{sha256(data)}")
    assert hashlib.sha256(await response.content()).hexdigest() == sha256(data)[7:]


class _HashingProtocolSink:
    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0

    def __call__(self, data: bytes) -> None:
        self.hasher.update(data)
        self.size += len(data)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_two_gib_push_and_pull(registry_process: RegistryProcess) -> None:
    """
    2 GiB through one process, streamed both ways.  The peak RSS is printed, not asserted:
    memory figures belong to the benchmark (bench/run.py's RSS run), where they are compared.
    """
    body = PatternBody(count=512)  # 512 x 4 MiB = 2 GiB, generated on the fly
    digest = body.digest()
    server = psutil.Process(registry_process.pid)
    peak = [server.memory_info().rss]

    def sample() -> None:
        peak[0] = max(peak[0], server.memory_info().rss)

    sampler = LoopingCall(sample)
    sampler.clock = reactor
    sampler.start(0.1)
    try:
        response = await treq.post(
            f"{registry_process.url}/v2/big/blobs/uploads/?digest={digest}",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.code == 201, await response.text()
        response = await treq.get(f"{registry_process.url}/v2/big/blobs/{digest}", unbuffered=True)
        assert response.code == 200
        assert response.length == body.length
        sink = _HashingProtocolSink()
        await treq.collect(response, sink)
    finally:
        sampler.stop()
    assert sink.size == body.length
    assert "sha256:" + sink.hasher.hexdigest() == digest
    print(f"2 GiB push and pull: server peak RSS {peak[0] / 2**20:.0f} MiB")


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_to_one_upload(registry: InProcessRegistry) -> None:
    """Two PATCHes racing on one upload: one wins, the other gets 416, bytes never interleave."""
    location = await start_upload(registry.url, "race")
    path = location.removeprefix(registry.url)
    # Hold the upload open with a body that never completes: the server's 100 Continue says
    # the upload is open and held by this request.
    host, port = registry.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.sendall(
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    assert (await deferToThread(sock.recv, 1024)).startswith(b"HTTP/1.1 100 Continue")
    await deferToThread(sock.sendall, b"a" * 10)
    response = await treq.patch(location, data=b"b" * 10)
    assert response.code == 416
    assert await error_codes(response) == ["RANGE_INVALID"]
    await deferToThread(sock.close)
    # Once the server has seen the first client leave, the upload is free again: a chunk at
    # the wrong offset is refused for its offset (nothing written), no longer for the writer.
    for _ in range(400):
        response = await treq.patch(location, data=b"c", headers={"Content-Range": "0-0"})
        text = await response.text()
        if "another request is writing" not in text:
            break
        await sleep(0.05)
    assert response.code == 416 and "upload has 10 bytes" in text, text
    assert await upload_range(location) == "0-9"


@pytest_twisted.ensureDeferred
async def test_stalled_upload_times_out_and_stays_resumable(start_registry: Starter) -> None:
    """
    A client that stops sending mid-body is dropped after [http] timeout; bytes are kept.
    So are idle connections (the policy that bounds how many a server holds): one that never
    sends a byte, and a kept-alive one after its answer.
    """
    registry = await start_registry({"http": {"timeout": "1s"}})
    location = await start_upload(registry.url, "stalled")
    path = location.removeprefix(registry.url)
    host, port = registry.url.removeprefix("http://").split(":")

    def idle(request: bytes) -> bytes:
        """Everything the server sends until it hangs up (the socket allows 10 s)."""
        received = b""
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            for _ in range(100):  # a 200 and its small body, then b"" at the hang-up
                data = sock.recv(65536)
                if not data:
                    return received
                received += data
        raise AssertionError(f"still open after 100 reads: {received!r}")

    silent = deferToThread(idle, b"")
    kept_alive = deferToThread(idle, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")

    def stall() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
                + b"s" * 400
            )
            return sock.recv(100)  # returns b"" when the server hangs up

    assert await deferToThread(stall) == b""  # hung up by the server (the socket allows 10 s)
    assert await silent == b""
    answered = await kept_alive
    assert answered.startswith(b"HTTP/1.1 200 ") and answered.count(b"HTTP/1.1") == 1, answered
    for _ in range(50):
        if await upload_range(location) == "0-399":
            break
        await sleep(0.05)
    assert await upload_range(location) == "0-399"
