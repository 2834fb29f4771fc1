"""
Fill leases in a real Redis: a lease that names this instance but that this process does not
hold (a ``SET`` that timed out here and that Redis applied late, or a lease left by an earlier
process of the same instance) is nobody's fill: it is taken over at once, not waited out.
"""

from __future__ import annotations

import pytest_twisted

from registry.api.digests import Digest
from registry.config import RedisConfig
from registry.proxy.fleet import FleetRedis
from registry.proxy.fleet.lease import FillLeases, Lease, lease_key
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.util import reactor

DIGEST = Digest.parse("sha256:" + "ab" * 32)


@pytest_twisted.ensureDeferred
async def test_a_lease_of_ours_not_held_here_is_taken_over(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    redis = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    redis.startService()
    mine = FillLeases(redis, reactor, "i0", "http://127.0.0.1:9", 30.0)
    other = FillLeases(redis, reactor, "i1", "http://127.0.0.1:8", 30.0)
    key = lease_key("hub", DIGEST)
    try:
        left_over = Lease("i0", "http://127.0.0.1:9", "library/old").encode()
        redis_server.command("SET", key, left_over.decode(), "PX", "30000")
        # Another instance sees a holder, as it should...
        assert await other.acquire("hub", DIGEST, "library/x") == Lease(
            "i0", "http://127.0.0.1:9", "library/old"
        )
        # ...this one knows it holds no such fill: the lease is its own at once.
        assert await mine.acquire("hub", DIGEST, "library/x") is None
        stored = redis_server.command("GET", key)
        assert b'"through": "library/x"' in stored, stored
        # Held now: another acquire by this process is not mistaken for a left-over.
        assert await mine.acquire("hub", DIGEST, "library/y") == Lease(
            "i0", "http://127.0.0.1:9", "library/x"
        )
        await mine.release("hub", DIGEST)
        assert redis_server.command("GET", key).startswith(b"$-1")
    finally:
        mine.stop()
        other.stop()
        redis.stopService()
