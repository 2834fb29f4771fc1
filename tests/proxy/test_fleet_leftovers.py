"""
What an instance killed mid-fill leaves behind is removed: its unfinished S3 upload under
``fills/<instance>/`` by the next instance that starts once it is no longer alive in Redis,
and its local spool folder by the next process started on that host.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest_twisted

from tests.e2e.harness import write_config
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import Fleet, blob_url, fake, start_pull  # noqa: F401 - fixture
from tests.storage.s3server import S3Server, signed_request

LAYER = 8 * 1024 * 1024
HELD_AFTER = 6 * 1024 * 1024  # past the first 5 MiB part: the upload exists on S3


def uploads_under(s3: S3Server, prefix: str) -> list[bytes]:
    """Keys of the bucket's unfinished multipart uploads under ``prefix``."""
    url = f"{s3.endpoint}/{s3.bucket}?uploads&prefix={quote(prefix, safe='')}"
    status, body = signed_request("GET", url)
    assert status == 200, body[:300]
    return re.findall(rb"<Key>([^<]+)</Key>", body)


def spooled(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "fills").glob("*/*") if p.is_file())


@pytest_twisted.ensureDeferred
async def test_leftovers_of_a_killed_instance_are_removed(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    spool = tmp_path / "spool"
    running = Fleet(tmp_path, s3_server, redis_server, fake.url)
    doomed, other = running.instances[0], running.instances[1]
    doomed.sections["storage"]["spooldirectory"] = str(spool)
    write_config(doomed.config, doomed.sections)
    running.start()
    hold = None
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER])
        digest = image.layers[0].digest
        hold = fake.hold_body(digest, HELD_AFTER)
        pull = await start_pull(blob_url(doomed, digest))
        assert pull.done is not None
        pull.done.addErrback(lambda _: None)  # its connection dies with the instance
        fills = f"{running.root.strip('/')}/docker/registry/v2/txregistry/proxy/hub/fills/i0/"
        await wait_until(lambda: bool(uploads_under(s3_server, fills)), within=60)
        await wait_until(lambda: bool(spooled(spool)), within=60)
        doomed.kill()
        assert uploads_under(s3_server, fills) and spooled(spool)
        # As if its liveness had lapsed (ALIVE_FOR after its last push).
        redis_server.command("DEL", "txregistry:alive:hub:i0")
        other.stop()
        other.start()
        await wait_until(lambda: not uploads_under(s3_server, fills), within=60)
        doomed.start()
        await wait_until(lambda: not spooled(spool), within=60)
    finally:
        if hold is not None:
            hold.release()
        running.stop()
