"""
S3 that hangs or goes away while the registry serves: ``/health`` answers within its time limit
and says why, a cancelled S3 request is never sent again, and a client that leaves while its
request waits on S3 leaves no traceback behind (the autouse log watch fails the test on one).

Between the registry and the session's SeaweedFS sits a relay on loopback that passes bytes
both ways, and can hold them (S3 hung, as a stopped process: connections stay open, requests
are answered only once it comes back) or refuse connections (S3 down), so the shared
SeaweedFS itself is never stopped.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.logger import globalLogPublisher
from twisted.protocols.portforward import ProxyFactory, ProxyServer

from tests.e2e.conftest import Starter
from tests.e2e.harness import sleep
from tests.storage.s3server import S3Server, s3_server  # noqa: F401 - fixture

# The registry's health limits (registry.ops.health): a probe's answer is reused this long,
# and a probe gets this long.
HEALTH_CACHE = 2.0
HEALTH_TIMEOUT = 2.0


class _Relay(ProxyServer):
    held = b""

    def dataReceived(self, data: bytes) -> None:
        factory: SwitchableS3 = self.factory  # type: ignore[assignment]
        if factory.hung:
            self.held += data  # as a stopped S3 process would: read later, answered later
            return
        super().dataReceived(data)

    def release(self) -> None:
        held, self.held = self.held, b""
        if held:
            super().dataReceived(held)

    def connectionMade(self) -> None:
        factory: SwitchableS3 = self.factory  # type: ignore[assignment]
        factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        factory: SwitchableS3 = self.factory  # type: ignore[assignment]
        factory.live.discard(self)
        super().connectionLost(reason)


class SwitchableS3(ProxyFactory):
    protocol = _Relay

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.hung = False
        self.live: set[_Relay] = set()
        self.listening: IListeningPort | None = None
        self.own_port = 0  # (``port`` is ProxyFactory's: the S3 server's)

    def listen(self) -> None:
        self.listening = reactor.listenTCP(  # type: ignore[attr-defined]
            self.own_port, self, interface="127.0.0.1"
        )
        self.own_port = self.listening.getHost().port  # type: ignore[union-attr]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.own_port}"

    async def go_down(self) -> None:
        """Connections refused, the open ones cut."""
        assert self.listening is not None
        await self.listening.stopListening()
        self.listening = None
        for relay in list(self.live):
            relay.transport.abortConnection()  # type: ignore[union-attr]

    def come_back(self) -> None:
        self.hung = False
        for relay in list(self.live):
            relay.release()
        if self.listening is None:
            self.listen()


@pytest_twisted.async_yield_fixture
async def switchable(s3_server: S3Server) -> AsyncIterator[SwitchableS3]:  # noqa: F811
    upstream = urlsplit(s3_server.endpoint)
    assert upstream.hostname is not None and upstream.port is not None
    relay = SwitchableS3(upstream.hostname, upstream.port)
    relay.listen()
    yield relay
    relay.hung = False
    for connection in list(relay.live):
        connection.transport.abortConnection()  # type: ignore[union-attr]
    if relay.listening is not None:
        await relay.listening.stopListening()


async def start_on_s3(
    start_registry: Starter, s3: S3Server, relay: SwitchableS3, tmp_name: str, **storage: str
) -> Any:
    section = s3.storage_section(f"/outage/{tmp_name}", **storage)
    section["regionendpoint"] = relay.endpoint
    return await start_registry({"storage": section})


async def health(url: str) -> tuple[int, dict[str, Any]]:
    response = await treq.get(f"{url}/health", timeout=30)
    return response.code, json.loads(await response.content())


@pytest.fixture
def resent() -> Iterator[list[str]]:
    """The problems of the S3 requests the registry logs as sent again, as they are logged."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "sending it again" in (event.get("log_format") or ""):
            lines.append(str(event.get("problem")))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_health_answers_in_time_and_says_s3_hangs(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
    resent: list[str],
) -> None:
    registry = await start_on_s3(start_registry, s3_server, switchable, "hang")
    assert await health(registry.url) == (200, {"status": "ok"})
    switchable.hung = True
    await sleep(HEALTH_CACHE + 0.1)  # past the reused answer
    status, body = await health(registry.url)
    assert status == 503, body
    reason = body["reason"]
    assert reason.startswith(f"no answer within {HEALTH_TIMEOUT:g}s (S3 "), reason
    # The probe's S3 request was cancelled by the time limit, and not sent again.
    assert not [line for line in resent if "Cancelled" in line], resent
    switchable.come_back()
    for _ in range(40):  # bounded: back within a few probes
        await sleep(HEALTH_CACHE / 4)
        if (await health(registry.url))[0] == 200:
            break
    assert await health(registry.url) == (200, {"status": "ok"})


@pytest_twisted.ensureDeferred
async def test_health_says_why_s3_is_unreachable(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
) -> None:
    registry = await start_on_s3(start_registry, s3_server, switchable, "down")
    assert (await health(registry.url))[0] == 200
    await switchable.go_down()
    await sleep(HEALTH_CACHE + 0.1)
    status, body = await health(registry.url)
    assert status == 503, body
    # The time limit ends the probe while the S3 client tries again (or waits to): the reason
    # says what the attempt before met, not just that the time was up.
    reason = body["reason"]
    assert reason.startswith(f"no answer within {HEALTH_TIMEOUT:g}s (S3 PUT "), reason
    assert "Connection refused" in reason, reason
    switchable.come_back()


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_while_s3_hangs_leaves_no_traceback(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
) -> None:
    registry = await start_on_s3(start_registry, s3_server, switchable, "leave")
    missing = "sha256:" + "0" * 64
    response = await treq.head(f"{registry.url}/v2/app/blobs/{missing}", timeout=30)
    assert response.code == 404
    switchable.hung = True
    for _ in range(3):  # clients that give up on a hung registry
        with contextlib.suppress(Exception):  # the client's own time limit: expected
            await treq.head(f"{registry.url}/v2/app/blobs/{missing}", timeout=0.5)
    switchable.come_back()
    # Long enough for an S3 request sent again after the client left (the S3 client's last
    # pause is 3 s) to be answered, and its route to end: it must end without a traceback.
    await sleep(4.5)
    response = await treq.head(f"{registry.url}/v2/app/blobs/{missing}", timeout=30)
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_requests_to_a_hung_s3_end_in_503_after_answertimeout(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
) -> None:
    registry = await start_on_s3(
        start_registry, s3_server, switchable, "answer", answertimeout="1s"
    )
    missing = "sha256:" + "1" * 64
    switchable.hung = True
    for method in ("GET", "HEAD"):
        response = await treq.request(method, f"{registry.url}/v2/app/manifests/latest", timeout=30)
        assert response.code == 503
    response = await treq.get(f"{registry.url}/v2/app/blobs/{missing}", timeout=30)
    assert response.code == 503
    [error] = json.loads(await response.content())["errors"]
    assert error["code"] == "UNAVAILABLE"
    assert error["message"] == "storage unavailable"
    assert "gave no answer within 1s" in error["detail"]["reason"], error
    switchable.come_back()
    response = await treq.get(f"{registry.url}/v2/app/blobs/{missing}", timeout=30)
    assert response.code == 404
