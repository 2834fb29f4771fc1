"""A fleet keeps its tags in the shared storage only (Redis holds the index of what is cached,
no tags): a tag one instance saw deleted upstream is gone for every instance, so none serves
it stale when the upstream goes down.  Two twistd instances on SeaweedFS with a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
import treq

from tests.fakes.upstream import FakeUpstream
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import Fleet, fake  # noqa: F401 - fixture
from tests.storage.s3server import S3Server


async def _get(url: str) -> tuple[int, bytes]:
    response = await treq.get(url, timeout=60)
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_a_tag_deleted_upstream_is_gone_for_the_whole_fleet(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    fake.content.add_image("team/app", "v2", [1000])
    fake.content.add_image("team/app", "v3", [1000], seed="three")
    fleet = Fleet(tmp_path, s3_server, redis_server, fake.url, size=2, timeout="2s")
    fleet.start()
    try:
        first, second = fleet.instances
        for instance in (first, second):
            for tag in ("v2", "v3"):
                code, _ = await _get(f"{instance.url}/v2/team/app/manifests/{tag}")
                assert code == 200
        fake.content.remove_tag("team/app", "v3")
        code, body = await _get(f"{first.url}/v2/team/app/manifests/v3")
        assert code == 404
        assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        await fake.go_down()
        # The instance that saw the 404 answers it still; the other has the tag no more
        # (nothing cached for it: the upstream's failure), neither serves it stale.
        code, body = await _get(f"{first.url}/v2/team/app/manifests/v3")
        assert code == 404
        code, body = await _get(f"{second.url}/v2/team/app/manifests/v3")
        assert code == 503
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        for instance in (first, second):
            code, body = await _get(f"{instance.url}/v2/team/app/tags/list")
            assert (code, json.loads(body)) == (200, {"name": "team/app", "tags": ["v2"]})
            code, _ = await _get(f"{instance.url}/v2/team/app/manifests/v2")
            assert code == 200
    finally:
        fleet.stop()
