"""Fixtures: registries on loopback (the project's own, in process) and clients for them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock

from registry.client import RegistryClient
from tests.e2e.conftest import registry, start_registry  # noqa: F401 - shared fixtures
from tests.fakes.upstream import FakeUpstream, start_fake_upstream

reactor: Any = _reactor

ClientFactory = Callable[..., RegistryClient]


@pytest_twisted.async_yield_fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """``make_client(url, **kwargs)``: clients closed at teardown (5 s timeout, fast backoff)."""
    made: list[RegistryClient] = []

    def build(url: str, **kwargs: Any) -> RegistryClient:
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("backoff", 0.01)
        client = RegistryClient(reactor, url, **kwargs)
        made.append(client)
        return client

    yield build
    for client in made:
        await client.close()


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """The fake Docker Hub (registry, token service and a CDN on another port)."""
    upstream = await start_fake_upstream(reactor, clock=Clock())
    yield upstream
    await upstream.stop()
