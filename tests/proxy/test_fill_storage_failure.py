"""The cache's storage failing in the middle of a fill: the client still gets the whole,
verified blob from the upstream ("served without keeping it"), one log line says so, nothing
is left at the blob's address or in the fills folder, and the next pull fills again.

The failures are real: a filesystem storage on a small tmpfs (mounting it needs root) with
room for the first 64 MiB reservation window of the layer but not for the whole layer, so a
write fails with ENOSPC mid-body; and SeaweedFS behind a front that answers 500 to the fill's
parts mid-body."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from registry.storage.s3 import _client as s3_client
from tests.e2e.client import get, sha256
from tests.e2e.test_full_disk import leave_free, mounted_tmpfs, open_in, used
from tests.fakes.upstream import FakeUpstream, Hold
from tests.proxy.registries import Proxied
from tests.proxy.test_eviction_restart import wait_for_check
from tests.proxy.util import blob_data_path, fill_files, pull, wait_for
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
    with mounted_tmpfs(tmp_path, DISK) as disk:
        yield disk


async def held_fill(
    tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> tuple[str, str, Path, Hold]:
    """A cache on ``tmpfs`` with room for about ``FREE`` bytes, and a ``LAYER``-sized blob
    whose upstream body stops after 4 MiB until released: its digest, its URL through the
    cache, the filler (remove it for room) and the hold."""
    image = fake.content.add_image("library/big", "latest", [LAYER])
    digest = image.layers[0].digest
    registry = await proxied({"storage": {"rootdirectory": str(tmpfs)}})
    url = f"{registry.url}/v2/library/big/blobs/{digest}"
    return digest, url, leave_free(tmpfs, FREE), fake.hold_body(digest, after=4 * MiB)


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


# -- several clients, a client behind the window, a client that stops reading


class Logs:
    """Every log event while in use: (level, text, event)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __enter__(self) -> Logs:
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        self.events.append((event["log_level"].name, formatEvent(event), event))

    def saying(self, words: str) -> list[tuple[str, str]]:
        return [(level, text) for level, text, _ in self.events if words in text]

    def assert_clean(self) -> None:
        """No traceback, nothing at error level."""
        assert not [e for _, _, e in self.events if e.get("log_failure") is not None]
        assert not [t for level, t, _ in self.events if level in ("error", "critical")]


class RawClient:
    """A blob GET over a plain socket with a small receive buffer, that reads nothing until
    `read` is called: a client that stops reading but keeps its connection open.  The
    registry runs on this thread's reactor, so nothing here blocks it: the request is sent
    at once (the kernel completes a loopback connect), `answered` peeks without blocking,
    and `read` runs in a thread."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        assert parsed.hostname == "127.0.0.1" and parsed.port is not None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.settimeout(5)
        self.sock.connect((parsed.hostname, parsed.port))
        request = (
            f"GET {parsed.path} HTTP/1.1\r\nHost: 127.0.0.1:{parsed.port}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.sock.sendall(request.encode())

    def answered(self) -> bool:
        """The answer's first bytes have arrived (so the request is being served)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    async def read(self, pause: float = 0.0, slow_for: int = 0) -> tuple[int, int, int, str]:
        """Read the answer to its end (for its first ``slow_for`` bytes, ``pause`` seconds
        after each read: a slow client): status, Content-Length, body bytes received, their
        sha256 (the connection closing early gives a shorter body)."""
        return await deferToThread(self._read, pause, slow_for)

    def _read(self, pause: float, slow_for: int) -> tuple[int, int, int, str]:
        sock = self.sock
        sock.settimeout(30)
        head = b""
        for _ in range(1000):  # bounded: a head is far shorter than 1000 reads
            if b"\r\n\r\n" in head:
                break
            chunk = sock.recv(65536)
            assert chunk, head
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(fields["content-length"])
        hasher = hashlib.sha256(body)
        received = len(body)
        try:
            for _ in range(length + 1):  # bounded: at least one byte per round until the end
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                hasher.update(chunk)
                received += len(chunk)
                if received < slow_for:
                    time.sleep(pause)
        except ConnectionResetError:
            pass  # dropped: the body is short
        finally:
            sock.close()
        return status, length, received, "sha256:" + hasher.hexdigest()

    def close(self) -> None:
        self.sock.close()


async def next_pull_fills(
    url: str, tmpfs: Path, filler: Path, fake: FakeUpstream, digest: str, gets: int
) -> None:
    """With room again, the next pull fills the cache (one more upstream GET, ``gets`` in
    all), and the one after is served from it."""
    filler.unlink()
    response, body = await get(url)
    assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
    await wait_for(blob_data_path(tmpfs, digest).exists)
    assert fake.count("GET", "cdn", ref=digest) == gets
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert fake.count("GET", "cdn", ref=digest) == gets


@pytest_twisted.ensureDeferred
async def test_every_client_joined_to_a_fill_whose_storage_fails_gets_the_whole_blob(
    tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """Three cold pulls of one layer, all following the fill when the disk fills up: each
    gets a 200 and the whole, digest-correct body; one warning, one upstream GET, nothing
    kept, and the next pull fills."""
    # The fill stops early until the three have their answer's head (all are its readers).
    digest, url, filler, held = await held_fill(tmpfs, proxied, fake)

    with Logs() as logs:
        responses = await gatherResults([Deferred.fromCoroutine(head(url)) for _ in range(3)])
        assert [r.code for r in responses] == [200, 200, 200]
        await wait_for(lambda: held.arrived == 1)
        reading = gatherResults([r.content() for r in responses])
        held.release()
        bodies = await with_bound(reading, 120)
    assert [(len(b), sha256(b)) for b in bodies] == [(LAYER, digest)] * 3
    said = logs.saying("without keeping")
    assert len(said) == 1 and said[0][0] == "warn", said
    assert said[0][1].endswith(": No space left on device"), said
    logs.assert_clean()
    assert fake.count("GET", "cdn", ref=digest) == 1
    assert not blob_data_path(tmpfs, digest).exists()
    await wait_for(lambda: fill_files(tmpfs) == [])
    await next_pull_fills(url, tmpfs, filler, fake, digest, gets=2)


async def head(url: str) -> Any:
    """A GET's response once its head is in (its body is read as it comes, by treq)."""
    return await treq.get(url)


@pytest_twisted.ensureDeferred
async def test_a_client_behind_the_window_when_the_storage_fails_reads_back_what_was_stored(
    tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """A client that took only its socket buffers' worth when the disk filled up at about
    67 MiB (far behind the fill's 2 MiB window) gets the bytes before the failure from the
    fill's file and the rest from the relay: the whole, digest-correct blob.  It reads
    slowly at first, so the relay waits on it longer than the upstream ``timeout`` (2 s),
    but it keeps taking bytes: it is not dropped as a stalled client."""
    digest, url, filler, held = await held_fill(tmpfs, proxied, fake)

    with Logs() as logs:
        client = RawClient(url)
        try:
            await wait_for(client.answered)
            held.release()
            await wait_for(lambda: bool(logs.saying("without keeping")), within=30)
            # Slow at first: what a socket buffer holds (some 32 KiB) every 50 ms, so that
            # the first 2 MiB take longer than the ``timeout`` (the server hands them to its
            # connection in one or two writes, and then sees them drain).
            status, length, received, got = await client.read(pause=0.05, slow_for=2 * MiB)
        finally:
            client.close()
    assert (status, length, received, got) == (200, LAYER, LAYER, digest)
    assert len(logs.saying("without keeping")) == 1
    assert not logs.saying("took no bytes")
    logs.assert_clean()
    assert fake.count("GET", "cdn", ref=digest) == 1
    assert not blob_data_path(tmpfs, digest).exists()
    await wait_for(lambda: fill_files(tmpfs) == [])
    await next_pull_fills(url, tmpfs, filler, fake, digest, gets=2)


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_a_relayed_fill_is_cut_and_the_others_go_on(
    tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """Two clients follow the fill when the disk fills up; one has stopped reading (its
    connection open).  The relay waits for it at most the upstream ``timeout`` (2 s here):
    then that client is dropped before the last byte (one line says so) and the other gets
    the whole blob."""
    digest, url, filler, held = await held_fill(tmpfs, proxied, fake)

    with Logs() as logs:
        stalled = RawClient(url)
        try:
            await wait_for(stalled.answered)
            response = await head(url)
            assert response.code == 200
            reading = response.content()
            held.release()
            body = await with_bound(reading, 60)
            assert (len(body), sha256(body)) == (LAYER, digest)
            # The stalled client's connection was dropped: what it reads now ends short.
            status, length, received, _ = await stalled.read()
        finally:
            stalled.close()
    assert (status, length) == (200, LAYER)
    assert received < LAYER
    said = logs.saying("without keeping")
    assert len(said) == 1, said
    cut = logs.saying("took no bytes")
    assert len(cut) == 1, cut
    level, text = cut[0]
    assert level == "warn"
    assert text.startswith(f"proxy hub: dropped a client of {digest} at byte "), text
    assert text.endswith(
        f" of {LAYER}: it took no bytes for 2s while the upstream body and the other clients"
        " of the relayed fill waited for it"
    ), text
    assert_cut_where_sent(logs)
    logs.assert_clean()
    assert fake.count("GET", "cdn", ref=digest) == 1
    assert not blob_data_path(tmpfs, digest).exists()
    await wait_for(lambda: fill_files(tmpfs) == [])
    await next_pull_fills(url, tmpfs, filler, fake, digest, gets=2)


@pytest_twisted.ensureDeferred
async def test_a_relayed_fill_whose_only_client_stops_reading_is_abandoned(
    tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """The only client of a fill stops reading when the disk fills up: after the upstream
    ``timeout`` it is dropped, the upstream body is stopped, and nothing is kept."""
    digest, url, filler, held = await held_fill(tmpfs, proxied, fake)

    with Logs() as logs:
        stalled = RawClient(url)
        try:
            await wait_for(stalled.answered)
            held.release()
            await wait_for(lambda: bool(logs.saying("without keeping")), within=30)
            # Cut, and the upstream body stopped.
            await wait_for(lambda: bool(logs.saying("took no bytes")), within=30)
            await wait_for(lambda: fake.cdn_open_connections == 0, within=30)
            status, length, received, _ = await stalled.read()
        finally:
            stalled.close()
    assert (status, length) == (200, LAYER)
    assert received < LAYER
    assert len(logs.saying("without keeping")) == 1
    assert len(logs.saying("took no bytes")) == 1
    assert_cut_where_sent(logs)
    logs.assert_clean()
    assert fake.count("GET", "cdn", ref=digest) == 1
    assert not blob_data_path(tmpfs, digest).exists()
    await wait_for(lambda: fill_files(tmpfs) == [])
    await next_pull_fills(url, tmpfs, filler, fake, digest, gets=2)


def assert_cut_where_sent(logs: Logs) -> None:
    """The byte a dropped client was cut at (its line) is what its access line says it was
    sent: the bytes handed to its connection, also while it was reading back stored ones."""
    ((_, text),) = logs.saying("took no bytes")
    position = int(text.split(" at byte ", 1)[1].split(" ", 1)[0])
    cut_short = [e for _, _, e in logs.events if e.get("access") and e.get("complete") is False]
    assert [e["bytes"] for e in cut_short] == [position], (text, cut_short)


async def with_bound(awaitable: Any, seconds: float) -> Any:
    """``awaitable``'s result, or a failed test after ``seconds`` (a hang is a failure)."""
    d = Deferred.fromCoroutine(_await(awaitable))
    d.addTimeout(seconds, reactor)
    return await d


async def _await(awaitable: Any) -> Any:
    return await awaitable


@pytest_twisted.ensureDeferred
async def test_a_blob_the_storage_cannot_link_is_served_whole_and_removed(
    tmp_path: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """The storage fails once the blob is at its address, as it is linked into the
    repository (here a file stands where the repository's ``_layers`` folder goes, so the link
    cannot be written): the client still gets every byte, and the blob, which nothing links,
    does not stay behind holding its space; the next pull (the storage healthy again) fills."""
    image = fake.content.add_image("library/small", "latest", [4 * MiB])
    digest = image.layers[0].digest
    root = tmp_path / "store"
    registry = await proxied({"storage": {"rootdirectory": str(root)}})
    url = f"{registry.url}/v2/library/small/blobs/{digest}"
    # (The cache keeps Docker Hub's repositories under its prefix, docker.io.)
    blocker = root / "docker/registry/v2/repositories/docker.io/library/small/_layers"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    with Logs() as logs:
        response, body = await get(url)
        assert (response.code, len(body), sha256(body)) == (200, 4 * MiB, digest)
        said = logs.saying("without keeping")
        assert len(said) == 1, said
        assert said[0][0] == "warn"
        assert said[0][1].startswith(
            f"proxy hub: serving {digest} ({4 * MiB} bytes) without keeping it for "
            "docker.io/library/small: the cache's storage failed: "
        ), said
        await wait_for(lambda: not blob_data_path(root, digest).exists())
        logs.assert_clean()
    assert fill_files(root) == []

    blocker.unlink()
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    await wait_for(blob_data_path(root, digest).exists)
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert fake.count("GET", "cdn", ref=digest) == 2


@pytest_twisted.ensureDeferred
async def test_a_fill_that_cannot_start_writing_is_served_without_keeping_it(
    tmp_path: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """The storage refuses the fill's file (a file stands where the fills folder goes) after
    the upstream answered the blob GET: the client still gets the bytes it asked for, relayed
    from the upstream body, with the blob's headers; nothing is kept; and the upstream
    connection is closed once no client needs the rest of the body."""
    image = fake.content.add_image("library/small", "latest", [8 * MiB])
    layer = image.layers[0]
    digest = layer.digest
    root = tmp_path / "store"
    registry = await proxied({"storage": {"rootdirectory": str(root)}})
    # (Once the start-up tidied what interrupted fills left in that folder.)
    await wait_for_check(registry.url, "cache:hub")
    fills = root / "docker/registry/v2/txregistry/proxy/hub/fills"
    if fills.is_dir():
        os.rmdir(fills)
    fills.parent.mkdir(parents=True, exist_ok=True)
    fills.write_bytes(b"")
    url = f"{registry.url}/v2/library/small/blobs/{digest}"
    with Logs() as logs:
        response, body = await get(url, headers={"Range": "bytes=0-1023"})
        assert response.code == 206, body
        assert body == b"".join(fake.content.blobs[digest].read(0, 1024))
        assert response.headers.getRawHeaders("Content-Range") == [f"bytes 0-1023/{8 * MiB}"]
        assert response.headers.getRawHeaders("Docker-Content-Digest") == [digest]
        assert fake.count("GET", "cdn", ref=digest) == 1
        # The rest of the body is not read for nobody: the upstream connection goes.
        await wait_for(lambda: fake.cdn_open_connections == 0, within=30)
        said = logs.saying("without keeping it")
        assert len(said) == 1, said
        assert said[0][0] == "warn"
        assert said[0][1].startswith(
            f"proxy hub: serving {digest} ({8 * MiB} bytes) without keeping it: the cache's"
            " storage failed: "
        ), said
        logs.assert_clean()
    assert not blob_data_path(root, digest).exists()

    # The whole blob, too, relayed and checked against its digest.
    response, body = await get(url)
    assert (response.code, len(body), sha256(body)) == (200, 8 * MiB, digest)
    assert fake.count("GET", "cdn", ref=digest) == 2
    assert not blob_data_path(root, digest).exists()


def fill_up(disk: Path) -> Path:
    """Write a filler file until the disk refuses more; returns it."""
    filler = disk / "filler"
    block = b"\0" * MiB
    with open(filler, "wb", buffering=0) as file:
        for _ in range(1 + os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize // MiB):
            try:
                file.write(block)
            except OSError:
                break
        for _ in range(MiB // 4096):
            try:
                file.write(b"\0" * 4096)
            except OSError:
                break
    return filler


@pytest_twisted.ensureDeferred
async def test_a_cache_on_a_full_disk_serves_pulls_without_keeping_them(
    tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """With no room at all, the cache is a pass-through: the manifest by tag and by digest
    and every blob are answered from the upstream, whole and checked, with one warning line
    each; nothing is kept.  With room again, the next pull is kept."""
    image = fake.content.add_image("library/small", "latest", [8 * MiB, 2 * MiB])
    registry = await proxied({"storage": {"rootdirectory": str(tmpfs)}})
    # The start-up's own writes first (on a disk full at start they fail with their line).
    own = tmpfs / "docker/registry/v2/txregistry"
    await wait_for(lambda: (own / "referrers-complete").exists() and (own / "gc/reserve").exists())
    filler = fill_up(tmpfs)
    with Logs() as logs:
        pulled = await pull(registry, "library/small", "latest")
        assert pulled["digest"] == image.digest
        response, body = await get(f"{registry.url}/v2/library/small/manifests/{image.digest}")
        assert response.code == 200, body
        assert sha256(body) == image.digest
        logs.assert_clean()
        said = logs.saying("without keeping it")
        blobs = [str(image.config), *(layer.digest for layer in image.layers)]
        for digest in blobs:
            assert [t for _, t in said if f"serving {digest} " in t], (digest, said)
        manifests = [t for _, t in said if f"manifest {image.digest}" in t]
        assert len(manifests) == 2, said
        assert all(level == "warn" for level, _ in said), said
    for digest in blobs:
        assert not blob_data_path(tmpfs, digest).exists()
    await wait_for(lambda: fill_files(tmpfs) == [])
    response, _ = await get(f"{registry.url}/v2/library/small/manifests/latest")
    assert response.code == 200
    assert fake.count("GET", "manifest", ref="latest") == 2  # nothing kept: asked again

    # Room again: the next pull is kept, and the one after is served from the cache.
    filler.unlink()
    await pull(registry, "library/small", "latest")
    for digest in blobs:
        await wait_for(blob_data_path(tmpfs, digest).exists)
    fetched = fake.count("GET", "cdn", ref=image.layers[0].digest)
    await pull(registry, "library/small", "latest")
    assert fake.count("GET", "cdn", ref=image.layers[0].digest) == fetched


@pytest_twisted.ensureDeferred
async def test_a_fill_refused_by_a_full_s3_spool_leaves_no_spooled_file_open(
    s3_server: S3Server, tmpfs: Path, proxied: Proxied, fake: FakeUpstream
) -> None:
    """S3 storage whose ``spooldirectory`` is nearly full: the fill's upload part file fails
    with ENOSPC and the client still gets the blob.  Then nothing of the fill is left open
    (a part file is unlinked from the start: one left open keeps its blocks, unseen, until
    the process ends) and the spool is as full as before, so once there is room the next
    pull is kept.  The fill's own spool (``fills/`` in the same folder) is a tmpfs of its
    own here, with room: otherwise whichever of the two files wrote last before the disk
    filled up would be the one to fail."""
    size = 12 * MiB  # parts of 5 MiB: a multipart upload
    image = fake.content.add_image("library/spooled", "latest", [size])
    digest = image.layers[0].digest
    root = f"/fillspool/{uuid.uuid4().hex}"
    section = s3_server.storage_section(root, chunksize="5MiB", spooldirectory=str(tmpfs))
    with mounted_tmpfs(tmpfs, 2 * size, name="fills"):
        registry = await proxied({"storage": section})
        url = f"{registry.url}/v2/library/spooled/blobs/{digest}"
        filler = leave_free(tmpfs, 3 * MiB)
        before = used(tmpfs)

        with Logs() as logs:
            response, body = await get(url)
        assert (response.code, len(body), sha256(body)) == (200, size, digest)
        said = logs.saying("without keeping")
        assert len(said) == 1, said
        assert said[0][1].endswith(
            f"the cache's storage failed: spooling an S3 upload part in {tmpfs}:"
            " No space left on device"
        ), said
        logs.assert_clean()
        await _spool_released(tmpfs, before)
        assert fake.count("GET", "cdn", ref=digest) == 1

        filler.unlink()
        await _kept_with_room(s3_server, root, url, digest, fake)
        await registry.stop()


async def _spool_released(spool: Path, before: int) -> None:
    """No descriptor into ``spool``, its usage back to ``before``: closed in the thread pool
    as the fill ends, so a bounded wait, then what is left."""
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not open_in(spool) and used(spool) == before, within=5)
    assert open_in(spool) == []
    assert used(spool) == before


async def _kept_with_room(
    s3_server: S3Server, root: str, url: str, digest: str, fake: FakeUpstream
) -> None:
    """The next pull is kept (stored in S3), and the one after is served from the cache."""
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    hex_ = digest.split(":", 1)[1]
    data_url = (
        f"{s3_server.endpoint}/{s3_server.bucket}{root}/docker/registry/v2/blobs/sha256/"
        f"{hex_[:2]}/{hex_}/data"
    )

    async def stored() -> bool:
        status, _ = await deferToThread(signed_request, "HEAD", data_url)
        return status == 200

    for _ in range(100):  # the fill completes the upload as the answer ends
        if await stored():
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert await stored()
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert fake.count("GET", "cdn", ref=digest) == 2
