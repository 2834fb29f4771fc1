"""Fixtures: a registry started per test, in the test's reactor, on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest_twisted

from tests.e2e.harness import InProcessRegistry, start_in_process
from tests.storage.s3server import s3_server  # noqa: F401 - shared with the S3 tests

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
