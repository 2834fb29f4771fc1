"""Fixtures: a registry started per test, in the test's reactor, on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.auth import pki
from tests.e2e.harness import InProcessRegistry, start_in_process

Starter = Callable[..., Awaitable[InProcessRegistry]]


@pytest_twisted.async_yield_fixture
async def start_registry(tmp_path: Path) -> AsyncIterator[Starter]:
    """Call with config sections (``{"storage": {"delete_enabled": "true"}}``) to start one."""
    running: list[InProcessRegistry] = []

    async def start(
        sections: Mapping[str, Mapping[str, str]] | None = None,
        listen: str = "tcp:{port}:interface=127.0.0.1",
    ) -> InProcessRegistry:
        folder = tmp_path / f"registry{len(running)}"
        folder.mkdir()
        registry = await start_in_process(folder, sections, listen)
        running.append(registry)
        return registry

    yield start
    for registry in running:
        await registry.stop()


@pytest_twisted.async_yield_fixture
async def registry(start_registry: Starter) -> AsyncIterator[InProcessRegistry]:
    yield await start_registry()


@pytest.fixture
def tls_listen(tmp_path: Path) -> str:
    """An ``ssl:`` listen description (``{port}`` left in) with a fresh key and certificate;
    the CA is ``tmp_path / "tls-ca.pem"``."""
    ca_key, key = pki.new_key("ec"), pki.new_key("ec")
    authority = pki.certificate("test CA", ca_key, ca=True)
    server = pki.certificate("127.0.0.1", key, (ca_key, authority), server=True)
    pki.write(tmp_path / "tls-ca.pem", pki.pem_cert(authority))
    cert_path = pki.write(tmp_path / "server.pem", pki.pem_cert(server))
    key_path = pki.write(tmp_path / "server.key", pki.pem_key(key))
    return f"ssl:{{port}}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"


@pytest.fixture
def access_events() -> Iterator[list[dict[str, Any]]]:
    """The access-log events of the in-process registries, as they are logged."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("access"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)
