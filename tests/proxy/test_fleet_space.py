"""
``max_size`` for a fleet under parallel fills: room is reserved in Redis, under the fleet's
eviction lock, before a fill stores its first byte, so fills running on several instances at
once cannot take the shared bucket over the bound however late their evictions run; a
reservation lapses within seconds when its instance dies.  Three twistd instances on SeaweedFS
with a real Redis, in front of the fake upstream.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from registry.config import RedisConfig
from registry.proxy.fleet._redis import FleetRedis
from registry.proxy.fleet.index import FleetIndex
from registry.proxy.fleet.ledger import IN_USE_FOR, Ledger
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import reactor, wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import Fleet, Pull, blob_url, fake, start_pull  # noqa: F401
from tests.storage.s3server import S3Server

LAYER = 1024 * 1024
HELD_AT = LAYER - 4096
LOCK = "txregistry:evict:hub"


@pytest_twisted.ensureDeferred
async def test_a_reservation_counts_until_its_entry_does_and_lapses_with_its_instance(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Against a real Redis: a granted reservation is seen by every instance; a committed
    fill's reservation leaves with the push that carries its index entry; one an instance
    stopped renewing (it died) no longer counts once its time is up."""
    redis = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    redis.startService()
    try:
        a, b = Ledger(redis, "hub", "a"), Ledger(redis, "hub", "b")
        now = reactor.seconds()
        assert await a.lock()  # room is reserved under the eviction lock
        await a.reserve("sha256:aa", 1000, now)
        await a.reserve("sha256:bb", 500, now)
        total, reserved, _in_use = await b.state(now)
        assert reserved == {"a|sha256:aa": 1000, "a|sha256:bb": 500}
        assert total == 0
        index = FleetIndex(a)
        await index.add_blob("library/alpine", "sha256:aa", 1000, now)
        a.release_with_entry("sha256:aa")
        await a.push(index, now)
        total, reserved, _in_use = await b.state(now)
        assert reserved == {"a|sha256:bb": 500}
        assert total == 1000
        assert await b.blob_size("sha256:aa") == 1000
        await a.unreserve("sha256:bb")
        await a.reserve("sha256:cc", 700, now)
        # Instance a dies: nothing renews its reservation, which lapses after IN_USE_FOR.
        later = now + IN_USE_FOR + 1
        _total, reserved, _in_use = await b.state(later)
        assert reserved == {}
        await a.unlock()
    finally:
        redis.stopService()


@pytest_twisted.ensureDeferred
async def test_an_index_from_before_the_counters_is_counted_once(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """An index written by an earlier version (no total, a blob's repositories as ``n|``
    fields): the first script counts it, references included, and later ones keep counting."""
    manifest = json.dumps([300, ["sha256:aa"]])
    redis_server.command(
        "HSET", "txregistry:index:hub", "b|sha256:aa", "1000", "n|sha256:aa|library/alpine", "",
        "m|library/alpine|sha256:mm", manifest,
    )  # fmt: skip
    redis_server.command(
        "ZADD", "txregistry:lru:hub", "1", "b|sha256:aa", "2", "m|library/alpine|sha256:mm"
    )
    redis = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    redis.startService()
    try:
        ledger = Ledger(redis, "hub", "a")
        assert await ledger.size() == 1300
        blob, held = await ledger.page(0, 10)
        assert (blob.victim.names, blob.referenced) == (frozenset({"library/alpine"}), True)
        assert (held.victim.name, held.releases) == ("library/alpine", True)
        assert await ledger.remove([held.victim]) == 1000
        (blob,) = await ledger.page(0, 10)
        assert not blob.referenced
        assert await ledger.entries_with("sha256:aa") == 1
    finally:
        redis.stopService()


def begin(url: str) -> Deferred[Pull]:
    """A blob GET in the background: fires with the `Pull` once the response's headers came
    (the fill got room)."""
    return Deferred.fromCoroutine(start_pull(url))


@pytest_twisted.ensureDeferred
async def test_parallel_fills_on_several_instances_stay_under_max_size(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """max_size holds two layers and holds them; four distinct cold layers are pulled at once
    over the three instances.  Two fills get room (evicting the two cached layers), two wait.
    Then an eviction elsewhere holds the fleet's eviction lock while the fills commit: what
    is stored stays within max_size (each fill made its room before it began, not after it
    committed).  Once the lock is free, the two waiting fills get room and complete."""
    limit = 2 * LAYER
    running = Fleet(
        tmp_path,
        s3_server,
        redis_server,
        fake.url,
        max_size=str(limit),
        space_wait="300s",
        timeout="30s",
    )
    running.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER] * 6)
        digests = [layer.digest for layer in image.layers]
        cached, cold = digests[:2], digests[2:]
        for instance, digest in zip(running.instances, cached, strict=False):
            pull = await start_pull(blob_url(instance, digest))
            await pull.done
            assert pull.digest == digest
        for digest in cached:
            await wait_until(
                lambda d=digest: (
                    redis_server.command("HEXISTS", "txregistry:index:hub", f"b|{d}") == b":1\r\n"
                ),
                within=30,
            )
        assert running.stored_blob_bytes() == limit

        holds = {digest: fake.hold_body(digest, HELD_AT) for digest in cold}
        where = [running.instances[n % 3] for n in range(len(cold))]
        starting = [begin(blob_url(i, d)) for i, d in zip(where, cold, strict=True)]
        answered: dict[str, Pull] = {}
        for digest, d in zip(cold, starting, strict=True):
            d.addCallback(lambda pull, digest=digest: answered.setdefault(digest, pull))

        def two_filling() -> bool:
            return len(answered) >= 2 and all(holds[d].arrived == 1 for d in answered)

        await wait_until(two_filling, within=60)
        assert running.stored_blob_bytes() <= limit + LAYER

        # An eviction elsewhere (a slow one) holds the lock while the started fills commit
        # (taken between two turns of the instances, which take it briefly to make room).
        await wait_until(
            lambda: redis_server.command("SET", LOCK, "test", "PX", "120000", "NX") == b"+OK\r\n",
            within=30,
        )
        filling = dict(answered)
        for hold in holds.values():
            hold.release()
        await gatherResults([pull.done for pull in filling.values() if pull.done is not None])
        assert [pull.digest for pull in filling.values()] == list(filling)
        assert running.stored_blob_bytes() <= limit
        redis_server.command("DEL", LOCK)

        pulls: list[Any] = await gatherResults(starting)
        await gatherResults([pull.done for pull in pulls if pull.done is not None])
        assert [pull.digest for pull in pulls] == cold
        assert [pull.code for pull in pulls] == [200] * len(cold)
        assert running.stored_blob_bytes() <= limit
        # The fills that waited were kept (the earlier ones made way for them; which blobs
        # stay depends on which reads had ended when the last fill made its room).
        later = [digest for digest in cold if digest not in filling]
        assert later
        logs = "".join(instance.log_text() for instance in running.instances)
        assert "without keeping it" not in logs
        for digest in later:
            assert f"cached docker.io/library/alpine@{digest}" in logs
    finally:
        redis_server.command("DEL", LOCK)
        running.stop()


def _reserved_now(redis_server: RedisServer) -> bytes:  # noqa: F811
    """The reservations that count now (a ``ZCOUNT`` reply)."""
    return redis_server.command("ZCOUNT", "txregistry:reserved:hub", str(time.time()), "+inf")


@pytest_twisted.ensureDeferred
async def test_a_reservation_that_lapsed_under_a_stall_is_made_again_before_the_blob_is_stored(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """max_size holds one layer.  The instance filling the first layer stalls (stopped) past
    its reservation's renewals: the reservation lapses, and the other instance fills a second
    layer in that room.  Once the first instance goes on, its fill found the reservation
    gone and made room again (evicting the second layer) before storing its blob: the
    bucket never held both.  It used to store it all the same: two layers in the bucket."""
    running = Fleet(
        tmp_path,
        s3_server,
        redis_server,
        fake.url,
        size=2,
        max_size=str(LAYER),
        space_wait="60s",
        timeout="60s",
    )
    running.start()
    stalled = psutil.Process(running.instances[0].pid)
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER] * 2)
        first, second = (layer.digest for layer in image.layers)
        hold = fake.hold_body(first, HELD_AT)
        pulling = begin(blob_url(running.instances[0], first))
        # (The upstream sends before the fill has its room: its reservation comes after.)
        await wait_until(lambda: hold.arrived == 1, within=60)
        await wait_until(lambda: _reserved_now(redis_server) == b":1\r\n", within=30)
        tree = [stalled, *stalled.children(recursive=True)]
        for process in tree:
            process.suspend()
        try:
            await wait_until(lambda: _reserved_now(redis_server) == b":0\r\n", within=30)
            other = await start_pull(blob_url(running.instances[1], second))
            await other.done
            assert (other.code, other.digest) == (200, second)
            await wait_until(
                lambda: (
                    redis_server.command("HEXISTS", "txregistry:index:hub", f"b|{second}")
                    == b":1\r\n"
                ),
                within=30,
            )
            assert running.stored_blob_bytes() == LAYER
        finally:
            for process in tree:
                process.resume()
        hold.release()
        pull = await pulling
        await pull.done
        assert (pull.code, pull.digest) == (200, first)
        cached = f"cached docker.io/library/alpine@{first}"
        await wait_until(lambda: cached in running.instances[0].log_text(), within=60)
        assert running.stored_blob_bytes() == LAYER
        log = running.instances[0].log_text()
        assert f"the room reserved for {first} ({LAYER} bytes) lapsed" in log
        assert "without keeping it" not in log
    finally:
        running.stop()
