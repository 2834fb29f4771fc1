"""
Several txregistry processes, one pull-through cache: real twistd instances on one SeaweedFS
bucket with a real Redis, in front of the fake upstream (in this test's reactor, so a test can
hold an upstream body in the middle and count the upstream's blob GETs).
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from tests.e2e.harness import REPO_ROOT, RegistryProcess, free_port, twistd_command, write_config
from tests.fakes.upstream import FakeUpstream, start_fake_upstream
from tests.proxy.helpers import reactor, wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.storage.s3server import S3Server, signed_request

SECRET = "fleet-test-secret-0123456789"
LAYER = 8 * 1024 * 1024
HELD_AFTER = 1024 * 1024


def fleet_sections(
    s3: S3Server, root: str, redis: RedisServer | None, index: int, **proxy: str
) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {
        "storage": s3.storage_section(root, chunksize="5MiB"),
        "proxy:hub": {"remoteurl": "", "prefix": "docker.io", "default": "true", **proxy},
    }
    if redis is not None:
        sections["redis"] = {"addr": redis.addr}
        sections["fleet"] = {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "secret": SECRET,
            "lease": "2s",
            "instance": f"i{index}",
        }
    return sections


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await start_fake_upstream(reactor)
    yield upstream
    await upstream.stop()


class Fleet:
    """``size`` instances; ``fleet_keys(index)`` adds to (or replaces) an instance's
    ``[fleet]`` keys."""

    def __init__(
        self,
        tmp_path: Path,
        s3: S3Server,
        redis: RedisServer,
        upstream: str,
        *,
        size: int = 3,
        fleet_keys: Callable[[int], dict[str, str]] | None = None,
        redis_keys: dict[str, str] | None = None,
        **proxy: str,
    ) -> None:
        self.root = f"/fleet/{uuid.uuid4().hex}"
        self.s3 = s3
        self.instances: list[RegistryProcess] = []
        for index in range(size):
            workdir = tmp_path / f"instance{index}"
            workdir.mkdir()
            sections = fleet_sections(s3, self.root, redis, index, **proxy)
            sections["proxy:hub"]["remoteurl"] = upstream
            if fleet_keys is not None:
                sections["fleet"].update(fleet_keys(index))
            sections["redis"].update(redis_keys or {})
            self.instances.append(RegistryProcess(workdir, sections))

    def start(self) -> None:
        # Side by side: each child's start-up (imports, storage probe) overlaps the others'.
        try:
            for instance in self.instances:
                instance.launch()
            for instance in self.instances:
                instance.wait_serving()
        except BaseException:
            self.stop()  # the instances that did start must not outlive the test
            raise

    def stop(self) -> None:
        for instance in self.instances:
            instance.send_stop()
        for instance in self.instances:
            instance.wait_stopped()

    def peer_url(self, index: int) -> str:
        listen = self.instances[index].sections["fleet"]["listen"]
        port = re.match(r"(tcp|ssl):(\d+):", listen)
        assert port is not None
        scheme = "https" if port.group(1) == "ssl" else "http"
        return f"{scheme}://127.0.0.1:{port.group(2)}"

    def stored_blob_bytes(self) -> int:
        """What the bucket holds under the blobs folder (ListObjectsV2, one page)."""
        prefix = f"{self.root.strip('/')}/docker/registry/v2/blobs/"
        query = f"list-type=2&max-keys=1000&prefix={quote(prefix, safe='')}"
        url = f"{self.s3.endpoint}/{self.s3.bucket}?{query}"
        status, body = signed_request("GET", url)
        assert status == 200, body[:300]
        return sum(int(size) for size in re.findall(rb"<Size>(\d+)</Size>", body))


@pytest.fixture
def fleet(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,
) -> Iterator[Fleet]:
    running = Fleet(tmp_path, s3_server, redis_server, fake.url)
    running.start()
    yield running
    running.stop()


class Pull:
    """One client's blob GET, read as it arrives."""

    def __init__(self) -> None:
        self.received = 0
        self.hasher = hashlib.sha256()
        self.done: Deferred[Any] | None = None
        self.code = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)
        self.hasher.update(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


async def start_pull(url: str) -> Pull:
    pull = Pull()
    response = await treq.get(url, unbuffered=True)
    pull.code = response.code
    pull.done = treq.collect(response, pull.write)
    return pull


def blob_url(instance: RegistryProcess, digest: str) -> str:
    return f"{instance.url}/v2/library/alpine/blobs/{digest}"


@pytest_twisted.ensureDeferred
async def test_one_upstream_get_and_bytes_as_they_arrive_on_every_instance(
    fleet: Fleet, fake: FakeUpstream
) -> None:
    """Concurrent cold pulls over three instances: one upstream GET for the whole fleet, and
    every client (on the holder, where the fill goes to S3 through a spool, and on the others,
    streamed from the holder) gets bytes while the upstream has sent only the first MiB."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    hold = fake.hold_body(digest, HELD_AFTER)
    pulls = await gatherResults(
        [Deferred.fromCoroutine(start_pull(blob_url(i, digest))) for i in fleet.instances]
    )
    assert [p.code for p in pulls] == [200, 200, 200]
    await wait_until(lambda: all(p.received > 0 for p in pulls), within=60)
    assert not hold.released and hold.arrived == 1  # the upstream is still at its first MiB
    assert all(p.received <= HELD_AFTER for p in pulls)
    hold.release()
    await gatherResults([p.done for p in pulls])
    assert [p.digest for p in pulls] == [digest] * 3
    assert [p.received for p in pulls] == [LAYER] * 3
    assert fake.count("GET", "cdn", ref=digest) == 1
    # Stored once, correct, and served from the cache by every instance.
    for instance in fleet.instances:
        again = await start_pull(blob_url(instance, digest))
        await again.done
        assert again.digest == digest
    assert fake.count("GET", "cdn", ref=digest) == 1


@pytest_twisted.ensureDeferred
async def test_holder_killed_mid_layer_others_complete(
    fleet: Fleet,
    fake: FakeUpstream,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """kill -9 of the instance holding the fill, mid-layer: the clients of the other
    instances complete with the right bytes (one of them takes the fill over once the lease
    expires), and what is stored is the right blob."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    hold = fake.hold_body(digest, HELD_AFTER)
    holder, others = fleet.instances[0], fleet.instances[1:]
    first = await start_pull(blob_url(holder, digest))
    await wait_until(lambda: hold.arrived == 1, within=60)
    assert b"i0" in redis_server.command("GET", f"txregistry:fill:hub:{digest}")
    pulls = [await start_pull(blob_url(i, digest)) for i in others]
    assert [p.code for p in pulls] == [200, 200]
    await wait_until(lambda: all(p.received > 0 for p in pulls), within=60)
    holder.kill()
    assert first.done is not None
    first.done.addErrback(lambda _: None)  # its client's connection died with it
    hold.release()
    await gatherResults([p.done for p in pulls])
    assert [p.digest for p in pulls] == [digest, digest]
    assert [p.received for p in pulls] == [LAYER, LAYER]
    again = await start_pull(blob_url(others[0], digest))
    await again.done
    assert again.digest == digest


@pytest_twisted.ensureDeferred
async def test_a_follower_whose_fill_fails_upstream_says_so_in_one_line(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,
) -> None:
    """The upstream goes away in the middle of a fill that instance 0 holds and instance 1's
    client streams: instance 1 has nowhere to resume from (its own fill fails on the
    upstream too), so its client's body is cut short, and its log says why in one warning
    line, as the holder's does, not with a critical traceback."""
    running = Fleet(tmp_path, s3_server, redis_server, fake.url, size=2)
    running.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER])
        digest = image.layers[0].digest
        hold = fake.hold_body(digest, HELD_AFTER)
        holder, follower = running.instances
        first = await start_pull(blob_url(holder, digest))
        await wait_until(lambda: hold.arrived == 1, within=60)
        second = await start_pull(blob_url(follower, digest))
        await wait_until(lambda: second.received > 0, within=60)
        await fake.go_down()
        for pull in (first, second):
            assert pull.done is not None
            with pytest.raises(Exception):  # noqa: B017 - a connection dropped mid-body
                await pull.done
            assert 0 < pull.received < LAYER
        await wait_until(lambda: "body cut short" in follower.log_text(), within=30)
        cut = [line for line in follower.log_text().splitlines() if "body cut short" in line]
        assert len(cut) == 1 and "#warn] GET /v2/library/alpine/blobs/" in cut[0], cut
        assert "upstream registry unavailable: no answer from" in cut[0], cut
    finally:
        running.stop()


@pytest_twisted.ensureDeferred
async def test_fleet_eviction_keeps_the_total_under_max_size(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,
) -> None:
    """Six 1 MiB layers pulled through three instances (two each: each instance alone stays
    under max_size): the fleet's total in storage ends under max_size."""
    limit = 2_600_000
    running = Fleet(tmp_path, s3_server, redis_server, fake.url, max_size=str(limit))
    running.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [1 << 20] * 6)
        for index, layer in enumerate(image.layers):
            pull = await start_pull(blob_url(running.instances[index % 3], layer.digest))
            await pull.done
            assert pull.digest == layer.digest
        await wait_until(lambda: running.stored_blob_bytes() <= limit, within=60)
        assert running.stored_blob_bytes() > 0
        last = image.layers[-1].digest
        pull = await start_pull(blob_url(running.instances[0], last))
        await pull.done
        assert pull.digest == last
    finally:
        running.stop()


@pytest_twisted.ensureDeferred
async def test_peer_endpoint_is_deny_by_default(fleet: Fleet) -> None:
    peer = fleet.peer_url(0)
    digest = "sha256:" + "0" * 64
    answers = []
    for headers in ({}, {"Authorization": "Bearer wrong-secret-0123456789"}):
        response = await treq.get(f"{peer}/fills/hub/{digest}", headers=headers)
        answers.append((response.code, await response.content()))
    assert answers == [(401, b"unauthorized\n")] * 2
    auth = {"Authorization": f"Bearer {SECRET}"}
    response = await treq.get(f"{peer}/fills/hub/{digest}", headers=auth)
    assert response.code == 404  # no such fill in flight
    await response.content()
    response = await treq.get(f"{peer}/v2/", headers=auth)
    assert response.code == 404
    await response.content()
    for query in ("sha256:nothex?offset=x", f"{digest}?length=-7", f"{digest}?offset=-1"):
        response = await treq.get(f"{peer}/fills/hub/{query}", headers=auth)
        assert response.code == 400, query
        await response.content()


def run_twistd(tmp_path: Path, sections: dict[str, dict[str, str]], *extra: str) -> Any:
    config = write_config(tmp_path / f"registry-{uuid.uuid4().hex[:6]}.cfg", sections)
    return subprocess.run(
        twistd_command("--config", str(config), "--port", "tcp:0:interface=127.0.0.1", *extra),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_redis_down_at_start_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    sections = {
        "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"},
        "redis": {"addr": f"127.0.0.1:{port}", "dialtimeout": "2s"},
    }
    result = run_twistd(tmp_path, sections, "--storage", str(tmp_path / "data"))
    assert result.returncode == 1, result.stdout[-2000:]
    [line] = result.stderr.splitlines()
    assert line.startswith(f"txregistry: cannot reach Redis at 127.0.0.1:{port}: "), line
    assert "Traceback" not in result.stdout
    assert "listening" not in result.stdout


def test_a_redis_that_wants_a_password_is_named_in_one_line(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Redis's own answer (``HELLO must be called with the client already authenticated``)
    names neither the cause nor the key to set: the line does; no password is shown."""
    assert redis_server.command("CONFIG", "SET", "requirepass", "s3cret-pw").startswith(b"+OK")
    sections = {
        "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"},
        "redis": {"addr": redis_server.addr},
    }
    result = run_twistd(tmp_path, sections, "--storage", str(tmp_path / "data"))
    assert result.returncode == 1, result.stdout[-2000:]
    [line] = result.stderr.splitlines()
    assert line == (
        f"txregistry: cannot reach Redis at {redis_server.addr}: Redis requires a password, "
        "and [redis] password is not set"
    ), line
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_second_instance_without_redis_refused_and_restart_after_kill(tmp_path: Path) -> None:
    sections = {"proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"}}
    data = tmp_path / "shared"
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    first = RegistryProcess(first_dir, {**sections, "storage": {"rootdirectory": str(data)}})
    first.start()
    try:
        result = run_twistd(tmp_path, sections, "--storage", str(data))
        assert result.returncode == 1, result.stdout[-2000:]
        [line] = result.stderr.splitlines()
        assert line.startswith("txregistry: another txregistry instance (host "), line
        assert f"pid {first.pid}," in line
        assert str(data) in line
        assert "Traceback" not in result.stdout
    finally:
        first.kill()
    # Killed: its marker is stale at once on this host, so a restart is not refused.
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    again = RegistryProcess(again_dir, {**sections, "storage": {"rootdirectory": str(data)}})
    again.start()
    again.stop()


@pytest_twisted.ensureDeferred
async def test_fill_held_elsewhere_serves_other_repository_only_after_its_confirmation(
    fleet: Fleet, fake: FakeUpstream
) -> None:
    """While instance i0 fills D through library/alpine, a request for D through
    library/other on i1 (whose upstream answers 404 for D there) is a 404, not A's bytes;
    and a Range request for D through library/alpine on i1 gets exactly those bytes, once the
    holder has stored the verified blob (a part of a blob is never taken from a peer: its
    bytes would reach the client unhashed)."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    fake.content.add_image("library/other", "latest", [4096])
    digest = image.layers[0].digest
    hold = fake.hold_body(digest, HELD_AFTER)
    holder, other = fleet.instances[0], fleet.instances[1]
    first = await start_pull(blob_url(holder, digest))
    await wait_until(lambda: hold.arrived == 1, within=60)
    response = await treq.get(f"{other.url}/v2/library/other/blobs/{digest}")
    assert response.code == 404
    assert b"BLOB_UNKNOWN" in await response.content()
    answered: list[int] = []
    asking = treq.get(blob_url(other, digest), headers={"Range": "bytes=100-199"})
    asking.addCallback(lambda r: answered.append(r.code) or r)
    await deferLater(reactor, 1.0, lambda: None)
    assert answered == []  # waits for the blob to be stored
    hold.release()
    assert first.done is not None
    await first.done
    assert first.digest == digest
    ranged = await asking
    assert ranged.code == 206
    body = await ranged.content()
    expected = b"".join(fake.content.blobs[digest].read(100, 200))
    assert body == expected
    assert fake.count("GET", "cdn", ref=digest) == 1
    response = await treq.get(f"{other.url}/v2/library/other/blobs/{digest}")
    assert response.code == 404
    await response.content()


@pytest_twisted.ensureDeferred
async def test_one_instance_on_s3_streams_concurrent_cold_pulls(
    tmp_path: Path,
    s3_server: S3Server,
    fake: FakeUpstream,
) -> None:
    """One instance, S3 storage, no Redis: concurrent cold pulls of a layer get bytes while
    the upstream has sent only its first MiB (the fill is spooled locally), not once the layer
    is committed to S3."""
    sections = fleet_sections(s3_server, f"/single/{uuid.uuid4().hex}", None, 0)
    sections["proxy:hub"]["remoteurl"] = fake.url
    instance = RegistryProcess(tmp_path, sections)
    instance.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER])
        digest = image.layers[0].digest
        hold = fake.hold_body(digest, HELD_AFTER)
        pulls = [await start_pull(blob_url(instance, digest)) for _ in range(3)]
        await wait_until(lambda: all(p.received > 0 for p in pulls), within=60)
        assert not hold.released and hold.arrived == 1
        hold.release()
        await gatherResults([p.done for p in pulls])
        assert [p.digest for p in pulls] == [digest] * 3
        assert fake.count("GET", "cdn", ref=digest) == 1
    finally:
        instance.stop()


async def _broken_get(url: str) -> bytes | None:
    """A blob GET whose body may be cut short: the body, or None when it did not end cleanly."""
    response = await treq.get(url, unbuffered=True)
    assert response.code == 200
    try:
        body: bytes = await response.content()
    except Exception:
        return None
    return body


@pytest_twisted.ensureDeferred
async def test_a_corrupt_upstream_body_is_never_stored_on_s3(
    tmp_path: Path,
    s3_server: S3Server,
    fake: FakeUpstream,
) -> None:
    """One instance on S3 (the fill hashed on the hash threads, spooled locally): a corrupt
    upstream body leaves nothing at the blob's key and its client's response does not end
    cleanly; the next pull stores the blob."""
    root = f"/single/{uuid.uuid4().hex}"
    sections = fleet_sections(s3_server, root, None, 0)
    sections["proxy:hub"]["remoteurl"] = fake.url
    instance = RegistryProcess(tmp_path, sections)
    instance.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER])
        digest = image.layers[0].digest
        hex_ = digest.split(":", 1)[1]
        key = f"{root.strip('/')}/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"
        key_url = f"{s3_server.endpoint}/{s3_server.bucket}/{key}"
        fake.switches.corrupt_blobs = True
        body = await _broken_get(blob_url(instance, digest))
        assert body is None or len(body) < LAYER
        assert signed_request("HEAD", key_url)[0] == 404
        fake.switches.corrupt_blobs = False
        pull = await start_pull(blob_url(instance, digest))
        assert pull.done is not None
        await pull.done
        assert pull.digest == digest
        assert signed_request("HEAD", key_url)[0] == 200
        assert fake.count("GET", "cdn", ref=digest) == 2
    finally:
        instance.stop()


@pytest_twisted.ensureDeferred
async def test_cached_content_is_served_while_redis_hangs(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,
) -> None:
    """Redis stopped (SIGSTOP: connections open, no answers): what any instance cached is
    served from the shared storage by every instance, its Redis lookups given up after
    ``readtimeout`` (no retries inside the client), never a 500; a miss is a 503."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    fleet = Fleet(
        tmp_path, s3_server, redis_server, fake.url, size=2, redis_keys={"readtimeout": "1s"}
    )
    fleet.start()
    try:
        first, second = fleet.instances
        response = await treq.get(f"{first.url}/v2/library/alpine/manifests/latest")
        manifest = await response.content()
        assert response.code == 200
        cached = await start_pull(blob_url(first, digest))
        await cached.done
        assert cached.digest == digest
        indexed = ("HGET", "txregistry:index:hub", f"b|{digest}")  # pushed once a second
        await wait_until(lambda: not redis_server.command(*indexed).startswith(b"$-1"), within=30)
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            pull = await start_pull(blob_url(second, digest))
            await pull.done
            assert (pull.code, pull.digest) == (200, digest)
            by_digest = f"{second.url}/v2/library/alpine/manifests/{image.digest}"
            response = await treq.get(by_digest, timeout=60)
            assert response.code == 200
            assert await response.content() == manifest
            missing = fake.content.add_image("library/busybox", "latest", [1024]).layers[0]
            response = await treq.get(
                f"{second.url}/v2/library/busybox/blobs/{missing.digest}", timeout=60
            )
            assert response.code == 503
            assert b"UNAVAILABLE" in await response.content()
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
    finally:
        fleet.stop()


async def _cache_bytes(url: str) -> int:
    text = (await (await treq.get(f"{url}/metrics")).text()).splitlines()
    prefix = 'txregistry_proxy_cache_bytes{upstream="hub"} '
    return int(float(next(line for line in text if line.startswith(prefix))[len(prefix) :]))


@pytest_twisted.ensureDeferred
async def test_every_instance_reports_the_fleets_cache_size(
    fleet: Fleet, fake: FakeUpstream
) -> None:
    """A layer cached through one instance: every instance's ``txregistry_proxy_cache_bytes``
    (and cache page) reports the fleet's total, not only what it stored itself, and so does
    the summary line an instance logs when it starts."""
    image = fake.content.add_image("library/alpine", "latest", [300_000])
    layer = image.layers[0]
    pull = await start_pull(blob_url(fleet.instances[0], layer.digest))
    await pull.done
    assert pull.digest == layer.digest
    sizes: list[int] = []
    for _attempt in range(100):  # the total is read from Redis every second
        sizes = [await _cache_bytes(instance.url) for instance in fleet.instances]
        if sizes == [layer.size] * len(sizes):
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert sizes == [layer.size] * len(fleet.instances)
    restarted = fleet.instances[1]
    offset = len(restarted.log_text())
    restarted.stop()
    restarted.start()
    await wait_until(lambda: "proxy hub: hits=" in restarted.log_text()[offset:], within=30)
    summary = re.search(r"proxy hub: hits=.*", restarted.log_text()[offset:])
    assert summary is not None and f" cache_bytes={layer.size} " in summary[0], summary


def _cache_page(url: str) -> Deferred[dict[str, str]]:
    async def read() -> dict[str, str]:
        body = (await (await treq.get(f"{url}/ui/cache")).text()).replace("\n", "")
        pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", body)
        return {k: html.unescape(re.sub(r"<[^>]+>", "", v)) for k, v in pairs}

    return Deferred.fromCoroutine(read())


async def _pages_until(fleet: Fleet, wanted: Callable[[list[dict[str, str]]], bool]) -> None:
    pages: list[dict[str, str]] = []
    for _attempt in range(150):  # counters go to Redis every flush_interval, fills every second
        pages = [await _cache_page(instance.url) for instance in fleet.instances]
        if wanted(pages):
            return
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(pages)


@pytest_twisted.ensureDeferred
async def test_every_instance_shows_the_fleets_counters_and_fills(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,
) -> None:
    """The cache page of every instance adds up what all of them counted (hits, misses,
    bytes) and the fills in flight on any of them; a restarted instance goes on from the
    fleet's counters, none of another instance's counts overwritten."""
    fleet = Fleet(tmp_path, s3_server, redis_server, fake.url, size=2, flush_interval="0.2s")
    fleet.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [300_000, 200_000])
        first, second = image.layers
        for index in (0, 1, 0):  # a miss, then two hits (one on each instance)
            pull = await start_pull(blob_url(fleet.instances[index], first.digest))
            await pull.done
            assert pull.digest == first.digest
        await _pages_until(
            fleet,
            lambda pages: all(
                p["Hit ratio"] == "66.7 % (2 of 3)"
                and p["Fetched from upstream"] == "293.0 KiB"
                and p["Served from the cache"] == "585.9 KiB"
                for p in pages
            ),
        )
        # A fill held on instance 0 is one fill in flight on both pages.
        hold = fake.hold_body(second.digest, 100_000)
        held = await start_pull(blob_url(fleet.instances[0], second.digest))
        await _pages_until(fleet, lambda pages: [p["Fills in flight"] for p in pages] == ["1", "1"])
        hold.release()
        await held.done
        assert held.digest == second.digest
        await _pages_until(fleet, lambda pages: [p["Fills in flight"] for p in pages] == ["0", "0"])
        # Instance 1 stops and starts again: both pages still count every request.
        fleet.instances[1].stop()
        fleet.instances[1].start()
        pull = await start_pull(blob_url(fleet.instances[1], second.digest))
        await pull.done
        await _pages_until(
            fleet, lambda pages: all(p["Hit ratio"] == "60.0 % (3 of 5)" for p in pages)
        )
    finally:
        fleet.stop()
