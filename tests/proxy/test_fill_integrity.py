"""Fills: one upstream GET however many clients, nothing visible unless complete and verified,
self-healing of damaged cached data."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.web.iweb import IBodyProducer

from registry.api.digests import DigestingHasher
from registry.client._body import abort_transport
from registry.storage.filesystem import FilesystemDriver
from tests.e2e.client import sha256
from tests.e2e.harness import InProcessRegistry
from tests.fakes.content import Image
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import blob_data_path, fetch, fill_files, metric, storage_root, wait_for

LAYER = 3 * 1024 * 1024


async def _try_get(url: str) -> tuple[int, bytes | None]:
    """Status and body, or None for a body that did not arrive whole."""
    response = await treq.get(url)
    try:
        return response.code, await response.content()
    except Exception:
        return response.code, None


async def _received_bytes(url: str) -> bytes:
    """What a client received of a blob body, whole or cut short."""

    def get() -> bytes:
        host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", "/" + url.removeprefix("http://").split("/", 1)[1])
            response = connection.getresponse()
            assert response.status == 200
            received = bytearray()
            with contextlib.suppress(http.client.IncompleteRead, ConnectionResetError):
                while chunk := response.read1(1 << 20):  # bounded: the body is finite
                    received += chunk
            return bytes(received)
        finally:
            connection.close()

    return await deferToThread(get)


async def _cached_by_another_process(
    proxied: Proxied, image: Image
) -> tuple[InProcessRegistry, Path]:
    """Every layer of ``image`` cached by a first process, then a second process on the same
    storage root: it hashes the first full read of data it did not fill itself (fills are
    verified), which is what damage at rest is found by."""
    first = await proxied()
    root = storage_root(first)
    for layer in image.layers:
        _response, data = await fetch(f"{first.url}/v2/alpine/blobs/{layer.digest}")
        assert sha256(data) == layer.digest
    await first.stop()
    return await proxied({"storage": {"rootdirectory": str(root)}}), root


def _flip_byte(path: Path, index: int) -> bytes:
    """Damage the file at rest, same size; the damaged bytes."""
    raw = bytearray(path.read_bytes())
    raw[index] ^= 0xFF
    path.write_bytes(bytes(raw))
    return bytes(raw)


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "endless"])
@pytest_twisted.ensureDeferred
async def test_broken_upstream_stream_leaves_no_visible_blob(
    proxied: Proxied, fake: FakeUpstream, damage: str
) -> None:
    """A body cut short (every time at the same byte: the fill's resumes bring nothing,
    tests/proxy/test_fill_resume.py), corrupted, or (chunked, no length) going on past the
    blob's size: nothing is stored, the client never gets a whole wrong body, and an endless
    body is not read past the size the upstream gave (it once filled the disk)."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    registry = await proxied()
    root = storage_root(registry)
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    if damage == "truncated":
        fake.switches.cut_blob_after = LAYER // 2
        fake.switches.ignore_range = True  # each resume cut at the same byte again
    elif damage == "corrupted":
        fake.switches.corrupt_blobs = True
    else:
        fake.switches.endless_blobs = 256 * 1024 * 1024
    _status, body = await _try_get(url)
    # The client never gets a complete body: the connection drops before the last byte.
    assert body is None or sha256(body) != layer.digest
    assert body is None or len(body) < LAYER
    assert not blob_data_path(root, layer.digest).exists()
    await wait_for(lambda: not fill_files(root))
    if damage == "endless":
        # Cut right past the blob: what socket buffers held besides, not the 256 MiB more.
        assert fake.cdn_sent < LAYER + 32 * 1024 * 1024, fake.cdn_sent
    fetched = fake.count("GET", "cdn", ref=layer.digest)
    assert fetched == (4 if damage == "truncated" else 1)  # the first GET and three resumes
    fake.switches.cut_blob_after = None
    fake.switches.corrupt_blobs = False
    fake.switches.endless_blobs = None
    response, data = await fetch(url)
    assert response.code == 200
    assert sha256(data) == layer.digest
    assert blob_data_path(root, layer.digest).exists()
    assert fake.count("GET", "cdn", ref=layer.digest) == fetched + 1


@pytest_twisted.ensureDeferred
async def test_a_blob_whose_upstream_body_is_wrong_twice_is_answered_502_meanwhile(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Two bodies in a row that are not the blob: a client's further retries are answered
    502 with the reason, without fetching the whole bad body each time; a retry after one
    bad body still asks (the upstream may have been repaired)."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    fake.switches.corrupt_blobs = True
    for _attempt in range(2):
        status, body = await _try_get(url)
        assert status == 200 and body is None  # cut before its last byte
        await wait_for(lambda: not fill_files(storage_root(registry)))
    assert fake.count("GET", "cdn", ref=layer.digest) == 2
    response, body = await fetch(url)
    assert response.code == 502, body
    assert response.headers.getRawHeaders("Retry-After") == ["30"]
    [error] = json.loads(body)["errors"]
    assert error["code"] == "UNAVAILABLE"
    assert error["message"] == "upstream answer cannot be trusted: unusable twice in a row"
    assert error["detail"]["digest"] == layer.digest
    assert error["detail"]["upstream"].startswith("body hashes to sha256:")
    assert error["detail"]["upstream"].endswith(f", not {layer.digest}")
    assert fake.count("GET", "cdn", ref=layer.digest) == 2


def record_hashing_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that hash from now on (one entry per hashed piece)."""
    threads: list[str] = []
    real = DigestingHasher.update

    def recording(self: DigestingHasher, data: bytes) -> None:
        threads.append(threading.current_thread().name)
        real(self, data)

    monkeypatch.setattr(DigestingHasher, "update", recording)
    return threads


@pytest_twisted.ensureDeferred
async def test_deleted_blob_data_is_fetched_again(proxied: Proxied, fake: FakeUpstream) -> None:
    image = fake.content.add_image("library/alpine", "latest", [100_000])
    layer = image.layers[0]
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    response, data = await fetch(url)
    assert sha256(data) == layer.digest
    blob_data_path(storage_root(registry), layer.digest).unlink()
    response, data = await fetch(url)
    assert response.code == 200
    assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 2


@pytest_twisted.ensureDeferred
async def test_corrupt_cached_data_heals_on_the_next_pull(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Same size, wrong bytes: the full read is hashed, the data dropped, the next pull
    fetches it again.  A different size is caught before serving."""
    image = fake.content.add_image("library/alpine", "latest", [100_000, 50_000])
    same_size, shorter = image.layers
    registry, root = await _cached_by_another_process(proxied, image)
    path = blob_data_path(root, same_size.digest)
    _flip_byte(path, 0)
    blob_data_path(root, shorter.digest).write_bytes(b"short")
    status, data = await _try_get(f"{registry.url}/v2/alpine/blobs/{same_size.digest}")
    # Found by the read's hash before the last byte went out: the body stops short of it...
    assert status == 200 and data is None
    await wait_for(lambda: not path.exists())  # ...and the data is dropped
    for layer in image.layers:
        response, data = await fetch(f"{registry.url}/v2/alpine/blobs/{layer.digest}")
        assert response.code == 200
        assert sha256(data) == layer.digest
        assert fake.count("GET", "cdn", ref=layer.digest) == 2
    response, body = await fetch(f"{registry.url}/metrics")
    assert metric(body.decode(), "txregistry_proxy_corrupt_blobs_total") == 2


@pytest_twisted.ensureDeferred
async def test_cached_reads_hash_in_the_hash_threads(
    proxied: Proxied, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole read of data this process did not fill is hashed on the service's hash
    threads, never on the reactor thread; damaged data is still found and dropped."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    registry, root = await _cached_by_another_process(proxied, image)
    path = blob_data_path(root, layer.digest)
    raw = _flip_byte(path, -1)
    threads = record_hashing_threads(monkeypatch)
    received = await _received_bytes(f"{registry.url}/v2/alpine/blobs/{layer.digest}")
    # Never the whole damaged file: the body is cut before its last byte (a cut connection
    # may lose some of what was in flight before it, too)...
    assert len(received) < len(raw) and raw.startswith(received)
    await wait_for(lambda: not path.exists())  # ...and the data is dropped
    assert threads != []
    assert threading.current_thread().name not in threads  # the reactor's
    assert {name.rsplit("-", 1)[0] for name in threads} == {"PoolThread-registry-hash"}
    monkeypatch.undo()
    _response, data = await fetch(f"{registry.url}/v2/alpine/blobs/{layer.digest}")
    assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_cold_pulls_share_one_upstream_get(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """20 clients ask for one uncached layer at once (the upstream is slow, so they overlap),
    and one of them leaves early: one upstream GET, every other client gets the blob."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    fake.switches.blob_rate = 6 * 1024 * 1024
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"

    async def leave_early() -> None:
        response = await treq.get(url, unbuffered=True)
        assert response.code == 200
        abort_transport(response.original._transport)  # the first client goes away

    await leave_early()
    pulls = [ensureDeferred(fetch(url)) for _ in range(19)]
    results = await DeferredList(pulls, consumeErrors=True)
    for ok, (response, data) in results:
        assert ok
        assert response.code == 200
        assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 1
    assert blob_data_path(storage_root(registry), layer.digest).exists()


@pytest_twisted.ensureDeferred
async def test_fill_continues_when_its_only_client_leaves(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    fake.switches.blob_rate = 8 * 1024 * 1024
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    response = await treq.get(url, unbuffered=True)
    abort_transport(response.original._transport)
    path = blob_data_path(storage_root(registry), layer.digest)
    await wait_for(path.exists)
    await fake.go_down()
    response, data = await fetch(url)
    assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 1


@pytest_twisted.ensureDeferred
async def test_a_stalled_client_does_not_hold_back_the_fill(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """A client that reads nothing: the fill still completes at upstream speed (its bytes go
    to storage, not into that client's buffers), and the client gets the blob when it reads."""
    image = fake.content.add_image("library/alpine", "latest", [16 * 1024 * 1024])
    layer = image.layers[0]
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    response = await treq.get(url, unbuffered=True)
    assert response.code == 200
    transport = response.original._transport
    transport.pauseProducing()  # the client stops reading from its socket
    path = blob_data_path(storage_root(registry), layer.digest)
    await wait_for(path.exists)
    transport.resumeProducing()
    data = await response.content()
    assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 1


@pytest_twisted.ensureDeferred
async def test_fill_hashes_the_upstream_body_in_the_hash_threads(
    proxied: Proxied, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold fill's digest check runs on the service's hash threads, not on the reactor
    thread (which receives, writes and serves meanwhile); a corrupt body is still refused."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    registry = await proxied()
    threads = record_hashing_threads(monkeypatch)
    response, data = await fetch(f"{registry.url}/v2/alpine/blobs/{layer.digest}")
    assert response.code == 200
    assert sha256(data) == layer.digest
    assert threads != []
    assert threading.current_thread().name not in threads  # the reactor's
    assert {name.rsplit("-", 1)[0] for name in threads} == {"PoolThread-registry-hash"}


@pytest_twisted.ensureDeferred
async def test_a_reader_that_keeps_up_is_served_from_memory(
    proxied: Proxied, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that keeps up with a fill gets each chunk as it arrives, from the fill's
    window in memory: the growing file is not read back (only the last byte, held back until
    the blob is verified and stored, comes from the stored blob)."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    fake.switches.blob_rate = 16 * 1024 * 1024  # a few chunks, each one reactor turn apart
    registry = await proxied()
    opened: list[str] = []
    real = FilesystemDriver.reader

    async def recording(
        self: FilesystemDriver, path: str, offset: int = 0, length: int | None = None
    ) -> IBodyProducer:
        opened.append(path)
        return await real(self, path, offset, length)

    monkeypatch.setattr(FilesystemDriver, "reader", recording)
    response, data = await fetch(f"{registry.url}/v2/alpine/blobs/{layer.digest}")
    assert response.code == 200
    assert sha256(data) == layer.digest
    from_fill = [path for path in opened if "/fills/" in path]
    assert len(from_fill) <= 1, from_fill


def _filled_bytes(root: Path) -> int:
    """Bytes in the fill files under ``root`` (fills in progress)."""
    total = 0
    # A fill ends (and its file goes) at any moment: os.walk skips a vanished directory, and a
    # vanished file counts as empty.
    for directory, _dirs, files in os.walk(root / "docker/registry/v2/txregistry/proxy"):
        if os.path.basename(directory) != "fills":
            continue
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(directory, name)).st_size
    return total


@pytest_twisted.ensureDeferred
async def test_a_paused_client_falls_back_to_storage_and_others_go_on(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Two clients of one fill; one stops reading.  The fill carries on at upstream speed
    meanwhile (no client's back-pressure reaches the upstream read) and the other client gets
    the whole blob; the stalled one resumes while the fill still runs, far behind the fill's
    memory window: it reads the bytes it missed from storage, catches up, and gets exactly the
    blob's bytes."""
    size = 16 * 1024 * 1024
    image = fake.content.add_image("library/alpine", "latest", [size])
    layer = image.layers[0]
    fake.switches.blob_rate = 8 * 1024 * 1024
    registry = await proxied()
    root = storage_root(registry)
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    stalled = await treq.get(url, unbuffered=True)
    assert stalled.code == 200
    transport = stalled.original._transport
    transport.pauseProducing()
    other = ensureDeferred(fetch(url))
    await wait_for(lambda: _filled_bytes(root) >= size // 2)
    assert not blob_data_path(root, layer.digest).exists()  # the fill still runs
    transport.resumeProducing()
    assert sha256(await stalled.content()) == layer.digest
    response, data = await other
    assert response.code == 200
    assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 1


@pytest_twisted.ensureDeferred
async def test_a_request_during_a_failed_fills_clean_up_starts_a_new_fill(
    proxied: Proxied, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill that failed (a corrupt upstream body) is no longer joined while its clean-up
    runs (slow on S3: aborting the upload, deleting the spool): a request arriving then gets
    the blob from a new fill, not a dropped connection."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    layer = image.layers[0]
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    cleaning: Deferred[None] = Deferred()
    held: list[str] = []
    real = FilesystemDriver.delete

    async def slow_delete(self: FilesystemDriver, path: str) -> None:
        if "/fills/" in path and not held:
            held.append(path)
            await cleaning
        await real(self, path)

    monkeypatch.setattr(FilesystemDriver, "delete", slow_delete)
    fake.switches.corrupt_blobs = True
    _status, body = await _try_get(url)
    assert body is None or sha256(body) != layer.digest
    await wait_for(lambda: bool(held))  # the failed fill is cleaning up
    fake.switches.corrupt_blobs = False
    try:
        response, data = await fetch(url)
    finally:
        cleaning.callback(None)
    assert response.code == 200
    assert sha256(data) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 2


@pytest_twisted.ensureDeferred
async def test_a_get_longer_than_its_head_said_is_refused_before_a_byte(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """The upstream's HEAD says the blob's size (clients are answered with it); its GET then
    announces more (and sends it): the fill is refused at once, as an answer that cannot be
    trusted, instead of writing what the GET claims (up to the disk) and handing the first
    client the HEAD's length of wrong bytes as a whole body."""
    image = fake.content.add_image("library/alpine", "latest", [100_000])
    layer = image.layers[0]
    registry = await proxied()
    root = storage_root(registry)
    url = f"{registry.url}/v2/alpine/blobs/{layer.digest}"
    response = await treq.head(url)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-length") == ["100000"]
    fake.switches.padded_blobs = 256 * 1024 * 1024
    try:
        response, body = await fetch(url)
    finally:
        fake.switches.padded_blobs = None
    assert response.code == 502, body[:300]
    assert json.loads(body)["errors"][0]["message"] == "upstream answer cannot be trusted"
    assert fake.cdn_sent < 32 * 1024 * 1024, fake.cdn_sent
    await wait_for(lambda: not fill_files(root))
    assert not blob_data_path(root, layer.digest).exists()
    response, data = await fetch(url)
    assert response.code == 200
    assert sha256(data) == layer.digest
