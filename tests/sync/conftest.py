"""Fixtures: registries on loopback (the project's own, registry:2) and clients for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.conftest import make_client  # noqa: F401 - shared fixture
from tests.e2e.conftest import registry, start_registry  # noqa: F401 - shared fixtures
from tests.e2e.tools import Registry2Process


@pytest.fixture
def registry2(tmp_path: Path) -> Iterator[Registry2Process]:
    """Debian's registry:2 on a free loopback port, over a fresh storage root."""
    root = tmp_path / "registry2-root"
    root.mkdir()
    process = Registry2Process(tmp_path, root)
    process.start()
    yield process
    process.stop()
