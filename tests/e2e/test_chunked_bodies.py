"""
Upload bodies sent with ``Transfer-Encoding: chunked``, as docker, containerd and skopeo send
layers: decoded by `registry.http.chunked`, stored and hashed byte for byte.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.e2e.client import header, sha256, start_upload
from tests.e2e.harness import InProcessRegistry
from tests.e2e.test_refused_bodies import RawUpload
from tests.e2e.test_upload_resilience import upload_range

MiB = 1024 * 1024


def curl_chunked(method: str, url: str, source: Path) -> tuple[int, str]:
    """curl sending ``source`` chunked (its own framing, 64 KiB chunks); status and Location."""
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-X", method,
         "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/octet-stream",
         # -T would append the file's name to a URL ending in "/" (POST .../uploads/)
         *(["--data-binary", f"@{source}"] if method == "POST" else ["-T", str(source)]), url],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()  # text mode: CRLFs are newlines already
    status = int([line for line in lines if line.startswith("HTTP/")][-1].split()[1])
    location = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("location:")), ""
    )
    return status, location


@pytest_twisted.ensureDeferred
async def test_curl_chunked_patches_then_commit(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    data = os.urandom(9 * MiB + 12345)
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(data[: 5 * MiB + 1])
    second.write_bytes(data[5 * MiB + 1 :])
    location = await start_upload(registry.url, "chunked/curl")
    status, _ = await deferToThread(curl_chunked, "PATCH", location, first)
    assert status == 202
    assert await upload_range(location) == f"0-{5 * MiB}"
    status, _ = await deferToThread(curl_chunked, "PATCH", location, second)
    assert status == 202
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry.url}/v2/chunked/curl/blobs/{sha256(data)}")
    assert await response.content() == data


@pytest_twisted.ensureDeferred
async def test_curl_chunked_monolithic_post(registry: InProcessRegistry, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 7)
    source = tmp_path / "blob"
    source.write_bytes(data)
    url = f"{registry.url}/v2/chunked/post/blobs/uploads/?digest={sha256(data)}"
    status, _ = await deferToThread(curl_chunked, "POST", url, source)
    assert status == 201
    response = await treq.head(f"{registry.url}/v2/chunked/post/blobs/{sha256(data)}")
    assert response.code == 200
    assert header(response, "docker-content-digest") == sha256(data)


def frame(data: bytes, rng: random.Random) -> bytes:
    """Chunks of uneven sizes, some with extensions, then a trailer field."""
    out, position = [], 0
    while position < len(data):
        size = rng.choice([1, 2, 17, 4096, 65536, 100_000])
        part = data[position : position + size]
        extension = rng.choice([b"", b";sig=abc", b';q="x y"'])
        out.append(b"%x%s\r\n%s\r\n" % (len(part), extension, part))
        position += size
    return b"".join(out) + b"0\r\nX-Checksum: none\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_odd_framing_in_small_reads_then_a_pipelined_request(
    registry: InProcessRegistry,
) -> None:
    """Every split of the framing across reads, and the next request on the same connection."""
    data = os.urandom(2 * MiB + 3)
    location = await start_upload(registry.url, "chunked/raw")
    path = location.removeprefix(registry.url)
    wire = frame(data, random.Random(5))

    def exchange() -> tuple[int, str, int]:
        with RawUpload(registry.url) as client:
            client.sock.sendall(
                f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            rng = random.Random(9)
            position = 0
            while position < len(wire):  # reads of 1 byte to 64 KiB
                step = rng.choice([1, 2, 3, 5, 700, 65536])
                client.sock.sendall(wire[position : position + step])
                position += step
            client.sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            patched = client.answer()
            base = client.answer()
            return patched.status, patched.headers.get("range", ""), base.status

    status, stored, pipelined = await deferToThread(exchange)
    assert status == 202
    assert stored == f"0-{len(data) - 1}"
    assert pipelined == 200
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()


@pytest_twisted.ensureDeferred
async def test_malformed_framing_is_refused_and_nothing_of_it_kept(
    registry: InProcessRegistry,
) -> None:
    data = os.urandom(100_000)
    location = await start_upload(registry.url, "chunked/bad")
    path = location.removeprefix(registry.url)

    def exchange() -> bytes:
        with socket.create_connection(registry.url.removeprefix("http://").split(":")) as sock:
            sock.sendall(
                f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                + b"%x\r\n%s\r\n" % (len(data), data)
                + b"0x10\r\n"  # not a chunk size
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    answer = await deferToThread(exchange)
    assert answer.startswith(b"HTTP/1.1 400 ")
    # The client was told 400: the valid chunk before the error is not kept either (it used to
    # be, and a client resuming from its own offset then disagreed with the upload's Range).
    for _ in range(20):  # what the server does with it, it does once the connection closes
        assert await upload_range(location) == "0-0"
        await deferLater(reactor, 0.01, lambda: None)
