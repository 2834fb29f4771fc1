"""Fixtures for the proxy tests: a fake upstream per test, clients aimed at it, registries
proxying it (tests/proxy/registries.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor

from registry.proxy.upstream import UpstreamClient
from tests.auth.conftest import logs  # noqa: F401 - fixture
from tests.fakes.content import Image
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import fake, proxied, start_registry  # noqa: F401 - fixtures

reactor: Any = _reactor

IMAGE_NAME = "library/alpine"


@pytest_twisted.async_yield_fixture
async def image(fake: FakeUpstream) -> AsyncIterator[Image]:  # noqa: F811 - fixture
    yield fake.content.add_image(IMAGE_NAME, "latest", [2048, 300_000])


ClientFactory = Callable[..., UpstreamClient]


@pytest_twisted.async_yield_fixture
async def make_client(fake: FakeUpstream) -> AsyncIterator[ClientFactory]:  # noqa: F811
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
