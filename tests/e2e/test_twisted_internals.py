"""
The fast paths that stand on Twisted's private state (`registry.http.twisted_internals`) are on
with the installed Twisted, and the start-up check names what a changed Twisted lacks.

Over a real socket to a `RegistrySite` whose sink and resource report, in the response body,
what the registry's own code recorded: a chunked body decoded by `ChunkedBodyDecoder`, a body
refused before it is sent.  The HTTP/2 connection lookup is covered in tests/auth/test_tls.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import abstract, tcp
from twisted.internet.threads import deferToThread
from twisted.web import _newclient, http
from twisted.web._http2 import H2Connection, H2Stream
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource

import twisted
from registry.api.errors import BLOB_UPLOAD_UNKNOWN, RegistryError
from registry.http import twisted_internals
from registry.http.request import RegistryRequest, RegistrySite
from tests.e2e.harness import twistd_command
from tests.e2e.test_refused_bodies import RawUpload
from tests.server.proc import child_env

MiB = 1024 * 1024


class _Sink:
    """Keeps the body; refuses it at once when told to."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.body = bytearray()

    def feed(self, data: bytes) -> None:
        self.body += data

    def connection_lost(self, reason: object) -> None:
        pass

    def watch(self, ready: Callable[[], None], refused: Callable[[RegistryError], None]) -> None:
        if self.refuse:
            refused(RegistryError(BLOB_UPLOAD_UNKNOWN))
        else:
            ready()


class _Report(Resource):
    """Answers what the request recorded: body bytes the sink got, and which decoder."""

    isLeaf = True

    def render_PUT(self, request: RegistryRequest) -> bytes:
        sink: Any = request.sink
        report = {"received": bytes(sink.body).decode(), "bulk": request.chunked_in_bulk}
        return json.dumps(report).encode()


@pytest_twisted.async_yield_fixture
async def url() -> AsyncIterator[str]:
    from twisted.internet import reactor

    def sink_factory(request: Any, method: bytes, path: bytes, length: int | None) -> _Sink:
        return _Sink(refuse=path.startswith(b"/refuse"))

    site = RegistrySite(_Report(), sink_factory=sink_factory, access_log=False)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()


def test_nothing_missing_from_the_installed_twisted() -> None:
    assert twisted_internals.problems() == []


@pytest_twisted.ensureDeferred
async def test_chunked_body_goes_through_chunked_body_decoder(url: str) -> None:
    def exchange() -> Any:
        with RawUpload(url) as client:
            client.send(
                b"PUT /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"
            )
            return client.answer()

    answer = await deferToThread(exchange)
    assert answer.status == 200
    assert json.loads(answer.body) == {"received": "hello world", "bulk": True}


@pytest_twisted.ensureDeferred
async def test_refused_body_is_answered_before_it_is_sent(url: str) -> None:
    def exchange() -> Any:
        with RawUpload(url) as client:
            client.send_headers("PUT", "/refuse?x=1", 64 * MiB, "Expect: 100-continue")
            answer = client.answer()  # not a byte of the body was sent
            assert client.closed_by_server()
            return answer

    answer = await deferToThread(exchange)
    assert not answer.continued
    assert answer.status == 404
    assert json.loads(answer.body)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    assert answer.headers["connection"] == "close"


class _RenamedChannel(http.HTTPChannel):
    """A Twisted whose channel keeps the method elsewhere while the body is read."""

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)  # type: ignore[no-untyped-call]
        if "_command" in self.__dict__:
            self._method = self.__dict__.pop("_command")

    def allContentReceived(self) -> None:
        self._command = self.__dict__.pop("_method")  # what the rest of this Twisted reads
        super().allContentReceived()  # type: ignore[no-untyped-call]


class _PlainChannel(http.HTTPChannel):
    """A Twisted whose chunked decoder is a class of another name."""

    def headerReceived(self, line: bytes) -> bool:
        result: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]
        decoder = self.__dict__.get("_transferDecoder")
        if isinstance(decoder, http._ChunkedTransferDecoder):
            self._transferDecoder = _OtherDecoder(decoder)
        return result


class _OtherDecoder:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def noMoreData(self) -> None:
        self.inner.noMoreData()


class _DescriptorWithoutPending(abstract.FileDescriptor):
    """A Twisted whose transports no longer count what waits outside ``dataBuffer``."""

    def __init__(self, reactor: Any = None) -> None:
        pass


class _ProxyWithoutProducer:
    def __init__(self, transport: object) -> None:
        self._wrapped = transport


class _RequestWithoutFlag(http.Request):
    _disconnected: Any = property()  # reading it fails, as if it were gone


class _PoolOfOtherMake(HTTPConnectionPool):
    """A Twisted whose pool keeps ``_factory`` but builds connections some other way."""

    def _newConnection(self, key: Any, endpoint: Any) -> Any:
        raise NotImplementedError


class _PortLoggingElsewhere(tcp.Port):
    """A Twisted whose port's accept loop no longer logs through ``_logger``."""

    def doRead(self) -> None:
        pass


class _ClientParsingElsewhere(_newclient.HTTP11ClientProtocol):
    """A Twisted whose client protocol keeps its response parser under another name."""

    def request(self, request: Any) -> Any:
        answer = super().request(request)
        self._reader = self.__dict__.pop("_parser")
        return answer

    def dataReceived(self, data: bytes) -> None:
        self._parser = self._reader
        try:
            super().dataReceived(data)
        finally:
            self._reader = self.__dict__.pop("_parser", None)


class _ChannelAnsweringElsewhere(http.HTTPChannel):
    """A Twisted whose channel answers a malformed head some other way."""

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)  # type: ignore[no-untyped-call]


class _H2QueueingElsewhere(H2Connection):
    """A Twisted whose HTTP/2 connection no longer queues a stream's writes where
    `twisted_internals.h2_queued` looks."""

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        self._queued = data


class _H2ForgettingElsewhere(H2Connection):
    """A Twisted whose HTTP/2 connection forgets an ended stream without firing the Deferred
    `twisted_internals.h2_when_done` waits on (an early answer's stream would never be
    reset)."""

    def _requestDone(self, streamID: int) -> None:
        del self.streams[streamID]


class _H2PollingWhileBlocked(H2Connection):
    """A Twisted whose HTTP/2 sending loop runs again on every reactor turn instead of
    waiting once every stream is blocked (`twisted_internals.h2_hold_while_window_shut`
    would hold a stream and the loop would spin all the same)."""

    def _sendPrioritisedData(self, *args: Any) -> None:
        super()._sendPrioritisedData(*args)
        if self._sendingDeferred is not None:
            self._sendingDeferred = None
            self._reactor.callLater(0, self._sendPrioritisedData)


class _H2StreamParsingElsewhere(H2Stream):
    """A Twisted whose HTTP/2 stream no longer calls parseCookies once its headers are in."""

    def _convertHeaders(self, headers: Any) -> None:
        pass


def _accept_saying_other_things() -> None:
    """A Twisted whose accept loop words its EMFILE recovery differently."""
    print("Out of descriptors", "Could not accept new connection")


@pytest.mark.parametrize(
    ("name", "fake", "expected"),
    [
        ("_HTTP_CHANNEL", _RenamedChannel, "_RenamedChannel no longer keeps the request line"),
        ("_HTTP_CHANNEL", _PlainChannel, "_PlainChannel._transferDecoder is no longer"),
        ("_PROXY_PRODUCER", _ProxyWithoutProducer, "no longer keeps its transport in _producer"),
        ("_FILE_DESCRIPTOR", object, "builtins.object.producer is gone"),
        ("_TCP_SERVER", object, "builtins.object.bufferSize is gone"),
        ("_FILE_DESCRIPTOR", object, "builtins.object.dataBuffer is gone"),
        ("_FILE_DESCRIPTOR", _DescriptorWithoutPending, "no longer keeps _tempDataLen"),
        ("_CHANNEL_ATTRIBUTE", "_renamed", "no longer keeps its HTTPChannel in _renamed"),
        ("_CONNECTION_POOL", object, "object._factory no longer names a Factory class"),
        ("_CONNECTION_POOL", _PoolOfOtherMake, "no longer builds connections from _factory"),
        ("_TCP_PORT", object, "object._logger is no longer a Logger of the class"),
        ("_TCP_PORT", _PortLoggingElsewhere, "doRead() no longer logs through _logger"),
        ("_ACCEPT", _accept_saying_other_things, "no longer logs 'EMFILE encountered'"),
        ("_CLIENT_PROTOCOL", _ClientParsingElsewhere, "no longer keeps the response parser"),
        ("_HTTP_CHANNEL", _ChannelAnsweringElsewhere, "no longer answers a malformed head"),
        ("_H2_CONNECTION", _H2QueueingElsewhere, "no longer uses _outboundStreamQueues"),
        ("_H2_CONNECTION", _H2ForgettingElsewhere, "no longer fires _streamCleanupCallbacks"),
        ("_H2_STREAM", _H2StreamParsingElsewhere, "no longer calls parseCookies"),
        ("_H2_CONNECTION", _H2PollingWhileBlocked, "no longer waits on _sendingDeferred"),
    ],
)
def test_problems_name_what_a_changed_twisted_lacks(
    monkeypatch: pytest.MonkeyPatch, name: str, fake: Any, expected: str
) -> None:
    monkeypatch.setattr(twisted_internals, name, fake)
    found = twisted_internals.problems()
    assert any(expected in problem for problem in found), found


def test_start_up_refuses_a_twisted_that_lacks_something(tmp_path: Path) -> None:
    """
    One line on stderr and status 1, before anything listens.  The patch goes into every
    process of the tree (a ``sitecustomize`` on the children's path): with ``[http] workers``
    above 1 the serving processes, not the supervisor, are the ones that check.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from registry.http import twisted_internals\n"
        "from tests.e2e.test_twisted_internals import _RenamedChannel\n"
        "twisted_internals._HTTP_CHANNEL = _RenamedChannel\n"
    )
    env = child_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    command = twistd_command("--port", "tcp:0:interface=127.0.0.1", "--storage", str(tmp_path))
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"txregistry: this Twisted ({twisted.__version__}) lacks what txregistry relies on: "
        "tests.e2e.test_twisted_internals._RenamedChannel no longer keeps the request line"
    ), lines
    assert "listening" not in result.stdout
