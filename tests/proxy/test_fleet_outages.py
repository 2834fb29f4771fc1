"""
A fleet's Redis lost, hung or gone for a while: three twistd instances on SeaweedFS with a real
Redis, in front of the fake upstream.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from tests.e2e.harness import RegistryProcess
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import reactor, wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import Fleet, blob_url, fake, run_twistd, start_pull  # noqa: F401
from tests.storage.s3server import S3Server

LAYER = 1024 * 1024
TOTAL = "txregistry:total:hub"


def redis_int(server: RedisServer, *command: str) -> int | None:
    """An integer reply, or a bulk string holding one; None for a missing key."""
    reply = server.command(*command)
    if reply.startswith(b"$-1"):
        return None
    if reply.startswith(b":"):
        return int(reply[1:].split(b"\r\n")[0])
    return int(reply.split(b"\r\n")[1])


def redis_back_everywhere(running: Fleet) -> bool:
    """Every instance that found Redis away has seen it answer again (until then its
    misses are answered 503, as documented)."""
    for instance in running.instances:
        text = instance.log_text()
        if text.count("is not answering") > text.count("answers again"):
            return False
    return True


def established(server: RedisServer) -> bool:
    """Whether the fleet's index in Redis is whole (the epoch key of a finished
    registration, not of one in progress)."""
    reply = server.command("GET", "txregistry:epoch:hub")
    return not reply.startswith(b"$-1") and b"rebuilding" not in reply


def rebuilt_lines(running: Fleet) -> list[str]:
    return [
        line
        for instance in running.instances
        for line in instance.log_text().splitlines()
        if "Redis had no record of this cache" in line
    ]


@pytest_twisted.ensureDeferred
async def test_redis_restarted_empty_the_cache_is_registered_again_from_storage(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Three layers cached, one of them in two repositories; Redis restarts empty: the
    fleet's total comes back (counted from storage by one instance, with one line saying so,
    which counts the shared layer once) without any layer being read again, so later fills
    evict them and the storage stays under max_size.  The same when the whole fleet starts
    on a Redis that is empty while the storage holds the cache."""
    limit = 4 * LAYER + LAYER // 2
    running = Fleet(tmp_path, s3_server, redis_server, fake.url, max_size=str(limit))
    running.start()
    try:
        # The fleet's first registration (Redis was empty at start too) has found nothing:
        # else it could find the layers pulled below, and say so in a line of its own.
        await wait_until(lambda: established(redis_server), within=30)
        image = fake.content.add_image("library/alpine", "latest", [LAYER] * 6)
        digests = [layer.digest for layer in image.layers]
        fake.content.add_blob("library/other", fake.content.blobs[digests[0]])
        for n, digest in enumerate(digests[:3]):
            pull = await start_pull(blob_url(running.instances[n % 3], digest))
            await pull.done
            assert pull.digest == digest
        shared = f"{running.instances[1].url}/v2/library/other/blobs/{digests[0]}"
        pull = await start_pull(shared)
        await pull.done
        assert (pull.code, pull.digest) == (200, digests[0])
        names = ("SCARD", f"txregistry:names:hub:{digests[0]}")
        await wait_until(lambda: redis_int(redis_server, *names) == 2, within=30)
        await wait_until(lambda: redis_int(redis_server, "GET", TOTAL) == 3 * LAYER, within=30)

        redis_server.restart()  # empty: no persistence (an instance may write at once)
        await wait_until(lambda: redis_int(redis_server, "GET", TOTAL) == 3 * LAYER, within=60)
        assert redis_int(redis_server, "HLEN", "txregistry:index:hub") == 3
        await wait_until(lambda: len(rebuilt_lines(running)) == 1, within=30)
        registered = f"registered 3 blobs and 0 manifests ({3 * LAYER} bytes)"
        assert registered in rebuilt_lines(running)[0]
        # Every instance has reached the new Redis (a connection to the old one fails once,
        # and Redis counts as away until the next check), and none counts it away.
        for n in range(3):
            alive = ("EXISTS", f"txregistry:alive:hub:i{n}")
            await wait_until(lambda q=alive: redis_int(redis_server, *q) == 1, within=30)
        await wait_until(lambda: redis_back_everywhere(running), within=60)

        # Cold layers are counted: the new fills evict them, and the bucket fits max_size.
        for n, digest in enumerate(digests[3:]):
            pull = await start_pull(blob_url(running.instances[n % 3], digest))
            await pull.done
            assert (pull.code, pull.digest) == (200, digest)
        await wait_until(lambda: running.stored_blob_bytes() <= limit, within=60)
        stored = running.stored_blob_bytes()
        await wait_until(lambda: redis_int(redis_server, "GET", TOTAL) == stored, within=30)
    finally:
        running.stop()

    # The whole fleet starts on an empty Redis, the storage holding the cache.  (Under load
    # two instances have been seen rebuilding at once: entries are keyed by digest, so the
    # total stays right; only the count of lines can differ.)
    before = len(rebuilt_lines(running))
    redis_server.command("FLUSHALL")
    running.start()
    try:
        await wait_until(lambda: redis_int(redis_server, "GET", TOTAL) == stored, within=60)
        await wait_until(lambda: len(rebuilt_lines(running)) > before, within=30)
    finally:
        running.stop()


async def _pull(url: str) -> tuple[int, str]:
    pull = await start_pull(url)
    assert pull.done is not None
    await pull.done
    return pull.code, pull.digest


@pytest_twisted.ensureDeferred
async def test_a_hung_redis_fails_fast_and_is_logged_once_each_way(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Redis hung (SIGSTOP) under 40 concurrent GETs of a cached layer, two connections in
    the pool: once a command has timed out, the others do not queue behind it for the pool
    (each for its own read timeout): every GET is answered from the cache while Redis is
    still stopped.  The log says once that Redis is away and once that it is back; the
    periodic pushes and flushes add nothing (no traceback, no line a second)."""
    running = Fleet(
        tmp_path,
        s3_server,
        redis_server,
        fake.url,
        size=1,
        redis_keys={"readtimeout": "2s", "writetimeout": "2s", "pool_maxactive": "2"},
        flush_interval="1s",
    )
    running.start()
    (instance,) = running.instances
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER])
        digest = image.layers[0].digest
        assert await _pull(blob_url(instance, digest)) == (200, digest)
        indexed = ("HEXISTS", "txregistry:index:hub", f"b|{digest}")
        await wait_until(lambda: redis_int(redis_server, *indexed) == 1, within=30)

        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            pulls = gatherResults(
                [Deferred.fromCoroutine(_pull(blob_url(instance, digest))) for _ in range(40)]
            )
            pulls.addTimeout(30, reactor)  # generous: the bound, not a measure
            answers = await pulls
            assert answers == [(200, digest)] * 40
            away = "Redis at " + redis_server.addr + " is not answering"
            await wait_until(
                lambda: away in instance.log_text(),
                within=30,
                context=lambda: instance.log_text()[-4000:],
            )
            await deferLater(reactor, 3, lambda: None)  # pushes and flushes meanwhile
            assert redis_server.process.poll() is None  # still there, still stopped
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        back = f"Redis at {redis_server.addr} answers again"
        await wait_until(
            lambda: back in instance.log_text(),
            within=30,
            context=lambda: instance.log_text()[-4000:],
        )
        assert await _pull(blob_url(instance, digest)) == (200, digest)
    finally:
        running.stop()
    log = instance.log_text()
    assert log.count(away) == 1, log[-3000:]
    assert log.count(back) == 1, log[-3000:]
    for noise in ("sending the cache index to Redis failed", "flush failed", "Traceback"):
        assert noise not in log, log[-3000:]


def test_fleet_and_solo_instances_never_share_a_cache_storage(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """An instance without [redis] on a fleet's storage is refused with one line naming the
    fleet's instance; a fleet instance on a solo instance's storage likewise."""
    data = tmp_path / "shared"
    hub = {"proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"}}
    storage = {"storage": {"rootdirectory": str(data)}}
    fleet_sections = {
        **hub,
        **storage,
        "redis": {"addr": redis_server.addr},
        "fleet": {"instance": "cache-7"},
    }
    workdir = tmp_path / "fleet"
    workdir.mkdir()
    member = RegistryProcess(workdir, fleet_sections)
    member.start()
    try:
        result = run_twistd(tmp_path, hub, "--storage", str(data))
        assert result.returncode == 1, result.stdout[-2000:]
        [line] = result.stderr.splitlines()
        assert line.startswith("txregistry: txregistry fleet instance cache-7 (host "), line
        assert str(data) in line
        assert "Traceback" not in result.stdout
    finally:
        member.stop()

    workdir = tmp_path / "solo"
    workdir.mkdir()
    solo = RegistryProcess(workdir, {**hub, **storage})
    solo.start()
    try:
        result = run_twistd(tmp_path, fleet_sections)
        assert result.returncode == 1, result.stdout[-2000:]
        [line] = result.stderr.splitlines()
        assert line.startswith("txregistry: a txregistry instance without [redis] (host "), line
        assert f"pid {solo.pid}," in line
        assert "Traceback" not in result.stdout
    finally:
        solo.stop()


def test_a_fleet_instance_leaving_does_not_let_a_solo_instance_in(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Two fleet instances, one stops cleanly: an instance without [redis] is still refused,
    naming the one that serves (a clean stop took the fleet's whole marker away)."""
    data = tmp_path / "shared"
    hub = {"proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"}}
    members = []
    for name in ("cache-1", "cache-2"):
        workdir = tmp_path / name
        workdir.mkdir()
        members.append(
            RegistryProcess(
                workdir,
                {
                    **hub,
                    "storage": {"rootdirectory": str(data)},
                    "redis": {"addr": redis_server.addr},
                    "fleet": {"instance": name},
                },
            )
        )
    for member in members:
        member.start()
    try:
        # The one started last, which wrote the marker last.
        members[1].stop()
        result = run_twistd(tmp_path, hub, "--storage", str(data))
        assert result.returncode == 1, result.stdout[-2000:]
        [line] = result.stderr.splitlines()
        assert line.startswith("txregistry: txregistry fleet instance cache-1 (host "), line
        assert f"pid {members[0].pid}," in line
    finally:
        members[0].stop()
    # The whole fleet gone (cleanly): the storage is free for a solo instance at once.
    workdir = tmp_path / "solo"
    workdir.mkdir()
    solo = RegistryProcess(workdir, {**hub, "storage": {"rootdirectory": str(data)}})
    solo.start()
    solo.stop()


def test_an_instance_on_another_redis_db_is_refused_and_an_emptied_redis_is_not(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """
    A fleet instance whose ``[redis]`` names another database (or another Redis) than the
    live instances on its storage would be a second fleet on one cache: a total of its own
    under ``max_size``, and the others' fills in flight removed at its start, their
    instances unknown to its Redis and so taken for dead.  It is refused with one line.  A
    Redis that lost its keys (restarted empty) knows the live instances again within a
    push, and a new instance then starts.
    """
    data = tmp_path / "shared"
    hub = {"proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"}}

    def sections(name: str, db: str) -> dict[str, dict[str, str]]:
        return {
            **hub,
            "storage": {"rootdirectory": str(data)},
            "redis": {"addr": redis_server.addr, "db": db},
            "fleet": {"instance": name},
        }

    workdir = tmp_path / "cache-1"
    workdir.mkdir()
    member = RegistryProcess(workdir, sections("cache-1", "0"))
    member.start()
    try:
        result = run_twistd(tmp_path, sections("cache-2", "1"))
        assert result.returncode == 1, result.stdout[-2000:]
        [line] = result.stderr.splitlines()
        assert line == (
            f"txregistry: fleet instance cache-1 serves the pull-through cache in {data} but "
            f"is not in Redis at {redis_server.addr} db 1: every instance of a fleet needs "
            "the same [redis] addr and db (an instance that died counts as live for 30s after "
            "its last heartbeat: if it is gone, start again then); docs/proxy.md"
        ), line
        assert "removed the unfinished fills" not in result.stdout
        assert "removed the unfinished fills" not in member.log_text()

        redis_server.command("FLUSHALL")
        workdir = tmp_path / "cache-3"
        workdir.mkdir()
        other = RegistryProcess(workdir, sections("cache-3", "0"))
        other.start()
        other.stop()
        assert "Traceback" not in other.log_text()
    finally:
        member.stop()


def test_a_second_process_of_one_instance_name_is_refused(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Two processes of one ``[fleet] instance`` would take each other's fill leases and
    in-use marks, and the second removed the first's fills in flight at its start as
    leftovers of its own name: refused with one line, the first untouched."""
    data = tmp_path / "shared"
    sections = {
        "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"},
        "storage": {"rootdirectory": str(data)},
        "redis": {"addr": redis_server.addr},
        "fleet": {"instance": "cache-1"},
    }
    workdir = tmp_path / "cache-1"
    workdir.mkdir()
    member = RegistryProcess(workdir, sections)
    member.start()
    try:
        result = run_twistd(tmp_path, sections)
        assert result.returncode == 1, result.stdout[-2000:]
        [line] = result.stderr.splitlines()
        prefix = f"txregistry: fleet instance cache-1 already serves the pull-through cache in {data} (host "
        suffix = (
            "give each instance its own [fleet] instance; if that process is gone, start "
            "again after 30s"
        )
        assert line.startswith(prefix) and line.endswith(suffix), line
        assert f"pid {member.process.pid}," in line  # type: ignore[union-attr]
        assert "removed the unfinished fills" not in result.stdout
    finally:
        member.stop()


def test_an_entry_of_an_earlier_process_with_this_pid_is_not_alive() -> None:
    """A restarted container's registry is pid 1 again, as its killed predecessor was: the
    start time the entry records tells the two apart, so the restart is not refused (nor
    made to wait) as if its predecessor still served."""
    import socket

    from registry.proxy.fleet.marker import InstanceMarker
    from registry.server.exit import StartupError
    from registry.storage.memory import MemoryDriver

    marker = InstanceMarker(MemoryDriver(), "here", fleet="cache-1")
    entry = {
        "id": "earlier",
        "host": socket.gethostname(),
        "pid": marker.pid,
        "started": marker.started,
        "heartbeat": time.time(),
        "instance": "cache-1",
    }
    assert marker.started is not None
    assert marker._alive(entry)
    assert not marker._alive({**entry, "started": marker.started - 1})
    # A process of another pid namespace (another container sharing the host name, both pid
    # 1): its pid and start time mean nothing here, so its heartbeat decides, and a live one
    # of this instance's name is refused.
    twin = {**entry, "started": marker.started - 1, "pidns": "pid:[1]"}
    assert marker._alive(twin)
    with pytest.raises(StartupError, match="already serves the pull-through cache"):
        marker._refuse_namesake({"instances": {"twin": twin}})
