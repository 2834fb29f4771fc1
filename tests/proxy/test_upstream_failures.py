"""An upstream that refuses, fails, stalls or rate-limits gives the matching UpstreamError,
within the timeout."""

from __future__ import annotations

import pytest
import pytest_twisted

from registry.api.digests import Digest
from registry.proxy.errors import UpstreamRateLimited, UpstreamUnavailable
from tests.fakes.content import Image
from tests.fakes.upstream import FakeUpstream
from tests.proxy.conftest import ClientFactory


@pytest_twisted.ensureDeferred
async def test_rate_limited(fake: FakeUpstream, image: Image, make_client: ClientFactory) -> None:
    fake.switches.ratelimit_remaining = 1
    client = make_client()
    await client.manifest("library/alpine", "latest")
    assert client.rate_limit is not None and client.rate_limit.remaining == 0
    with pytest.raises(UpstreamRateLimited) as info:
        await client.manifest("library/alpine", "latest")
    assert info.value.status == 429
    assert info.value.retry_after == 60.0
    assert "TOOMANYREQUESTS" in info.value.reason
    # HEAD still works when GETs are exhausted (Docker Hub does not count HEADs)
    head = await client.manifest("library/alpine", "latest", "HEAD")
    assert head.digest == Digest.parse(image.digest)


@pytest_twisted.ensureDeferred
async def test_server_errors(fake: FakeUpstream, image: Image, make_client: ClientFactory) -> None:
    client = make_client()
    await client.manifest("library/alpine", "latest", "HEAD")
    fake.switches.fail_status = 503
    with pytest.raises(UpstreamUnavailable) as info:
        await client.manifest("library/alpine", "latest")
    assert info.value.status == 503
    with pytest.raises(UpstreamUnavailable):
        await client.blob("library/alpine", image.layers[0].digest)
    fresh = make_client()  # fails already at the /v2/ ping
    with pytest.raises(UpstreamUnavailable):
        await fresh.manifest("library/alpine", "latest")
    assert client.errors >= 2
    fake.switches.fail_status = None
    assert (await fresh.manifest("library/alpine", "latest")).body == image.manifest


@pytest_twisted.ensureDeferred
async def test_refused_then_back(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    client = make_client()
    await client.manifest("library/alpine", "latest", "HEAD")
    await fake.go_down()
    with pytest.raises(UpstreamUnavailable) as info:
        await client.manifest("library/alpine", "latest")
    assert info.value.status is None
    await fake.come_up()
    assert (await client.manifest("library/alpine", "latest")).body == image.manifest


@pytest_twisted.ensureDeferred
async def test_stall_times_out(
    fake: FakeUpstream, image: Image, make_client: ClientFactory
) -> None:
    fake.switches.stall = True
    client = make_client(timeout=0.3)
    # The message names our timeout: the stall was cut by it, not by something else.
    with pytest.raises(UpstreamUnavailable, match=r"within 0\.3s"):
        await client.manifest("library/alpine", "latest")
    fake.switches.stall = False
    fake.drop_connections()
    assert (await client.manifest("library/alpine", "latest")).body == image.manifest
