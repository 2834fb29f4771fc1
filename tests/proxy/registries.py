"""Fixtures for the pull-through cache: a fake upstream and registries proxying it
(imported into tests/proxy/conftest.py, and by other packages' conftests that need them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock

from tests.e2e.conftest import start_registry  # noqa: F401 - fixture
from tests.e2e.harness import InProcessRegistry
from tests.fakes.upstream import FakeUpstream, start_fake_upstream

reactor: Any = _reactor

Proxied = Callable[..., Awaitable[InProcessRegistry]]


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake upstream whose tokens never expire on its side (its clock never moves)."""
    upstream = await start_fake_upstream(reactor, clock=Clock())
    yield upstream
    await upstream.stop()


def proxy_section(fake_url: str, **overrides: str) -> dict[str, str]:
    section = {
        "remoteurl": fake_url,
        "prefix": "docker.io",
        "default": "true",
        "library": "true",
        "timeout": "2s",
    }
    section.update(overrides)
    return section


@pytest_twisted.async_yield_fixture
async def proxied(start_registry: Any, fake: FakeUpstream) -> AsyncIterator[Proxied]:  # noqa: F811
    """Start a registry whose ``[proxy:hub]`` is the fake (keyword arguments override keys)."""

    async def start(
        extra: Mapping[str, Mapping[str, str]] | None = None, **overrides: str
    ) -> InProcessRegistry:
        sections: dict[str, Mapping[str, str]] = {"proxy:hub": proxy_section(fake.url, **overrides)}
        sections.update(extra or {})
        registry: InProcessRegistry = await start_registry(sections)
        return registry

    yield start
