"""
The fleet's eviction lock (``txregistry:evict:<cache>``) in a real Redis: renewed by its holder
while its eviction runs and lapsing within ``[fleet] lease`` of its holder's death, so an
instance killed mid-eviction does not stop the fleet caching; released and renewed only by its
holder; and one that names this instance but that this process does not hold (an earlier
process's, one whose release failed while Redis was away, a timed-out ``SET`` applied late) is
taken over at once.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from registry.config import RedisConfig
from registry.proxy.fleet._redis import FleetRedis
from registry.proxy.fleet.ledger import IN_USE_FOR, Ledger
from tests.e2e.harness import LISTENING, write_config
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import reactor, wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import Fleet, Pull, blob_url, fake, start_pull  # noqa: F401
from tests.storage.s3front import RecordingFront, Seen, s3_front  # noqa: F401 - fixture
from tests.storage.s3server import S3Server

LAYER = 1024 * 1024
LOCK = "txregistry:evict:hub"


def lock_value(server: RedisServer) -> bytes | None:
    reply = server.command("GET", LOCK)
    return None if reply.startswith(b"$-1") else reply.split(b"\r\n")[1]


def deleting(seen: Seen) -> bool:
    """An S3 DeleteObjects: what an eviction sends to delete a blob's files."""
    return seen.method == "POST" and "delete" in seen.query


def not_kept(text: str, digest: str) -> bool:
    return any(digest in line and "without keeping it" in line for line in text.splitlines())


@pytest_twisted.ensureDeferred
async def test_the_lock_is_renewed_by_its_holder_only_and_left_overs_of_ours_are_taken(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A lock held for several times its lifetime is still its holder's (renewed); another
    instance can neither take, release nor reserve room under it; once released it is free.
    A lock naming this instance that this process does not hold (an earlier process's) is
    taken at once; one naming another instance is not."""
    redis = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    redis.startService()
    a = Ledger(redis, "hub", "a", lock_ttl=0.3)
    b = Ledger(redis, "hub", "b", lock_ttl=0.3)
    try:
        assert await a.lock()
        held = lock_value(redis_server)
        assert held is not None and held.startswith(b"a|")
        await deferLater(reactor, 1.0, lambda: None)  # over three lifetimes
        assert lock_value(redis_server) == held
        assert not await b.lock()
        await b.unlock()
        assert lock_value(redis_server) == held
        assert not await b.reserve("sha256:bb", 10, reactor.seconds())
        assert await a.reserve("sha256:aa", 10, reactor.seconds())
        await a.unlock()
        assert lock_value(redis_server) is None
        await deferLater(reactor, 0.5, lambda: None)  # no renewal brings it back
        assert lock_value(redis_server) is None

        redis_server.command("SET", LOCK, "a|an-earlier-process", "PX", "300000")
        assert not await b.lock()
        assert await a.lock()
        assert lock_value(redis_server) == held
        await a.unlock()
        redis_server.command("SET", LOCK, "b|an-earlier-process", "PX", "300000")
        assert not await a.lock()
    finally:
        await a.unlock()
        redis.stopService()


async def _fill_two(running: Fleet, upstream: FakeUpstream, server: RedisServer) -> list[str]:
    """Layers 0 and 1 of a four-layer image cached through instance 0 (the cache is full
    with them), indexed in Redis; the image's four layer digests."""
    image = upstream.content.add_image("library/alpine", "latest", [LAYER] * 4)
    digests = [layer.digest for layer in image.layers]
    for digest in digests[:2]:
        pull = await start_pull(blob_url(running.instances[0], digest))
        assert pull.done is not None
        await pull.done
        assert pull.digest == digest
        indexed = ("HEXISTS", "txregistry:index:hub", f"b|{digest}")
        await wait_until(lambda q=indexed: server.command(*q) == b":1\r\n", within=30)
    return digests


def _front_for_first(running: Fleet, front: RecordingFront) -> None:
    first = running.instances[0]
    first.sections["storage"]["regionendpoint"] = front.endpoint
    write_config(first.config, first.sections)


# The front relays in this test's reactor: the instances start and stop without blocking it
# (`Fleet.start` and `Fleet.stop` wait in this thread).


async def _start(running: Fleet) -> None:
    for instance in running.instances:
        instance.launch()
    try:
        for instance in running.instances:
            await wait_until(lambda i=instance: bool(LISTENING.search(i.log_text())), within=60)
            instance.wait_serving()
    except BaseException:
        await _stop(running)
        raise


async def _stop(running: Fleet) -> None:
    for instance in running.instances:
        instance.send_stop()
    for instance in running.instances:
        process = instance.process
        if process is not None:
            with contextlib.suppress(AssertionError):  # still running: killed below
                await wait_until(lambda p=process: p.poll() is not None, within=15)
        instance.wait_stopped()


async def _two_on_the_front(
    tmp_path: Path,
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
    space_wait: str,
) -> Fleet:
    """Two instances started, room for two layers, instance 0's S3 behind the front."""
    running = Fleet(
        tmp_path,
        s3_server,
        redis_server,
        fake.url,
        size=2,
        max_size=str(2 * LAYER),
        space_wait=space_wait,
    )
    _front_for_first(running, s3_front)
    await _start(running)
    return running


def _evicting(running: Fleet, digest: str) -> Deferred[Pull]:
    """A cold pull through instance 0, whose room needs an eviction: it stops at the
    eviction's first delete (held at the S3 front) with the fleet's lock taken."""
    return Deferred.fromCoroutine(start_pull(blob_url(running.instances[0], digest)))


@pytest_twisted.ensureDeferred
async def test_an_instance_killed_while_evicting_does_not_stop_the_fleet_caching(
    tmp_path: Path,
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Instance 0 evicts (its delete held at S3 for longer than the lock's lifetime: its
    lock stays, renewed), then is killed (kill -9): the lock lapses within ``[fleet] lease``
    and instance 1's cold fill gets room and is kept, instead of waiting ``space_wait`` and
    being served without being kept while a dead instance's lock lasts."""
    running = await _two_on_the_front(tmp_path, s3_server, s3_front, redis_server, fake, "20s")
    try:
        digests = await _fill_two(running, fake, redis_server)
        s3_front.hold(deleting)
        stuck = _evicting(running, digests[2])
        stuck.addErrback(lambda _: None)  # its instance dies under it
        await wait_until(lambda: s3_front.holding > 0, within=30)
        held = lock_value(redis_server)
        assert held is not None
        await deferLater(reactor, 3.0, lambda: None)  # 1.5 lifetimes (lease = 2s)
        assert lock_value(redis_server) == held

        running.instances[0].kill()
        started = reactor.seconds()
        pull = await start_pull(blob_url(running.instances[1], digests[3]))
        assert pull.done is not None
        await pull.done
        assert (pull.code, pull.digest) == (200, digests[3])
        assert reactor.seconds() - started < 15
        assert not not_kept(running.instances[1].log_text(), digests[3])
        indexed = ("HEXISTS", "txregistry:index:hub", f"b|{digests[3]}")
        await wait_until(lambda: redis_server.command(*indexed) == b":1\r\n", within=30)
    finally:
        s3_front.release()
        await _stop(running)


@pytest_twisted.ensureDeferred
async def test_a_lock_left_while_redis_was_away_does_not_stop_its_instance_caching(
    tmp_path: Path,
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Redis hangs (SIGSTOP) while an eviction holds the lock: the eviction fails and so
    does its release, and the lock stays in Redis (the fill is served, not kept, and the
    line says Redis was why).  Once Redis answers again, the
    instance's next fill takes that lock over at once (it names this instance, which does
    not hold it) and is kept, rather than waiting ``space_wait`` for it to lapse (its
    lifetime, ``[fleet] lease``, is long here)."""
    running = Fleet(
        tmp_path,
        s3_server,
        redis_server,
        fake.url,
        size=1,
        fleet_keys=lambda _index: {"lease": "60s"},
        redis_keys={"readtimeout": "1s", "writetimeout": "1s"},
        max_size=str(2 * LAYER),
        space_wait="5s",
    )
    _front_for_first(running, s3_front)
    await _start(running)
    (instance,) = running.instances
    try:
        digests = await _fill_two(running, fake, redis_server)
        s3_front.hold(deleting)
        failing = _evicting(running, digests[2])
        await wait_until(lambda: s3_front.holding > 0, within=30)
        held = lock_value(redis_server)
        assert held is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            s3_front.release()
            away = f"Redis at {redis_server.addr} is not answering"
            await wait_until(lambda: away in instance.log_text(), within=30)
            pull = await failing  # served without Redis's bookkeeping
            assert pull.done is not None
            await pull.done
            assert pull.digest == digests[2]
            why = f"{digests[2]} (1048576 bytes) without keeping it: the cache's shared state"
            assert why in instance.log_text()
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        back = f"Redis at {redis_server.addr} answers again"
        await wait_until(lambda: back in instance.log_text(), within=30)
        assert lock_value(redis_server) == held  # left: its release failed

        pull = await start_pull(blob_url(instance, digests[3]))
        assert pull.done is not None
        await pull.done
        assert (pull.code, pull.digest) == (200, digests[3])
        assert not not_kept(instance.log_text(), digests[3])
    finally:
        s3_front.release()
        await _stop(running)


@pytest_twisted.ensureDeferred
async def test_room_reserved_after_a_slow_eviction_counts_for_the_whole_fill(
    tmp_path: Path,
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Instance 0's eviction for a cold fill takes longer than an in-use mark lives (its
    delete held at S3); the room it then reserves counts for as long as that fill runs (its
    body held upstream), so instance 1's cold fill meanwhile evicts the other cached layer
    instead of finding room that is already promised: what the fleet stores stays within
    ``max_size`` (two layers), and the layer evicted for it is gone from the index."""
    running = await _two_on_the_front(tmp_path, s3_server, s3_front, redis_server, fake, "60s")
    monitor = redis_server.monitor()
    try:
        digests = await _fill_two(running, fake, redis_server)
        body = fake.hold_body(digests[2], LAYER // 2)
        s3_front.hold(deleting)
        slow = _evicting(running, digests[2])
        await wait_until(lambda: s3_front.holding > 0, within=30)
        await deferLater(reactor, IN_USE_FOR + 1.5, lambda: None)
        s3_front.release()
        evicted = "evicted 1 entries"
        await wait_until(lambda: evicted in running.instances[0].log_text(), within=30)
        await deferLater(reactor, 2.0, lambda: None)  # pushes renew it; none drops it
        reserved = redis_server.command("ZCARD", "txregistry:reserved:hub")
        assert reserved == b":1\r\n"
        # As written (before any renewal), it lives IN_USE_FOR from then on: one written to
        # end when the eviction began would be dropped by the first other instance's push.
        member = f'"i0|{digests[2]}|{LAYER}"'
        written = [line for line in monitor.lines() if member in line and "evalsha" in line.lower()]
        assert len(written) == 1, written
        monitor.stop()
        at, until = float(written[0].split()[0][1:]), float(written[0].split()[-1].strip('"'))
        assert until - at > IN_USE_FOR - 1

        pull = await start_pull(blob_url(running.instances[1], digests[3]))
        assert pull.done is not None
        await pull.done
        assert (pull.code, pull.digest) == (200, digests[3])
        assert running.stored_blob_bytes() <= 2 * LAYER
        body.release()
        first = await slow
        assert first.done is not None
        await first.done
        assert (first.code, first.digest) == (200, digests[2])
        assert running.stored_blob_bytes() <= 2 * LAYER
        for evicted in digests[:2]:
            indexed = ("HEXISTS", "txregistry:index:hub", f"b|{evicted}")
            assert redis_server.command(*indexed) == b":0\r\n"
        logs = "".join(instance.log_text() for instance in running.instances)
        assert "without keeping it" not in logs
    finally:
        monitor.stop()
        s3_front.release()
        await _stop(running)
