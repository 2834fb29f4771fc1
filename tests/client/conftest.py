"""Fixtures: registries on loopback (the project's own, in process) and clients for them."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock

from registry.client import RegistryClient
from tests.e2e.conftest import registry, start_registry  # noqa: F401 - shared fixtures
from tests.e2e.tools import Registry2Process
from tests.fakes.tls import make_test_pki
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


@pytest_twisted.async_yield_fixture
async def tls_fake(tmp_path: Path) -> AsyncIterator[FakeUpstream]:
    """The fake Docker Hub over TLS; ``tmp_path / "certs"`` is a ``--src-cert-dir`` that
    trusts it (``txregistry copy`` to the plain-http fake would first probe https, which the
    fake never answers, and wait its whole timeout)."""
    pki = make_test_pki(tmp_path)
    (tmp_path / "certs").mkdir()
    shutil.copy(pki.ca_path, tmp_path / "certs" / "ca.crt")
    upstream = await start_fake_upstream(_reactor, tls=pki.server_options)
    yield upstream
    await upstream.stop()


@pytest.fixture
def registry2(tmp_path: Path) -> Iterator[Registry2Process]:
    """Debian's registry:2 on a free loopback port, over a fresh storage root."""
    root = tmp_path / "registry2-root"
    root.mkdir()
    process = Registry2Process(tmp_path, root)
    process.start()
    yield process
    process.stop()
