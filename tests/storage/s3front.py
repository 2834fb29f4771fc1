"""
A recording front for the S3 test server: a TCP relay on loopback that passes every byte to
SeaweedFS and back unchanged (so SigV4 signatures made for the front's address still verify,
and responses arrive exactly as S3 sent them), reading the request heads as they go by to
record what S3 was asked.  Tests then assert which S3 operations a push cost (no CopyObject, no
UploadPartCopy, a multipart upload at the blob's key...).  A test can also hold the requests it
names (`RecordingFront.hold`): their connection stops at the front, as if S3 were slow to
answer them, until `RecordingFront.release`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import pytest_twisted
from twisted.internet import reactor
from twisted.protocols.portforward import ProxyClientFactory, ProxyFactory, ProxyServer

from tests.storage.s3server import S3Server

_MAX_HEAD = 64 * 1024


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
    """Splits a client's byte stream into requests (S3 clients send Content-Length bodies)."""

    def __init__(self, bucket: str, seen: list[Seen]) -> None:
        self._bucket = bucket
        self._seen = seen
        self._buffer = b""
        self._body_left = 0

    def feed(self, data: bytes) -> None:
        while data:
            if self._body_left:
                taken = min(self._body_left, len(data))
                self._body_left -= taken
                data = data[taken:]
                continue
            self._buffer += data
            data = b""
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    raise ValueError("request head too long for the recording front")
                return
            head, data = self._buffer[:end], self._buffer[end + 4 :]
            self._buffer = b""
            self._body_left = self._record(head)

    def _record(self, head: bytes) -> int:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = urlsplit(target)
        path = unquote(parts.path).lstrip("/")
        key = path[len(self._bucket) + 1 :] if path.startswith(self._bucket + "/") else ""
        self._seen.append(
            Seen(
                method,
                key,
                parse_qs(parts.query, keep_blank_values=True),
                headers.get("x-amz-copy-source"),
            )
        )
        if "chunked" in headers.get("transfer-encoding", ""):
            raise ValueError("chunked request bodies are not followed by the recording front")
        return int(headers.get("content-length", "0"))


class _RecordingServer(ProxyServer):
    clientProtocolFactory = ProxyClientFactory

    def connectionMade(self) -> None:
        factory: _RecordingFactory = self.factory  # type: ignore[assignment]
        self._reader = _RequestReader(factory.bucket, factory.seen)
        # What this connection sent since a request the test holds (None: not held).
        self._held: list[bytes] | None = None
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        factory: _RecordingFactory = self.factory  # type: ignore[assignment]
        before = len(factory.seen)
        self._reader.feed(data)
        hold = factory.hold
        if self._held is None and hold is not None and any(map(hold, factory.seen[before:])):
            self._held = []
            factory.held.append(self)
        if self._held is not None:
            self._held.append(data)
            return
        super().dataReceived(data)

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
