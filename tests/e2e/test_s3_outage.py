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
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.storage.s3 import S3Driver
from registry.storage.s3 import _client as s3_client
from registry.storage.s3._lease import LEASE_SUFFIX
from tests.e2e.conftest import Starter
from tests.e2e.harness import sleep
from tests.storage.s3server import S3Server, s3_server  # noqa: F401 - fixture

# The registry's health limits (registry.ops.health): a probe's answer is reused this long,
# and a probe gets this long.
HEALTH_CACHE = 2.0
HEALTH_TIMEOUT = 2.0


class _Relay(ProxyServer):
    held = b""
    hanging = False  # this connection carries a request S3 works on without answering

    def dataReceived(self, data: bytes) -> None:
        factory: SwitchableS3 = self.factory  # type: ignore[assignment]
        if factory.cut:  # a request cut before S3 saw it: the client must send it again
            factory.cut -= 1
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if factory.hang_slow and _slow_request(data):
            self.hanging = True
        if factory.hung or self.hanging:
            self.held += data  # as a stopped S3 process would: read later, answered later
            return
        super().dataReceived(data)

    def release(self) -> None:
        self.hanging = False
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


def _slow_request(data: bytes) -> bool:
    """Whether ``data`` begins a server-side copy or a multipart completion."""
    line = data.split(b"\r\n", 1)[0]
    completion = line.startswith(b"POST ") and b"uploadId=" in line
    return completion or (line.startswith(b"PUT ") and b"\r\nx-amz-copy-source:" in data.lower())


class SwitchableS3(ProxyFactory):
    protocol = _Relay

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.hung = False
        # Hang only copies and completions (what S3 may take minutes over), answering the rest.
        self.hang_slow = False
        self.cut = 0  # how many of the next requests to cut
        self.live: set[_Relay] = set()
        self.listening: IListeningPort | None = None
        self.own_port = 0  # (``port`` is ProxyFactory's: the S3 server's)
        # Registries using this relay: stopped, S3 back, before the relay goes (a registry
        # stopping removes its probe file from S3, and waits out the S3 client's pauses
        # between attempts while S3 is away).
        self.registries: list[Any] = []

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
        self.hung = self.hang_slow = False
        for relay in list(self.live):
            relay.release()
        if self.listening is None:
            self.listen()


@pytest.fixture
def quick_s3_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """As many attempts as in production, without its seconds of waiting between them, for
    tests that look at the count and the lines, not the pauses (the health probe's time limit
    does end in those pauses: its tests keep them)."""
    monkeypatch.setattr(s3_client, "RETRY_DELAYS", (0.05, 0.05, 0.05))


@pytest_twisted.async_yield_fixture
async def switchable(s3_server: S3Server) -> AsyncIterator[SwitchableS3]:  # noqa: F811
    upstream = urlsplit(s3_server.endpoint)
    assert upstream.hostname is not None and upstream.port is not None
    relay = SwitchableS3(upstream.hostname, upstream.port)
    relay.listen()
    yield relay
    relay.come_back()
    for registry in relay.registries:
        await registry.stop()
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
    registry = await start_registry({"storage": section})
    relay.registries.append(registry)
    return registry


async def health(url: str) -> tuple[int, dict[str, Any]]:
    response = await treq.get(f"{url}/health", timeout=30)
    return response.code, json.loads(await response.content())


def _logged(*namespaces: str, least: LogLevel = LogLevel.debug) -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        namespace = str(event.get("log_namespace", ""))
        if namespace.startswith(namespaces) and event.get("log_level", LogLevel.info) >= least:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def s3_lines() -> Iterator[list[dict[str, Any]]]:
    """The S3 client's own log events, as they are logged."""
    yield from _logged("registry.storage.s3._client")


@pytest.fixture
def health_lines() -> Iterator[list[dict[str, Any]]]:
    """The health checker's log events, as they are logged."""
    yield from _logged("registry.ops.health")


@pytest.fixture
def build_lines() -> Iterator[list[dict[str, Any]]]:
    """What the registry's start-up work logs (the indexes built after the storage probe)."""
    yield from _logged("registry.server.build")


@pytest.fixture
def failure_lines() -> Iterator[list[dict[str, Any]]]:
    """The application's lines for requests that failed on storage."""
    yield from _logged("registry.app")


@pytest_twisted.ensureDeferred
async def test_health_answers_in_time_and_says_s3_hangs(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
    s3_lines: list[dict[str, Any]],
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
    sent_again = [str(event.get("problems")) for event in s3_lines]
    assert not [line for line in sent_again if "Cancelled" in line], sent_again
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
    # A listing names what it listed, not "GET /".
    response = await treq.get(f"{registry.url}/v2/app/tags/list", timeout=30)
    assert response.code == 503
    [error] = json.loads(await response.content())["errors"]
    assert "(GET / (listing " in error["detail"]["reason"], error
    assert "app/_manifests/tags/" in error["detail"]["reason"], error
    switchable.come_back()
    response = await treq.get(f"{registry.url}/v2/app/blobs/{missing}", timeout=30)
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_a_commit_s3_never_answers_ends_in_503_after_copytimeout(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
) -> None:
    """A chunked upload's commit is S3's copy and completion, which answer late and were not
    timed at all: a stalled S3 held the client's final PUT without an answer.  Now the commit
    gets a 503 after ``copytimeout``, and goes through once S3 is back."""
    registry = await start_on_s3(
        start_registry, s3_server, switchable, "commit", copytimeout="2s", chunksize="5MiB"
    )
    data = os.urandom(11 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = await treq.post(f"{registry.url}/v2/app/blobs/uploads/", timeout=30)
    assert response.code == 202
    location = response.headers.getRawHeaders("location")[0]
    for start in range(0, len(data), 6 * 1024 * 1024):
        chunk = data[start : start + 6 * 1024 * 1024]
        response = await treq.patch(
            registry.url + location,
            data=chunk,
            headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"},
            timeout=60,
        )
        assert response.code == 202, await response.text()
        location = response.headers.getRawHeaders("location")[0]
    switchable.hang_slow = True
    commit = f"{registry.url}{location}{'&' if '?' in location else '?'}digest={digest}"
    response = await treq.put(commit, timeout=60)
    assert response.code == 503, await response.text()
    [error] = json.loads(await response.content())["errors"]
    assert "gave no answer within 2s" in error["detail"]["reason"], error
    switchable.come_back()
    response = await treq.put(commit, timeout=60)
    assert response.code == 201, await response.text()
    response = await treq.get(f"{registry.url}/v2/app/blobs/{digest}", timeout=60)
    assert hashlib.sha256(await response.content()).hexdigest() == digest.removeprefix("sha256:")


def _text(event: dict[str, Any]) -> str:
    return formatEvent(event)


@pytest_twisted.ensureDeferred
async def test_an_s3_call_sent_again_writes_one_line_when_it_ends(
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
    s3_lines: list[dict[str, Any]],
) -> None:
    """S3 flapping: a call that needed three attempts writes one line, when it succeeds,
    saying how many attempts it took and what the failed ones met; none per attempt."""
    settings = s3_server.settings(
        f"/outage/flap-{uuid.uuid4().hex}/", regionendpoint=switchable.endpoint
    )
    driver = S3Driver(reactor, settings)
    driver._client.retry_delays = (0.01, 0.01, 0.01)  # (their length is what counts here)
    try:
        switchable.cut = 2
        await driver.put_content("flap/one", b"some bytes")
        assert switchable.cut == 0
        assert await driver.get_content("flap/one") == b"some bytes"
    finally:
        await driver.close()
    assert len(s3_lines) == 1, [_text(event) for event in s3_lines]
    [line] = s3_lines
    assert line["log_level"] is LogLevel.info
    text = _text(line)
    assert text.startswith("S3 PUT "), text
    assert "flap/one answered 200 at attempt 3 after: " in text, text
    assert "(2 attempts)" in text or "attempt 2: " in text, text


@pytest.mark.usefixtures("quick_s3_retries")
@pytest_twisted.ensureDeferred
async def test_an_s3_call_that_fails_every_attempt_is_one_line(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
    s3_lines: list[dict[str, Any]],
    failure_lines: list[dict[str, Any]],
) -> None:
    """S3 down for a request: no line per attempt; the request's one failure line says what
    all four attempts met."""
    registry = await start_on_s3(start_registry, s3_server, switchable, "fail")
    await switchable.go_down()
    try:
        response = await treq.get(f"{registry.url}/v2/app/manifests/latest", timeout=60)
        assert response.code == 503
        await response.content()
    finally:
        switchable.come_back()
    assert s3_lines == [], [_text(event) for event in s3_lines]
    assert len(failure_lines) == 1, [_text(event) for event in failure_lines]
    text = _text(failure_lines[0])
    assert text.startswith("storage failure on GET /v2/app/manifests/latest: "), text
    assert "Connection refused" in text and "(4 attempts)" in text, text


@pytest_twisted.ensureDeferred
async def test_health_logs_once_when_s3_goes_down_and_once_when_it_is_back(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
    s3_lines: list[dict[str, Any]],
    health_lines: list[dict[str, Any]],
) -> None:
    """While S3 is down, probe after probe fails: one line when the check turns bad, with its
    reason, one when it is ok again, and none from the probe's S3 calls being sent again."""
    registry = await start_on_s3(start_registry, s3_server, switchable, "probe")
    assert (await health(registry.url))[0] == 200
    await switchable.go_down()
    for _ in range(2):  # two probes, each failing: the second logs nothing
        await sleep(HEALTH_CACHE + 0.1)
        assert (await health(registry.url))[0] == 503
    switchable.come_back()
    for _ in range(40):  # bounded: back within a few probes
        await sleep(HEALTH_CACHE / 4)
        if (await health(registry.url))[0] == 200:
            break
    assert await health(registry.url) == (200, {"status": "ok"})
    texts = [_text(event) for event in health_lines]
    assert len(texts) == 2, texts
    failing, back = health_lines
    assert failing["log_level"] is LogLevel.warn
    assert texts[0].startswith("health check storage failing: no answer within 2s (S3 PUT "), texts
    assert "Connection refused" in texts[0], texts
    assert back["log_level"] is LogLevel.info
    assert texts[1] == "health check storage ok again"
    # The probe's calls (its file under txregistry/health/) add none; a start-up task still in
    # flight when S3 went away may say once that its call ended after being sent again.
    probe = [_text(event) for event in s3_lines if "txregistry/health/" in _text(event)]
    assert probe == [], probe


@implementer(IBodyProducer)
class _TwoHalves:
    """A request body sent in two halves, the second once ``go_on`` fires."""

    def __init__(self, first: bytes, second: bytes) -> None:
        self.length = len(first) + len(second)
        self._first, self._second = first, second
        self.go_on: Deferred[None] = Deferred()

    async def _produce(self, consumer: Any) -> None:
        consumer.write(self._first)
        await self.go_on
        consumer.write(self._second)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(self._produce(consumer))

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


@pytest.mark.usefixtures("quick_s3_retries")
@pytest_twisted.ensureDeferred
async def test_s3_gone_while_a_patch_writes_says_what_failed_first(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
) -> None:
    """S3 goes away while a PATCH writes: the 503's reason is the write that failed (the
    hash state at the new size, which goes down before the upload's state), not the release
    of the upload's write lease tried after it."""
    registry = await start_on_s3(start_registry, s3_server, switchable, "patch")
    response = await treq.post(f"{registry.url}/v2/app/blobs/uploads/")
    assert response.code == 202, await response.text()
    location = response.headers.getRawHeaders("location")[0]
    upload_id = location.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    lease = f"outage/patch/docker/registry/v2/repositories/app/_uploads/{upload_id}/data"
    driver = S3Driver(reactor, s3_server.settings("/outage/patch"))
    body = _TwoHalves(b"a" * 100_000, b"b" * 100_000)
    patching = treq.patch(f"{registry.url}{location}", data=body, timeout=120)
    try:
        for _ in range(300):  # 30 s at most: until the PATCH holds the upload
            if await driver._client.call("HEAD", lease + LEASE_SUFFIX, missing_ok=True):
                break
            await sleep(0.1)
        else:
            raise AssertionError("the PATCH never took the upload's write lease")
        await switchable.go_down()
        body.go_on.callback(None)
        response = await patching
        answer = json.loads(await response.content())
    finally:
        switchable.come_back()
        await driver.close()
    assert response.code == 503, answer
    reason = answer["errors"][0]["detail"]["reason"]
    assert "/txhashstates/sha256/200000" in reason and "lease" not in reason, reason


@pytest.fixture
def every_failure_line() -> Iterator[list[dict[str, Any]]]:
    """Every warning or worse the registry logs about requests (not its background tasks
    at start-up, which meet S3 down too)."""
    yield from _logged("registry.app", "registry.handlers", "registry.http", least=LogLevel.warn)


@pytest.mark.parametrize(
    "how",
    # Small bodies are in before S3's refusal (the case that logged twice); a large one
    # is refused while it comes.
    ["post-digest-small", "put-body-small", "put-body-mid-body"],
)
@pytest.mark.usefixtures("quick_s3_retries")
@pytest_twisted.ensureDeferred
async def test_a_push_refused_for_s3_being_down_is_one_line(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
    every_failure_line: list[dict[str, Any]],
    how: str,
) -> None:
    """S3 gone before the request, or while its body comes: one line for the request."""
    registry = await start_on_s3(start_registry, s3_server, switchable, f"push-{how}")
    size = 3 if how.endswith("small") else 3_000_000
    first, second = b"x" * size, b"y" * size
    digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
    url = f"{registry.url}/v2/app/blobs/uploads/?digest={digest}"
    if how.startswith("put-body"):
        response = await treq.post(f"{registry.url}/v2/app/blobs/uploads/")
        assert response.code == 202, await response.text()
        location = response.headers.getRawHeaders("location")[0]
        separator = "&" if "?" in location else "?"
        url = f"{registry.url}{location}{separator}digest={digest}"
    method = treq.post if how.startswith("post-digest") else treq.put
    body = _TwoHalves(first, second)
    try:
        if how.endswith("mid-body"):
            sending = method(url, data=body, timeout=60)
            await sleep(1.0)
            await switchable.go_down()
            body.go_on.callback(None)
            response = await sending
        else:
            await switchable.go_down()
            body.go_on.callback(None)
            response = await method(url, data=body, timeout=60)
        answer = await response.content()
    finally:
        switchable.come_back()
    assert response.code == 503, answer
    lines = "\n".join(_text(event) for event in every_failure_line)
    assert len(every_failure_line) == 1, lines


@pytest.mark.usefixtures("quick_s3_retries")
@pytest_twisted.ensureDeferred
async def test_metrics_answer_while_s3_hangs(
    start_registry: Starter,
    s3_server: S3Server,  # noqa: F811
    switchable: SwitchableS3,
    build_lines: list[dict[str, Any]],
) -> None:
    """The metrics are needed most during an outage: a scrape does not wait on the storage
    (the last garbage collection's record is read from it) nor fail with it."""
    registry = await start_on_s3(
        start_registry, s3_server, switchable, "metrics", answertimeout="3s"
    )
    switchable.hung = True
    for _ in range(2):  # the first starts the record's read, the second finds it running
        response = await treq.get(f"{registry.url}/metrics", timeout=30)
        body = (await response.content()).decode()
        assert response.code == 200, body
        assert "txregistry_http_requests_total" in body
    # Stopped while S3 hangs: the work it started in the background (the indexes it builds
    # after start) ends with it, and logs nothing once S3 fails after the stop.
    await registry.stop()
    before = len(build_lines)
    await switchable.go_down()
    await sleep(1.5)  # longer than an S3 call's attempts take to fail (quick_s3_retries)
    assert [_text(e) for e in build_lines[before:]] == []
