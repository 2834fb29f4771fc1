"""Fixtures for the upstream client tests: a fake upstream per test and clients aimed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock

from registry.proxy.upstream import UpstreamClient
from tests.fakes.content import Image
from tests.fakes.upstream import FakeUpstream, start_fake_upstream

reactor: Any = _reactor

IMAGE_NAME = "library/alpine"


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake upstream whose tokens never expire on its side (its clock never moves)."""
    upstream = await start_fake_upstream(reactor, clock=Clock())
    yield upstream
    await upstream.stop()


@pytest_twisted.async_yield_fixture
async def image(fake: FakeUpstream) -> AsyncIterator[Image]:
    yield fake.content.add_image(IMAGE_NAME, "latest", [2048, 300_000])


ClientFactory = Callable[..., UpstreamClient]


@pytest_twisted.async_yield_fixture
async def make_client(fake: FakeUpstream) -> AsyncIterator[ClientFactory]:
    """Build clients for the fake (defaults: its URL, 5 s timeout); all closed at teardown."""
    made: list[UpstreamClient] = []

    def build(**kwargs: Any) -> UpstreamClient:
        kwargs.setdefault("timeout", 5.0)
        url = kwargs.pop("url", fake.url)
        client = UpstreamClient(reactor, url, **kwargs)
        made.append(client)
        return client

    yield build
    for client in made:
        await client.close()
