"""
No instance of a fleet deletes a cached blob under a read another instance has begun: the
read holds the blob in Redis before it opens it, an eviction claims a blob before deleting it,
and exactly one of the two wins (`registry.proxy.fleet.ledger`).  In-use marks otherwise reach
Redis only with the next batch, up to a second later.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from urllib.parse import quote

import pytest_twisted
from twisted.internet.threads import deferToThread

from registry.config import RedisConfig
from registry.proxy.fleet._redis import FleetRedis
from registry.proxy.fleet.ledger import Ledger
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import reactor, wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import Fleet, blob_url, fake, start_pull  # noqa: F401 - fixture
from tests.storage.s3server import S3Server, signed_request

LAYER = 16 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_hold_and_claim_exclude_each_other(redis_server: RedisServer) -> None:  # noqa: F811
    """Against a real Redis: a held blob cannot be claimed, a claimed one cannot be held
    until the claim ends, and a lapsed mark does not keep a blob."""
    redis = FleetRedis(RedisConfig(addr=redis_server.addr), reactor)
    redis.startService()
    try:
        reader = Ledger(redis, "hub", "a")
        evictor = Ledger(redis, "hub", "b")
        now = reactor.seconds()
        assert await reader.hold("sha256:aa", now)
        assert not await evictor.claim("sha256:aa", now)
        assert await evictor.claim("sha256:bb", now)
        assert not await reader.hold("sha256:bb", now)
        await evictor.unclaim("sha256:bb")
        assert await reader.hold("sha256:bb", now)
        # A mark that has lapsed (its instance died) no longer keeps the blob.
        assert await evictor.claim("sha256:aa", now + 3600)
    finally:
        redis.stopService()


def blob_stored(s3: S3Server, root: str, digest: str) -> bool:
    hexdigest = digest.partition(":")[2]
    prefix = f"{root.strip('/')}/docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"
    query = f"list-type=2&max-keys=10&prefix={quote(prefix, safe='')}"
    status, body = signed_request("GET", f"{s3.endpoint}/{s3.bucket}?{query}")
    assert status == 200, body[:300]
    return re.search(rb"<Key>", body) is not None


class HeldRead:
    """A blob GET whose client reads the first bytes, then stops reading (a small receive
    buffer), so the server's read of the cached blob stays open."""

    def __init__(self, url: str) -> None:
        match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
        assert match is not None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.sock.settimeout(30)
        self.sock.connect((match.group(1), int(match.group(2))))
        request = (
            f"GET {match.group(3)} HTTP/1.1\r\nHost: {match.group(1)}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, self.buffer
            self.buffer += chunk

    @property
    def status(self) -> int:
        return int(self.buffer.split(b" ", 2)[1])

    def finish(self) -> tuple[int, str]:
        """Read the rest (in a thread): the body's length and digest."""
        hasher = hashlib.sha256()
        body = self.buffer.partition(b"\r\n\r\n")[2]
        hasher.update(body)
        received = len(body)
        for _ in range(LAYER):  # bounded: at least one byte per round until the end
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            hasher.update(chunk)
            received += len(chunk)
        self.sock.close()
        return received, "sha256:" + hasher.hexdigest()


@pytest_twisted.ensureDeferred
async def test_eviction_elsewhere_keeps_a_blob_a_read_just_opened(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Layer X cached by instance A, Y by B, max_size room for two and a half.  A read of X
    begins on A, and within that second B's fill of Z makes room for Z, evicting: X is kept
    (Y goes), and A's client gets every byte of X."""
    limit = LAYER * 5 // 2
    running = Fleet(tmp_path, s3_server, redis_server, fake.url, max_size=str(limit))
    running.start()
    try:
        a, b = running.instances[0], running.instances[1]
        image = fake.content.add_image("library/alpine", "latest", [LAYER] * 3)
        x, y, z = (layer.digest for layer in image.layers)
        for instance, digest in ((a, x), (b, y)):
            pull = await start_pull(blob_url(instance, digest))
            await pull.done
            assert pull.digest == digest
        for digest in (x, y):
            await wait_until(
                lambda d=digest: (
                    redis_server.command("HEXISTS", "txregistry:index:hub", f"b|{d}") == b":1\r\n"
                ),
                within=30,
            )
        read = HeldRead(blob_url(a, x))
        assert read.status == 200
        # B evicts for Z before Z's first byte is stored (registry.proxy.space).
        fill = await start_pull(blob_url(b, z))
        assert fill.done is not None
        await fill.done
        assert fill.digest == z
        await wait_until(lambda: running.stored_blob_bytes() <= limit, within=60)
        assert blob_stored(s3_server, running.root, x)
        assert not blob_stored(s3_server, running.root, y)
        received, digest = await deferToThread(read.finish)
        assert (received, digest) == (LAYER, x)
    finally:
        running.stop()
