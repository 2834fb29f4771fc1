"""Fixtures: registries on loopback (the project's own, registry:2) and clients for them."""

from __future__ import annotations

from tests.client.conftest import make_client, registry2  # noqa: F401 - shared fixtures
from tests.e2e.conftest import registry, start_registry  # noqa: F401 - shared fixtures
