"""
A fleet's Redis lost, hung or gone for a while: three twistd instances on SeaweedFS with a real
Redis, in front of the fake upstream.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import Fleet, blob_url, fake, start_pull  # noqa: F401
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
    """Three layers cached; Redis restarts empty: the fleet's total comes back (counted from
    storage by one instance, with one line saying so) without any layer being read again, so
    later fills evict them and the storage stays under max_size.  The same when the whole
    fleet starts on a Redis that is empty while the storage holds the cache."""
    limit = 4 * LAYER + LAYER // 2
    running = Fleet(tmp_path, s3_server, redis_server, fake.url, max_size=str(limit))
    running.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER] * 6)
        digests = [layer.digest for layer in image.layers]
        for n, digest in enumerate(digests[:3]):
            pull = await start_pull(blob_url(running.instances[n % 3], digest))
            await pull.done
            assert pull.digest == digest
        await wait_until(lambda: redis_int(redis_server, "GET", TOTAL) == 3 * LAYER, within=30)

        redis_server.restart()
        assert redis_int(redis_server, "GET", TOTAL) is None
        await wait_until(lambda: redis_int(redis_server, "GET", TOTAL) == 3 * LAYER, within=60)
        assert redis_int(redis_server, "HLEN", "txregistry:index:hub") == 3
        await wait_until(lambda: len(rebuilt_lines(running)) == 1, within=30)
        assert "registered 3 blobs and 0 manifests" in rebuilt_lines(running)[0]

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

    # The whole fleet starts on an empty Redis, the storage holding the cache.
    redis_server.command("FLUSHALL")
    running.start()
    try:
        await wait_until(lambda: redis_int(redis_server, "GET", TOTAL) == stored, within=60)
        assert len(rebuilt_lines(running)) == 2
    finally:
        running.stop()
