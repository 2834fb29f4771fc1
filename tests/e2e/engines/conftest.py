"""
Session-wide container engines (one dockerd, one containerd, one podman setup), each in its own
temporary folder, torn down at the end of the session; the registries they talk to are started
per test by the e2e and cache fixtures.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_twisted
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import provider

from tests.e2e.conftest import Starter
from tests.e2e.engines.daemons import Containerd, Dockerd, Podman, require_root
from tests.e2e.harness import InProcessRegistry
from tests.proxy.registries import fake, proxied  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def server_log_clean() -> Iterator[None]:
    """Whatever an engine sends, the registry logs no traceback and answers no 5xx."""
    bad: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        status = event.get("status") if event.get("access") else None
        if (
            "log_failure" in event
            or event.get("isError")
            or (isinstance(status, int) and status >= 500)
        ):
            failure = event.get("log_failure")
            bad.append(formatEvent(event) + (f"\n{failure.getTraceback()}" if failure else ""))

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not bad, "errors in the server log:\n" + "\n".join(bad[:5])


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    require_root()
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd"))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    require_root()
    daemon = Containerd(tmp_path_factory.mktemp("containerd"))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    require_root()
    engine = Podman(tmp_path_factory.mktemp("podman"))
    try:
        yield engine
    finally:
        engine.stop()


USER, PASSWORD = "engine-user", "engine-secret"


@pytest_twisted.async_yield_fixture
async def auth_registry(
    start_registry: Starter, tmp_path: Path
) -> AsyncIterator[InProcessRegistry]:
    """A registry asking for Basic credentials (htpasswd): ``USER`` / ``PASSWORD``; anyone may
    pull ``public/*``."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"{USER}:{hashed}\n")
    yield await start_registry(
        {
            "auth": {"anonymous_pull": "public/*"},
            "auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "engines"},
        }
    )


def basic_auth() -> dict[str, str]:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
