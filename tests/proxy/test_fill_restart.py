"""A fill of a large layer interrupted by a restart of the registry (here kill -9, mid-layer)
resumes from the bytes it had stored: the next fill of the blob asks the upstream for the rest
only (``Range: bytes=N-``), its client gets the whole blob from byte 0 (the first part read
from the kept bytes), and the whole is checked against the digest before anything is stored.
Real ``twistd`` children over loopback, against the fake upstream of the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from registry.proxy.cache import ProxyCache
from registry.proxy.config import ProxyConfig
from registry.storage.blobs import BlobStore
from registry.storage.filesystem import FilesystemDriver
from registry.storage.tags import TagStore
from tests.e2e.client import get, sha256
from tests.e2e.harness import RegistryProcess, write_config
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import proxy_section
from tests.proxy.util import blob_data_path, metric, reactor, wait_for
from tests.storage.s3server import S3Server, signed_request

MiB = 1024 * 1024
LAYER = 24 * MiB
CUT = 9 * MiB + 4321  # where the upstream goes silent, so that the kill lands mid-layer
CACHE = "docker/registry/v2/txregistry/proxy/hub"


def _cdn_ranges(fake: FakeUpstream, digest: str) -> list[str | None]:
    return [r.range for r in fake.log if r.kind == "cdn" and r.method == "GET" and r.ref == digest]


def _fill_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / CACHE / "fills").glob("**/*") if p.is_file())


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def _try_get(url: str) -> None:
    """A client whose body the kill cuts."""
    try:
        response = await treq.get(url)
        await response.content()
    except Exception:
        pass


def _sections(fake: FakeUpstream, **overrides: str) -> dict[str, Any]:
    # (A timeout longer than the test: the fill must not resume by itself before the kill.)
    return {"proxy:hub": proxy_section(fake.url, timeout="60s", **overrides)}


async def _killed_mid_layer(
    tmp_path: Path,
    fake: FakeUpstream,
    storage: dict[str, str] | None = None,
    **overrides: str,
) -> tuple[RegistryProcess, str, Path, int]:
    """A registry killed (-9) while it fills a layer whose upstream body went silent at
    ``CUT``: the process, the layer's digest, the fill file it left (on S3: its spool file)
    and its size."""
    image = fake.content.add_image("library/big", "latest", [LAYER])
    digest = image.layers[0].digest
    fake.switches.stall_blob_after = CUT
    sections = _sections(fake, **overrides)
    if storage is not None:
        sections["storage"] = storage
    process = RegistryProcess(tmp_path, sections)
    process.start()
    url = f"{process.url}/v2/big/blobs/{digest}"
    client = Deferred.fromCoroutine(_try_get(url))

    def files() -> list[Path]:
        if storage is None:
            return _fill_files(tmp_path / "data")
        return sorted(p for p in (tmp_path / "spool/fills").glob("*/sha256-*") if p.is_file())

    # What the process wrote of the body reached its file (up to a buffer's worth).
    await wait_for(lambda: [p for p in files() if p.stat().st_size >= CUT - 64 * 1024], 30)
    [left] = files()
    process.kill()
    await client
    fake.switches.stall_blob_after = None
    size = left.stat().st_size
    assert 0 < size <= CUT
    assert _cdn_ranges(fake, digest) == [None]
    return process, digest, left, size


@pytest_twisted.ensureDeferred
async def test_a_fill_killed_mid_layer_resumes_after_the_restart(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    process, digest, _left, size = await _killed_mid_layer(tmp_path, fake)
    sent_before = fake.cdn_sent
    offset = len(process.log_text())
    process.start()
    try:
        response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
        assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
        assert _cdn_ranges(fake, digest) == [None, f"bytes={size}-"]
        assert fake.cdn_sent - sent_before == LAYER - size
        stored = blob_data_path(tmp_path / "data", digest).read_bytes()
        assert sha256(stored) == digest
        assert not list((tmp_path / "data" / CACHE / "partials").glob("*"))
        assert metric(_metrics(process.url), "txregistry_proxy_fill_restart_resumes_total") == 1
        # A pull afterwards is a hit.
        response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
        assert (response.code, sha256(body)) == (200, digest)
        assert len(_cdn_ranges(fake, digest)) == 2
    finally:
        process.stop()
    log = process.log_text()[offset:]
    said = re.findall(r"proxy hub: resuming the fill of .*", log)
    assert said == [
        f"proxy hub: resuming the fill of {digest} at byte {size} of {LAYER} from the bytes an"
        " interrupted fill kept (the upstream answered the rest)"
    ], said
    assert "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_damaged_kept_bytes_are_discarded_and_nothing_corrupt_is_stored(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Bytes flipped on disk in what the killed fill kept: the resumed fill's digest check
    fails, the client's body ends short, nothing is stored; the next pull fetches the whole
    blob from byte 0 and gets it right."""
    process, digest, left, size = await _killed_mid_layer(tmp_path, fake)
    with open(left, "r+b") as file:
        file.seek(size // 2)
        byte = file.read(1)
        file.seek(size // 2)
        file.write(bytes([byte[0] ^ 0xFF]))
    offset = len(process.log_text())
    process.start()
    data = blob_data_path(tmp_path / "data", digest)
    try:
        url = f"{process.url}/v2/big/blobs/{digest}"
        response = await treq.get(url)
        try:
            body: bytes | None = await response.content()
        except Exception:
            body = None
        assert body is None or len(body) < LAYER  # cut short: never a whole wrong blob
        assert _cdn_ranges(fake, digest) == [None, f"bytes={size}-"]
        assert not data.exists()
        assert not list((tmp_path / "data" / CACHE / "partials").glob("*"))
        response, whole = await get(url)
        assert (response.code, len(whole), sha256(whole)) == (200, LAYER, digest)
        assert _cdn_ranges(fake, digest) == [None, f"bytes={size}-", None]
        assert sha256(data.read_bytes()) == digest
    finally:
        process.stop()
    said = re.findall(r"proxy hub: fill of .* failed: .*", process.log_text()[offset:])
    assert said == [
        f"proxy hub: fill of {digest} failed: the {size} bytes kept from an interrupted fill and"
        f" the rest from the upstream hash to {said[0].split(' hash to ')[1].split(',')[0]}, not"
        f" {digest}: discarded"
    ], said


@pytest_twisted.ensureDeferred
async def test_an_upstream_answering_the_range_with_the_whole_blob(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """An upstream that ignores the ``Range`` (a 200 with the whole blob): the fill drops the
    bytes it has and takes the rest; the client gets the blob."""
    process, digest, _left, size = await _killed_mid_layer(tmp_path, fake)
    fake.switches.ignore_range = True
    offset = len(process.log_text())
    process.start()
    try:
        response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
        assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
        assert _cdn_ranges(fake, digest) == [None, f"bytes={size}-"]
        assert sha256(blob_data_path(tmp_path / "data", digest).read_bytes()) == digest
    finally:
        process.stop()
    assert (
        f"resuming the fill of {digest} at byte {size} of {LAYER} from the bytes an interrupted"
        " fill kept (the upstream answered the whole blob: its first bytes are dropped)"
    ) in process.log_text()[offset:]


_HOLD = """
import fcntl, sys, time
file = open(sys.argv[1], "ab")
fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process that holds ``path``'s lock, as a live fill's writer does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest_twisted.ensureDeferred
async def test_a_fill_file_a_live_process_holds_is_not_taken(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """What looks like a dead fill's file but is still written by a live process (it holds
    the file's lock, as every fill's writer does): the restarted registry neither takes nor
    removes it, and fetches the blob from byte 0."""
    process, digest, left, size = await _killed_mid_layer(tmp_path, fake)
    holder = _hold_lock(left)
    try:
        offset = len(process.log_text())
        process.start()
        try:
            response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
            assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
            assert _cdn_ranges(fake, digest) == [None, None]
            assert left.exists() and left.stat().st_size == size
            assert metric(_metrics(process.url), "txregistry_proxy_fill_restart_resumes_total") == 0
        finally:
            process.stop()
    finally:
        holder.kill()
        holder.wait()
    assert "is still being written by a live process" in process.log_text()[offset:]


@pytest_twisted.ensureDeferred
async def test_kept_bytes_older_than_partial_age_are_removed_at_start(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    process, digest, left, _size = await _killed_mid_layer(tmp_path, fake, partial_age="1h")
    old = left.stat().st_mtime - 7200
    os.utime(left, (old, old))
    process.start()
    try:
        await wait_for(lambda: not left.exists())
        assert not list((tmp_path / "data" / CACHE / "partials").glob("*"))
        response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
        assert (response.code, sha256(body)) == (200, digest)
        assert _cdn_ranges(fake, digest) == [None, None]
    finally:
        process.stop()


@pytest_twisted.ensureDeferred
async def test_kept_bytes_stay_within_the_room_max_size_leaves(
    tmp_path: Path, make_client: Any, thread_pool: Any
) -> None:
    """Kept bytes count against ``max_size`` beside what is cached: the newest are kept while
    they fit the room left, the older ones (and any past ``partial_age``) go; a cache that
    keeps none (``partial_age = 0``) leaves a dead fill's file to the start-up's removal."""
    driver = FilesystemDriver(str(tmp_path), reactor, thread_pool)
    config = ProxyConfig(
        name="hub", remoteurl="http://127.0.0.1:1", default=True, max_size=1000, partial_age=3600
    )
    cache = ProxyCache(
        config=config,
        client=make_client(),
        driver=driver,
        blobs=BlobStore(driver),
        tags=TagStore(driver),
        reactor=reactor,
    )
    await cache.index.add_blob("library/a", "sha256:" + "0" * 64, 400, 0.0)
    partials = tmp_path / CACHE / "partials"
    partials.mkdir(parents=True)
    now = time.time()
    for name, size, age in (("new", 300, 10), ("middle", 250, 20), ("old", 200, 30)):
        path = partials / f"sha256-{name}"
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))
    too_old = partials / "sha256-too-old"
    too_old.write_bytes(b"x")
    os.utime(too_old, (now - 7200, now - 7200))
    await cache.prune_partials()
    # 600 bytes of room beside the 400 cached: the two newest (300 + 250) fit, 200 more not.
    assert sorted(p.name for p in partials.iterdir()) == ["sha256-middle", "sha256-new"]


@pytest_twisted.ensureDeferred
async def test_an_s3_fill_killed_mid_layer_resumes_from_its_spool(
    tmp_path: Path, fake: FakeUpstream, s3_server: S3Server
) -> None:
    """On S3 the fill's multipart upload cannot be read back, but its local spool file can:
    the next process keeps the dead one's spooled bytes, and the next fill uploads them again
    (from the local disk) and asks the upstream only for the rest."""
    root = f"/restart/{uuid.uuid4().hex}"
    storage = s3_server.storage_section(
        root, chunksize="5MiB", spooldirectory=str(tmp_path / "spool")
    )
    process, digest, left, size = await _killed_mid_layer(tmp_path, fake, storage)
    dead = left.parent
    offset = len(process.log_text())
    process.start()
    try:
        response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
        assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
        assert _cdn_ranges(fake, digest) == [None, f"bytes={size}-"]
        assert not dead.exists()
        assert not list((tmp_path / "spool/fills").glob("*/partials/*"))
        hex_ = digest.split(":", 1)[1]
        data_url = (
            f"{s3_server.endpoint}/{s3_server.bucket}{root}/docker/registry/v2/blobs/sha256/"
            f"{hex_[:2]}/{hex_}/data"
        )
        status, stored = await deferToThread(signed_request, "GET", data_url)
        assert (status, sha256(stored)) == (200, digest)
        assert metric(_metrics(process.url), "txregistry_proxy_fill_restart_resumes_total") == 1
    finally:
        process.stop()
    assert (
        f"resuming the fill of {digest} at byte {size} of {LAYER} from the bytes an interrupted"
        " fill kept (the upstream answered the rest)"
    ) in process.log_text()[offset:]


@pytest_twisted.ensureDeferred
async def test_a_fifo_or_a_symbolic_link_left_as_kept_bytes_is_not_followed(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Only regular files are taken as kept bytes: a FIFO named like a fill blocked the
    reactor on its open at start (nothing answered, not even /v2/), and a symbolic link in
    ``partials/`` had the fill append the upstream's bytes to the file it points at, outside
    the storage."""
    first = fake.content.add_image("library/one", "latest", [3 * MiB]).layers[0].digest
    second = fake.content.add_image("library/two", "latest", [3 * MiB]).layers[0].digest
    process = RegistryProcess(tmp_path, _sections(fake))
    process.start()
    process.stop()
    cache = tmp_path / "data" / CACHE
    (cache / "fills").mkdir(parents=True, exist_ok=True)
    os.mkfifo(cache / "fills" / f"sha256-{first[7:]}-{uuid.uuid4().hex}")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the registry's")
    (cache / "partials").mkdir(parents=True, exist_ok=True)
    (cache / "partials" / f"sha256-{second[7:]}").symlink_to(outside)
    process.start()
    try:
        response, _ = await get(f"{process.url}/v2/")
        assert response.code == 200
        for name, digest in (("one", first), ("two", second)):
            response, body = await get(f"{process.url}/v2/{name}/blobs/{digest}")
            assert (response.code, sha256(body)) == (200, digest)
            assert _cdn_ranges(fake, digest) == [None]
        assert outside.read_bytes() == b"not the registry's"
    finally:
        process.stop()
    assert "Traceback" not in process.log_text()


@pytest_twisted.ensureDeferred
async def test_kept_bytes_go_at_start_once_partial_age_is_0(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Turning keeping off (``partial_age = 0``) after it ran removes what it kept (they
    stayed, uncounted in the cache's size)."""
    process, digest, _left, _size = await _killed_mid_layer(tmp_path, fake)
    partials = tmp_path / "data" / CACHE / "partials"
    process.start()  # (kept: moved to partials/ at start)
    await wait_for(lambda: partials.exists() and list(partials.glob("*")))
    process.stop()
    sections = {**process.sections, "proxy:hub": {**process.sections["proxy:hub"]}}
    sections["proxy:hub"]["partial_age"] = "0"
    write_config(process.config, sections)
    process.start()
    try:
        await wait_for(lambda: not partials.exists() or not list(partials.glob("*")))
        response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
        assert (response.code, sha256(body)) == (200, digest)
        assert _cdn_ranges(fake, digest) == [None, None]
    finally:
        process.stop()


@pytest_twisted.ensureDeferred
async def test_an_upstream_refusing_the_rest_gets_the_blob_asked_whole(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """An upstream that answers the Range GET 416 (it serves no ranges of the blob): the kept
    bytes are dropped and the blob fetched whole (kept, it was 503 at every pull for as long
    as they lasted)."""
    process, digest, _left, size = await _killed_mid_layer(tmp_path, fake)
    fake.switches.refuse_ranges = True
    process.start()
    try:
        response, body = await get(f"{process.url}/v2/big/blobs/{digest}")
        assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
        assert _cdn_ranges(fake, digest) == [None, f"bytes={size}-", None]
        assert sha256(blob_data_path(tmp_path / "data", digest).read_bytes()) == digest
        assert not list((tmp_path / "data" / CACHE / "partials").glob("*"))
    finally:
        process.stop()
    assert "Traceback" not in process.log_text()
