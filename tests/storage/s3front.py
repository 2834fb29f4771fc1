"""
A recording front for the S3 test server: a TCP relay on loopback that passes every byte to
SeaweedFS and back unchanged (so SigV4 signatures made for the front's address still verify,
and responses arrive exactly as S3 sent them), reading the request heads as they go by to
record what S3 was asked.  Tests then assert which S3 operations a push cost (no CopyObject, no
UploadPartCopy, a multipart upload at the blob's key...).  A test can also hold the requests it
names (`RecordingFront.hold`): their connection stops at the front, as if S3 were slow to
answer them, until `RecordingFront.release`.  And it can break the requests it names
(`RecordingFront.fault`) as a network or a misbehaving S3 would: cut the connection, or stall
it, after so many bytes of the request's body or of S3's answer, or answer with an error
before the body is all in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import pytest_twisted
from twisted.internet import reactor
from twisted.protocols.portforward import (
    ProxyClient,
    ProxyClientFactory,
    ProxyFactory,
    ProxyServer,
)

from tests.fakes.request_heads import Head, RequestHeads
from tests.storage.s3server import S3Server

# What S3 answers to a request `RecordingFront.fault` makes it refuse mid-body.
_EARLY_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>refused mid-body by the test front</Message></Error>"
)
_EARLY_ANSWER = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_EARLY_ERROR)
) + _EARLY_ERROR

Action = Literal["cut_up", "stall_up", "answer_up", "stall_down"]


@attrs.define
class Fault:
    """
    What happens to the next ``count`` requests ``which`` names, ``after`` bytes of their
    body (``*_up``) or of S3's answer, head included (``stall_down``):

    - ``cut_up``: the connection is aborted (S3 dropped it mid-body);
    - ``stall_up``: the front stops reading from the registry (S3 or the network stalled);
    - ``answer_up``: the front answers 500 itself and closes (S3 refused the part early;
      with ``after`` 0, once the request's head is in: any request, S3 out of service);
    - ``stall_down``: the rest of S3's answer is dropped (stalled mid-download).
    """

    which: Callable[[Seen], bool]
    action: Action
    after: int
    count: int = 1


@attrs.frozen
class Seen:
    """One request S3 received through the front."""

    method: str
    key: str  # the object key, without the bucket
    query: dict[str, list[str]]
    copy_source: str | None

    @property
    def is_copy(self) -> bool:
        """CopyObject or UploadPartCopy: a server-side copy."""
        return self.copy_source is not None


class _RequestReader:
    """Records each request of a client's byte stream (`RequestHeads`) as a `Seen`."""

    def __init__(self, bucket: str, seen: list[Seen]) -> None:
        self._bucket = bucket
        self._seen = seen
        self._heads = RequestHeads("the recording front")

    def feed(self, data: bytes) -> list[tuple[Seen, int]]:
        """Read on; the requests whose head ended here, each with where its body starts in
        the connection's stream."""
        return [(self._record(head), start) for head, start in self._heads.feed(data)]

    def _record(self, head: Head) -> Seen:
        parts = urlsplit(head.target)
        path = unquote(parts.path).lstrip("/")
        key = path[len(self._bucket) + 1 :] if path.startswith(self._bucket + "/") else ""
        seen = Seen(
            head.method,
            key,
            parse_qs(parts.query, keep_blank_values=True),
            head.headers.get("x-amz-copy-source"),
        )
        self._seen.append(seen)
        return seen


class _FaultyClient(ProxyClient):
    """The front's connection to S3: passes S3's answers on, or drops them (``stall_down``)."""

    # Bytes of the current answer still passed on (None: all of them).
    passing: int | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.passing is not None:
            data, self.passing = data[: self.passing], max(0, self.passing - len(data))
            if not data:
                return
        super().dataReceived(data)


class _FaultyClientFactory(ProxyClientFactory):
    protocol = _FaultyClient


class _RecordingServer(ProxyServer):
    clientProtocolFactory = _FaultyClientFactory

    def connectionMade(self) -> None:
        factory: _RecordingFactory = self.factory  # type: ignore[assignment]
        self._reader = _RequestReader(factory.bucket, factory.seen)
        # What this connection sent since a request the test holds (None: not held).
        self._held: list[bytes] | None = None
        self.holding: Seen | None = None
        self._received = 0  # bytes of the registry's stream read so far
        # Where in the stream an ``*_up`` fault strikes, and which.
        self._strike: tuple[int, Action] | None = None
        self._dead = False  # stalled, cut or answered by the front: nothing more passes
        factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        factory: _RecordingFactory = self.factory  # type: ignore[assignment]
        factory.live.discard(self)
        if self in factory.held:
            factory.held.remove(self)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        factory: _RecordingFactory = self.factory  # type: ignore[assignment]
        if self._dead:
            return
        start, self._received = self._received, self._received + len(data)
        started = self._reader.feed(data)
        for seen, body_start in started:
            self._arm(factory, seen, body_start)
        hold = factory.hold
        if self._held is None and hold is not None:
            self.holding = next((seen for seen, _ in started if hold(seen)), None)
            if self.holding is not None:
                self._held = []
                factory.held.append(self)
        if self._held is not None:
            self._held.append(data)
            return
        if self._strike is not None and self._received >= self._strike[0]:
            at, action = self._strike
            passed = data[: max(0, at - start)]
            if passed:
                super().dataReceived(passed)
            self._fail(action)
            return
        super().dataReceived(data)

    def _arm(self, factory: _RecordingFactory, seen: Seen, body_start: int) -> None:
        fault = next((f for f in factory.faults if f.count > 0 and f.which(seen)), None)
        if fault is None:
            return
        fault.count -= 1
        if fault.action == "stall_down":
            client: Any = self.peer
            client.passing = fault.after
        else:
            self._strike = (body_start + fault.after, fault.action)

    def _fail(self, action: Action) -> None:
        self._dead = True
        transport: Any = self.transport
        s3: Any = self.peer
        if action == "cut_up":
            transport.abortConnection()
        elif action == "answer_up":
            transport.write(_EARLY_ANSWER)
            transport.loseConnection()
            if s3 is not None:
                s3.transport.abortConnection()  # S3 never gets the rest of the body
        else:  # stall_up: the registry's bytes stay in its socket; S3 waits for them
            if s3 is not None:
                s3.transport.unregisterProducer()
            transport.stopReading()

    def release(self) -> None:
        held, self._held = self._held or [], None
        if self.peer is None:  # its client or S3 hung up meanwhile
            return
        for data in held:
            super().dataReceived(data)


class _RecordingFactory(ProxyFactory):
    protocol = _RecordingServer

    def __init__(self, host: str, port: int, bucket: str, seen: list[Seen]) -> None:
        super().__init__(host, port)
        self.bucket = bucket
        self.seen = seen
        self.hold: Callable[[Seen], bool] | None = None
        self.held: list[_RecordingServer] = []
        self.faults: list[Fault] = []
        self.live: set[_RecordingServer] = set()


@attrs.define
class RecordingFront:
    endpoint: str
    seen: list[Seen]
    _factory: _RecordingFactory

    def on_key(self, key_suffix: str) -> list[Seen]:
        """What was asked of the keys ending with ``key_suffix``."""
        return [item for item in self.seen if item.key.endswith(key_suffix)]

    def hold(self, which: Callable[[Seen], bool]) -> None:
        """From now on, a request for which ``which`` is true is not passed on to S3, nor
        anything after it on its connection, until `release`."""
        self._factory.hold = which

    @property
    def holding(self) -> int:
        """How many connections are held."""
        return len(self._factory.held)

    @property
    def held_requests(self) -> list[Seen]:
        """The requests whose connections are held now (those the registry gave up on and
        closed are not)."""
        return [server.holding for server in self._factory.held if server.holding is not None]

    def fault(
        self, which: Callable[[Seen], bool], action: Action, after: int, count: int = 1
    ) -> Fault:
        """Break the next ``count`` requests ``which`` names (see `Fault`); the returned
        `Fault`'s ``count`` says how many are still to come."""
        fault = Fault(which, action, after, count)
        self._factory.faults.append(fault)
        return fault

    def drop_held(self) -> None:
        """Hold nothing more, and cut the held connections without passing on their bytes
        (S3 lost them mid-request: the registry tries them again)."""
        factory = self._factory
        factory.hold = None
        held, factory.held = factory.held, []
        for server in held:
            server.transport.abortConnection()  # type: ignore[attr-defined]

    def release(self) -> None:
        """Pass on what was held, and hold nothing more."""
        factory = self._factory
        factory.hold = None
        held, factory.held = factory.held, []
        for server in held:
            server.release()


@pytest_twisted.async_yield_fixture
async def s3_front(s3_server: S3Server) -> AsyncIterator[RecordingFront]:
    """A `RecordingFront` on 127.0.0.1 (a free port) before the session's SeaweedFS."""
    seen: list[Seen] = []
    upstream = urlsplit(s3_server.endpoint)
    assert upstream.hostname is not None and upstream.port is not None
    factory = _RecordingFactory(upstream.hostname, upstream.port, s3_server.bucket, seen)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    yield RecordingFront(f"http://127.0.0.1:{port.getHost().port}", seen, factory)
    await port.stopListening()
    for server in list(factory.live):  # stalled connections the registry did not end
        server.transport.abortConnection()
