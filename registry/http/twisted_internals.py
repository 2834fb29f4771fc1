"""
The one door to Twisted's private state: every read or write of an attribute Twisted does not
document goes through a function here, and `problems` checks at start-up that each is still
where these functions look.

Why private state at all: three fast paths have no public API to stand on.

- Streamed uploads decide where the body goes when the headers are in (`gotLength`), before
  twisted.web has copied the request line onto the `Request`; it is on the channel.
- Chunked upload bodies are decoded by `registry.http.chunked.ChunkedBodyDecoder` (one copy
  instead of two); twisted.web offers no hook to choose the transfer decoder.
- A refused upload is answered before its body is sent (`RegistryRequest._body_refused`),
  which needs the request line and HTTP version before twisted.web hands them over.  Over
  HTTP/2 the stream is then reset once its answer went out (`h2_when_done`, `h2_reset`):
  twisted.web tells nobody when a stream's end is written, and resets only streams it has
  not ended.

And four places where an object twisted.web hands out hides the one we need: an HTTP/2
stream's connection (its TLS peer certificate, and what it has queued for the stream, which
`registry.http.responses` bounds), the transport under a response body's
``TransportProxyProducer`` (to abort it), the producer a TCP transport holds (sendfile), and
the HTTP/1 channel behind the protocol a `Site` builds per connection (to answer a request
line too long for it, `registry.http.oversized`).  Behind that channel, what it does with a
malformed request (`answer_malformed_with`, for `registry.http.malformed`).

And one switch with no public handle: the factory an `HTTPConnectionPool` makes per connection
logs "Starting factory" and "Stopping factory" for every pooled connection (``noisy``, public,
but on a class the pool names in its private ``_factory``); `quiet_pool` turns that off, so a
registry that syncs or notifies does not write two lines per connection.

Before, each place used ``getattr(obj, "_name", None)`` and carried on without it, so a Twisted
upgrade that renamed one would switch a fast path off without a word.  Now a Twisted that lacks
any of them refuses to start (`registry.server.build`), the functions here read the attributes
directly, and the supported Twisted range is pinned in ``pyproject.toml`` (docs/install.md says
how to try a newer one).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import abstract, tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers

from registry.http.chunked import ChunkedBodyDecoder

if TYPE_CHECKING:
    from twisted.web.client import HTTPConnectionPool

# What `problems` checks; names, so a test can swap in a class that lacks something.
_HTTP_CHANNEL: type[http.HTTPChannel] = http.HTTPChannel
_REQUEST: type[http.Request] = http.Request
# The HTTP client's classes: None for Twisted's own (`_client_classes`), imported only by a
# process that is an HTTP client, so that one that only serves never loads twisted.web.client
# (with its cookie jar, urllib.request and endpoints: about 1 MiB per process).
_PROXY_PRODUCER: type[Any] | None = None
_FILE_DESCRIPTOR: type[Any] = abstract.FileDescriptor
_TCP_SERVER: type[Any] = tcp.Server
_CHANNEL_ATTRIBUTE = "_channel"
_CONNECTION_POOL: type[Any] | None = None
_CLIENT_PROTOCOL: type[Any] | None = None
_TCP_PORT: type[Any] = tcp.Port
_ACCEPT: Callable[..., Any] = tcp._accept
# Starts of what tcp._accept logs at exhaustion (registry.server.exhaustion recognises them).
_ACCEPT_TEXTS = (
    "EMFILE encountered",
    "EMFILE recovery",
    "Re-reserving EMFILE",
    "Could not accept new connection",
)
_quiet_factories: dict[type[Any], type[Any]] = {}


def _h2_stream() -> type[Any] | None:
    """twisted.web's HTTP/2 stream class, when the ``http2`` extra (h2) is installed."""
    try:
        from twisted.web._http2 import H2Stream
    except ImportError:
        return None
    return H2Stream


_H2_STREAM: type[Any] | None = _h2_stream()


def _h2_connection_class() -> type[Any] | None:
    """twisted.web's HTTP/2 connection class, when the ``http2`` extra (h2) is installed."""
    try:
        from twisted.web._http2 import H2Connection
    except ImportError:
        return None
    return H2Connection


_H2_CONNECTION: type[Any] | None = _h2_connection_class()


def pending_request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes, bytes]:
    """
    Method, target and version of the HTTP/1.x request whose body is being read.  twisted.web
    keeps them on the channel (``_command``, ``_path``, ``_version``) and gives them to the
    `Request` only once the whole body is in; an upload is routed, and may be refused, before.
    """
    ch: Any = channel
    return bytes(ch._command or b""), bytes(ch._path or b""), bytes(ch._version or b"")


def answer_malformed_with(channel: http.HTTPChannel, answer: Callable[[], None]) -> None:
    """
    Make ``answer`` what ``channel`` does with a request twisted.web finds malformed (a bad
    request line or header, a head over its size or header count, a bad body framing): its
    ``_respondToBadRequestAndDisconnect`` writes a bare ``400`` and closes, with no body and
    nothing the access log sees.  ``answer`` must close the connection as that does.
    """
    ch: Any = channel
    ch._respondToBadRequestAndDisconnect = answer


def use_chunked_decoder(
    channel: http.HTTPChannel,
    make: Callable[[Callable[[bytes], None], Callable[[bytes], None]], object],
) -> bool:
    """
    Replace twisted.web's chunked transfer decoder of the request being read (``_transferDecoder``)
    by ``make(dataCallback, finishCallback)``; False when the body is not chunked.  twisted.web
    has no public way to choose the decoder, and its own copies every byte twice.
    """
    ch: Any = channel
    decoder = ch._transferDecoder
    if not isinstance(decoder, http._ChunkedTransferDecoder):
        return False
    ch._transferDecoder = make(decoder.dataCallback, decoder.finishCallback)
    return True


def http1_channel(protocol: object) -> http.HTTPChannel | None:
    """
    The `HTTPChannel` behind the protocol `Site.buildProtocol` returns (a proxy keeping it in
    ``_channel``, swapped for an HTTP/2 connection after ALPN); None when there is none.
    """
    channel = getattr(protocol, _CHANNEL_ATTRIBUTE, None)
    return channel if isinstance(channel, http.HTTPChannel) else None


def _client_classes() -> tuple[type[Any], type[Any], type[Any]]:
    """The HTTP client's ``TransportProxyProducer``, ``HTTPConnectionPool`` and
    ``HTTP11ClientProtocol`` (a test's stand-ins where it set them)."""
    from twisted.web import _newclient, client

    return (
        _PROXY_PRODUCER or _newclient.TransportProxyProducer,
        _CONNECTION_POOL or client.HTTPConnectionPool,
        _CLIENT_PROTOCOL or _newclient.HTTP11ClientProtocol,
    )


def response_head_parser(protocol: object) -> object | None:
    """
    The parser of the response an HTTP client connection (`HTTP11ClientProtocol`) is reading
    the head of -- its ``_parser`` while in the STATUS or HEADER state, and again after a
    1xx head (Twisted resets the same parser) -- or None (no request, or reading a body).
    `registry.http.bounded_agent` counts a response head's bytes by it.
    """
    from twisted.web import _newclient

    client_protocol = _client_classes()[2]
    parser: Any = protocol._parser if isinstance(protocol, client_protocol) else None
    if parser is None or parser.state not in (_newclient.STATUS, _newclient.HEADER):
        return None
    found: object = parser
    return found


def h2_connection(stream: object) -> object | None:
    """
    The `H2Connection` an HTTP/2 stream belongs to (``H2Stream._conn``), whose transport is the
    TLS connection; None for anything else.  The stream's own ``transport`` is not that.
    """
    if _H2_STREAM is None or not isinstance(stream, _H2_STREAM):
        return None
    conn: object = stream._conn
    return conn


def _h2_parts(stream: object) -> tuple[Any, int] | None:
    """An HTTP/2 stream's connection (untyped: its private parts are read) and its id; None
    for anything else."""
    conn = h2_connection(stream)
    if conn is None:
        return None
    h2_stream: Any = stream
    return conn, int(h2_stream.streamID)


def h2_stream_closed(stream: object) -> bool:
    """
    Whether ``stream`` is an HTTP/2 stream the client has already reset at the protocol level
    while twisted.web has not told its request yet: it hands a read's events over one by one,
    so a request answered as it arrives (`/v2/`, say) is written before the reset that came
    in the same read reaches it.  Writing then raises inside twisted.web, and ending the
    stream stops the connection's sending loop for good (every later stream on it hangs).
    """
    conn = h2_connection(stream)
    if conn is None:
        return False
    h2_stream: Any = stream
    return _h2_closed(conn, h2_stream.streamID)


def h2_queued(stream: object) -> int | None:
    """
    How many body bytes of ``stream`` (an HTTP/2 stream) wait in its connection's queue for
    that stream (``H2Connection._outboundStreamQueues[streamID]``: every write is appended
    there whole, and the connection's sending loop frames it out as the client's flow-control
    window and the TLS transport allow); None for anything else, and once the connection
    forgot the stream (sent in full, reset, or the connection gone).  twisted.web pauses a
    stream's producer only when the client's window runs out, never when the connection
    itself cannot send, so this is the one measure of what a stream holds.
    """
    found = _h2_parts(stream)
    if found is None:
        return None
    connection, stream_id = found
    queue = connection._outboundStreamQueues.get(stream_id)
    if queue is None:
        return None
    # The queue ends with a marker object (not bytes) once the response is finished.
    return sum(len(chunk) for chunk in queue if isinstance(chunk, (bytes, bytearray, memoryview)))


def h2_when_done(stream: object, done: Callable[[], None]) -> bool:
    """
    Have ``done`` called once twisted.web is through with HTTP/2 ``stream``: its answer went
    out whole (the connection's sending loop wrote its END_STREAM), the client reset it, or
    the connection was lost.  Nothing public tells the first: `Request.finish` (and what
    ``notifyFinish`` gives) fires when the end is queued behind the body, not when it is sent.
    The connection keeps a Deferred per stream (``H2Connection._streamCleanupCallbacks``, by
    stream id) that it fires as it forgets the stream.  False (and ``done`` never called) for
    anything else, and once the connection forgot the stream.
    """
    found = _h2_parts(stream)
    if found is None:
        return False
    connection, stream_id = found
    cleanup = connection._streamCleanupCallbacks.get(stream_id)
    if cleanup is None:
        return False

    def call(result: object) -> object:
        done()
        return result

    cleanup.addCallback(call)
    return True


def h2_reset(stream: object) -> None:
    """
    Reset HTTP/2 ``stream`` with ``NO_ERROR``, and send the frame now.  RFC 9113, section 8.1:
    a server whose response is complete may ask the client so to stop sending the request's
    body.  twisted.web's own reset (``H2Stream.abortConnection``) also forgets the stream,
    which it must not do twice: this is for a stream twisted.web is through with
    (`h2_when_done`) while h2 (``H2Connection.conn``) still takes the client's data on it.
    Once reset, h2 drops what the client still sends on it, sending back the connection's
    window for it and no more of the stream's.  The frame goes out through
    ``openStreamWindow`` (acknowledging no bytes), which writes what h2 has to send.
    """
    found = _h2_parts(stream)
    if found is None:
        return
    connection, stream_id = found
    from h2.errors import ErrorCodes

    connection.conn.reset_stream(stream_id, error_code=ErrorCodes.NO_ERROR)
    connection.openStreamWindow(stream_id, 0)


def h2_hold_while_window_shut(stream: object) -> None:
    """
    Keep the sending loop of ``stream``'s HTTP/2 connection from spinning while the client's
    flow-control window for a stream with bytes queued is shut.  twisted.web's loop
    (``H2Connection._sendPrioritisedData``) sends one frame of the stream its priority tree
    (``priority``) names next and runs again on the next reactor turn; it waits on a Deferred
    (``_sendingDeferred``) only once every stream is blocked in the tree.  A stream with bytes
    queued and no window stays unblocked there, so the loop picks it, sends nothing, and runs
    again: a core busy for as long as the client does not read, and the connection's idle
    timeout, which each pass resets, never runs.

    Installed once per connection, at its first request (instance attributes: the class and
    other connections are untouched):

    - The tree is wrapped (`_HeldPriority`): a stream it names is held -- blocked, and the
      tree asked again -- when its next frame cannot go out: bytes come first in its queue and
      its window (``conn.local_flow_control_window``: h2's, the stream's and the connection's)
      is 0, or h2 has closed it (a frame on it would raise inside the loop and stop it for
      good).  A queue holding only the end marker is never held: END_STREAM needs no window.
      Checked where the loop picks, so it also holds what twisted.web unblocked meanwhile
      (``endRequest`` unblocks whatever the window).
    - ``dataReceived`` is wrapped: on the reactor turn after a read, once all its events are
      handled (a stream reset in the same read is forgotten by then), every stream whose
      window is open is told so (``windowUpdated``, which resumes its producer) and, with
      bytes queued, unblocked, and the loop woken if it waits.  That covers a WINDOW_UPDATE on
      a stream or the connection (twisted.web unblocks, but leaves the loop waiting),
      SETTINGS_INITIAL_WINDOW_SIZE (which twisted.web ignores), and a stream twisted.web left
      blocked itself because its bytes were queued while its window was shut.
    - The loop itself (what the waiting Deferred and ``callLater`` call) is wrapped: woken
      during a read -- twisted.web wakes it as a stream's write is queued, which a window
      update can cause -- it runs on the next turn instead, not amid the read's events (it
      could end a stream while twisted.web walks its streams, or send on a stream reset
      later in the same read).
    """
    found = _h2_parts(stream)
    if found is None:
        return
    connection, _ = found
    if isinstance(connection.priority, _HeldPriority):
        return
    held = _HeldPriority(connection, connection.priority)
    connection.priority = held
    receive = connection.dataReceived
    send = connection._sendPrioritisedData

    def data_received(data: bytes) -> None:
        held.busy = True
        try:
            receive(data)
        finally:
            held.busy = False
        held.after_read()

    def send_prioritised_data(*args: object) -> None:
        if held.busy:
            connection._reactor.callLater(0, send_prioritised_data)
        else:
            send(*args)

    connection.dataReceived = data_received
    connection._sendPrioritisedData = send_prioritised_data


class _HeldPriority:
    """
    An `H2Connection`'s priority tree, holding the streams whose next frame cannot go out
    (`h2_hold_while_window_shut`); every other use is the tree's own.
    """

    def __init__(self, connection: Any, tree: Any) -> None:
        self._connection = connection
        self._tree = tree
        self._reopening: Any = None  # the call after a read, while one is pending
        self.busy = False  # in a read, or in what follows it: the loop waits a turn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tree, name)

    def __iter__(self) -> _HeldPriority:
        return self

    def __next__(self) -> int:
        while True:
            stream_id: int = next(self._tree)  # DeadlockError once every stream is blocked
            if not self._waits(stream_id):
                return stream_id
            self._tree.block(stream_id)

    def _waits(self, stream_id: int) -> bool:
        """Whether no frame of ``stream_id`` can go out now: bytes come first in its queue and
        its window is shut, or h2 has closed it (twisted.web forgets it as it handles the
        reset)."""
        connection = self._connection
        queue = connection._outboundStreamQueues.get(stream_id)
        if not queue:
            return False  # twisted.web's own course
        if _h2_closed(connection, stream_id):
            return True
        head = queue[0]
        if not isinstance(head, (bytes, bytearray, memoryview)) or not len(head):
            return False  # the end marker (or an empty write): no window needed
        window: int = connection.conn.local_flow_control_window(stream_id)
        return window <= 0

    def after_read(self) -> None:
        """What the client sent may have opened windows: look on the next reactor turn."""
        if self._reopening is None and self._connection.streams:
            self._reopening = self._connection._reactor.callLater(0, self._reopen)

    def _reopen(self) -> None:
        """Tell every stream whose window is open, unblock those with bytes queued, and wake
        the loop if it waits on one."""
        self._reopening = None
        connection = self._connection
        opened = False
        self.busy = True
        try:
            for stream_id, h2_stream in list(connection.streams.items()):
                if _h2_closed(connection, stream_id):
                    continue  # reset: stays out of the loop until twisted.web forgets it
                if connection.conn.local_flow_control_window(stream_id) <= 0:
                    continue
                h2_stream.windowUpdated()  # resumes a producer paused on the window
                if connection._outboundStreamQueues.get(stream_id):
                    self._tree.unblock(stream_id)
                    opened = True
        finally:
            self.busy = False
        waiting = connection._sendingDeferred
        if opened and waiting is not None:
            connection._sendingDeferred = None
            waiting.callback(None)


def _h2_closed(connection: Any, stream_id: int) -> bool:
    """Whether h2 (``connection.conn``, the h2 library's H2Connection) has closed
    ``stream_id``: it keeps a stream it closed until it tidies up, then forgets it."""
    known = connection.conn.streams.get(stream_id)
    return known is None or bool(known.closed)


def proxied_transport(transport: object) -> object | None:
    """
    The transport a response body's ``TransportProxyProducer`` wraps (``_producer``; None once
    the response is done).  Only that one can ``abortConnection``: the proxy's
    ``stopProducing`` asks for a graceful close that a stalled TLS peer can hold open.
    """
    if not isinstance(transport, _client_classes()[0]):
        return None
    inner: object | None = transport._producer
    return inner


def transport_producer(transport: abstract.FileDescriptor) -> tuple[object | None, bool]:
    """
    The producer registered on a TCP transport and whether it streams (``producer`` and
    ``streamingProducer``: documented instance variables of Twisted's consumer mixin, but no
    interface offers them).  `registry.http.sendfile` takes the socket over only from the
    HTTP channel it expects there.
    """
    fd: Any = transport
    return fd.producer, bool(fd.streamingProducer)


def socket_transport(transport: object) -> abstract.FileDescriptor | None:
    """The TCP transport a connection's bytes go through: ``transport`` itself, or the one
    under a TLS (or other protocol-wrapping) transport; None for anything else (an HTTP/2
    stream, a test's fake)."""
    from twisted.protocols.policies import ProtocolWrapper

    if isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport if isinstance(transport, _FILE_DESCRIPTOR) else None


def transport_buffered(transport: abstract.FileDescriptor) -> int:
    """
    How many bytes written to a TCP transport wait in its own buffer, not yet handed to the
    socket (``dataBuffer`` past ``offset``, plus ``_tempDataLen`` not yet joined to it): it
    shrinks as the client reads.
    """
    fd: Any = transport
    buffer, offset, pending = fd.dataBuffer, fd.offset, fd._tempDataLen
    return len(buffer) - int(offset) + int(pending)


def quiet_pool(pool: HTTPConnectionPool) -> HTTPConnectionPool:
    """
    ``pool``, its connections' factories made silent (``noisy = False``): the pool builds one
    factory per connection from its class attribute ``_factory``, which is replaced here by a
    quiet subclass of whatever it was (so `registry.storage.s3` keeps its tuned factory).
    """
    pool_: Any = pool
    noisy = pool_._factory
    quiet = _quiet_factories.get(noisy)
    if quiet is None:
        quiet = type(f"Quiet{noisy.__name__}", (noisy,), {"noisy": False})
        _quiet_factories[noisy] = quiet
    pool_._factory = quiet
    return pool


def route_accept_log(port: tcp.Port, make: Callable[[ILogObserver], ILogObserver]) -> None:
    """
    Send what ``port``'s accept loop logs to ``make(where it went before)``: a `tcp.Port`
    logs its ``EMFILE`` recovery through its class's logger (``_logger``), three lines per
    refused connection, with no public switch (`registry.server.exhaustion`).  An instance
    attribute shadows the class's logger for this port alone.
    """
    port_: Any = port
    before: Logger = port_._logger
    port_._logger = Logger(namespace=before.namespace, source=port, observer=make(before.observer))


def _assigned_in(cls: type[Any], method: str, name: str) -> bool:
    """Whether ``cls.method`` (where Twisted sets an instance attribute) assigns ``name``."""
    code = getattr(getattr(cls, method, None), "__code__", None)
    return code is not None and name in code.co_names


def _qualname(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _ProbeTransport:
    """Where the probe channel writes; nothing is sent anywhere."""

    disconnecting = False

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: list[bytes]) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def getPeer(self) -> None:
        return None

    def getHost(self) -> None:
        return None

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass


def _http1_problems(channel_class: type[http.HTTPChannel]) -> list[str]:
    """
    Feed a chunked upload to a real channel (no socket) and check, at `gotLength` time as
    `RegistryRequest` does, that the request line is on the channel and that the decoder swap
    carries the body through `ChunkedBodyDecoder`.
    """
    name = _qualname(channel_class)
    seen: dict[str, Any] = {"body": b"", "done": False}

    class Probe(http.Request):
        def gotLength(self, length: int | None) -> None:
            super().gotLength(length)  # type: ignore[no-untyped-call]
            channel: Any = self.channel
            try:
                seen["line"] = pending_request_line(channel)
            except AttributeError as exc:
                seen["line"] = exc
            try:
                seen["swapped"] = use_chunked_decoder(channel, ChunkedBodyDecoder)
            except AttributeError as exc:
                seen["swapped"] = exc

        def handleContentChunk(self, data: bytes) -> None:
            seen["body"] += data

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            seen["done"] = True

    try:
        channel: Any = channel_class()
        channel.timeOut = None  # no idle timer on the reactor
        channel.requestFactory = Probe
        channel.makeConnection(_ProbeTransport())
        channel.dataReceived(
            b"PUT /probe HTTP/1.1\r\nHost: probe\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        channel.connectionLost(None)
    except Exception as exc:  # a Twisted this different fails here, not on a client
        return [f"{name} failed a chunked request: {exc!r}"]
    problems = []
    line = seen.get("line")
    if line != (b"PUT", b"/probe", b"HTTP/1.1"):
        problems.append(
            f"{name} no longer keeps the request line in _command/_path/_version "
            f"while the body is read (found {line!r})"
        )
    swapped = seen.get("swapped")
    if swapped is not True:
        problems.append(
            f"{name}._transferDecoder is no longer twisted.web.http._ChunkedTransferDecoder "
            f"with dataCallback/finishCallback (found {swapped!r})"
        )
    elif seen["body"] != b"abc" or not seen["done"]:
        problems.append(f"{name} did not take a chunked body through a replaced decoder")
    return problems


def problems(client: bool = True) -> list[str]:
    """
    What the functions here rely on and the installed Twisted lacks, one sentence each (empty
    when all is there); the HTTP client's parts only with ``client`` (a process that is no
    HTTP client leaves twisted.web.client unloaded).  Called once at start-up; cheap (no
    socket, no reactor).
    """
    found = _http1_problems(_HTTP_CHANNEL)
    if not _uses(_HTTP_CHANNEL, "lineReceived", "_respondToBadRequestAndDisconnect"):
        found.append(
            f"{_qualname(_HTTP_CHANNEL)} no longer answers a malformed head through "
            "_respondToBadRequestAndDisconnect"
        )
    if _H2_STREAM is not None and not _assigned_in(_H2_STREAM, "__init__", "_conn"):
        found.append(f"{_qualname(_H2_STREAM)} no longer keeps its connection in _conn")
    if _H2_STREAM is not None and not _assigned_in(_H2_STREAM, "__init__", "streamID"):
        found.append(f"{_qualname(_H2_STREAM)} no longer keeps its id in streamID")
    if _H2_STREAM is not None:
        from twisted.web._http2 import H2Connection

        if not _assigned_in(H2Connection, "__init__", "conn"):
            found.append(f"{_qualname(H2Connection)} no longer keeps h2's connection in conn")
        found += _h2_queue_problems(_H2_CONNECTION)
        found += _h2_done_problems(_H2_CONNECTION)
        found += _h2_hold_problems(_H2_CONNECTION)
        # RegistryRequest sets an HTTP/2 upload up in parseCookies, which the stream calls
        # once every header is in (gotLength comes amid them), and answers 100-continue itself
        # through the stream's writeHeaders.
        if not _uses(_H2_STREAM, "_convertHeaders", "parseCookies"):
            found.append(
                f"{_qualname(_H2_STREAM)}._convertHeaders() no longer calls parseCookies once"
                " the headers are in"
            )
        if not callable(getattr(_H2_STREAM, "writeHeaders", None)):
            found.append(f"{_qualname(_H2_STREAM)}.writeHeaders() is gone")
        found += _h2_library_problems()
    # Read by RegistryRequest itself: whether the client left.  (Its write of
    # _parsePOSTFormSubmission = False is not checked: a Twisted without it, 24.7 included,
    # parses form bodies, which the registry never receives.)
    if not hasattr(_REQUEST, "_disconnected"):
        found.append(f"{_qualname(_REQUEST)}._disconnected is gone")
    # Public but undocumented knobs: without them reads and sends fall back to small sizes.
    for attribute in ("producer", "streamingProducer", "SEND_LIMIT"):
        if not hasattr(_FILE_DESCRIPTOR, attribute):
            found.append(f"{_qualname(_FILE_DESCRIPTOR)}.{attribute} is gone")
    # Read by `transport_buffered`: what waits in a transport's own buffer.
    for attribute in ("dataBuffer", "offset"):
        if not hasattr(_FILE_DESCRIPTOR, attribute):
            found.append(f"{_qualname(_FILE_DESCRIPTOR)}.{attribute} is gone")
    if not _assigned_in(_FILE_DESCRIPTOR, "__init__", "_tempDataLen"):
        found.append(f"{_qualname(_FILE_DESCRIPTOR)} no longer keeps _tempDataLen")
    if not hasattr(_TCP_SERVER, "bufferSize"):
        found.append(f"{_qualname(_TCP_SERVER)}.bufferSize is gone")
    for method in ("fileno", "registerProducer", "unregisterProducer", "startWriting"):
        if not callable(getattr(_TCP_SERVER, method, None)):
            found.append(f"{_qualname(_TCP_SERVER)}.{method}() is gone")
    built = server.Site(resource.Resource()).buildProtocol(None)
    if http1_channel(built) is None:
        found.append(
            f"the protocol twisted.web's Site builds ({_qualname(type(built))}) no longer "
            f"keeps its HTTPChannel in {_CHANNEL_ATTRIBUTE}"
        )
    # Public, but wrapped per connection (registry.http.head_deadline): twisted.web must still
    # call them for the request head's deadline to end.
    for method in ("resumeProducing", "allHeadersReceived", "requestDone"):
        if not callable(getattr(_HTTP_CHANNEL, method, None)):
            found.append(f"{_qualname(_HTTP_CHANNEL)}.{method}() is gone")
    found += _accept_log_problems(_TCP_PORT)
    if client:
        found += _client_problems()
    return found


def _client_problems() -> list[str]:
    """What the HTTP client's functions here (`proxied_transport`, `response_head_parser`,
    `quiet_pool`) rely on."""
    proxy_producer, pool, client_protocol = _client_classes()
    found = []
    if not _assigned_in(proxy_producer, "__init__", "_producer"):
        found.append(f"{_qualname(proxy_producer)} no longer keeps its transport in _producer")
    found += _client_head_problems(client_protocol)
    factory = getattr(pool, "_factory", None)
    if not (isinstance(factory, type) and hasattr(factory, "noisy")):
        found.append(f"{_qualname(pool)}._factory no longer names a Factory class")
    elif not _uses(pool, "_newConnection", "_factory"):
        found.append(f"{_qualname(pool)} no longer builds connections from _factory")
    return found


def _h2_queue_problems(connection_class: type[Any] | None) -> list[str]:
    """
    What `h2_queued` relies on: a stream's writes appended to ``_outboundStreamQueues[id]``
    and taken from there by the sending loop.  Checked on a connection with no socket: the
    queue a stream's write lands in must be the one `h2_queued` measures.
    """
    if connection_class is None:
        return []
    name = _qualname(connection_class)
    for method in ("writeDataToStream", "_sendPrioritisedData", "remainingOutboundWindow"):
        if not _uses(connection_class, method, "_outboundStreamQueues"):
            return [f"{name}.{method}() no longer uses _outboundStreamQueues"]
    if _H2_STREAM is None:
        return []
    try:
        connection: Any = object.__new__(connection_class)
        connection._outboundStreamQueues = {1: deque()}
        connection.conn = _ProbeWindow()
        connection.priority = _ProbePriority()
        connection._sendingDeferred = None
        stream: Any = object.__new__(_H2_STREAM)
        stream._conn, stream.streamID = connection, 1
        connection.streams = {1: stream}
        stream.producer = None
        connection.writeDataToStream(1, b"abc")
        queued = h2_queued(stream)
    except Exception as exc:  # a Twisted this different fails here, not on a client
        return [f"{name} failed a probe write: {exc!r}"]
    if queued != 3:
        return [f"{name}.writeDataToStream() no longer queues in _outboundStreamQueues"]
    return []


def _h2_done_problems(connection_class: type[Any] | None) -> list[str]:
    """
    What `h2_when_done` and `h2_reset` rely on: the sending loop forgets a stream whose end it
    wrote through ``_requestDone``, which fires the Deferred ``_streamCleanupCallbacks`` keeps
    for the stream; and ``openStreamWindow`` to send h2's frames.  Checked on a connection
    with no socket: a stream's end must reach what `h2_when_done` registered.
    """
    if connection_class is None or _H2_STREAM is None:
        return []
    name = _qualname(connection_class)
    if not _uses(connection_class, "_sendPrioritisedData", "_requestDone"):
        return [f"{name}._sendPrioritisedData() no longer ends a stream through _requestDone"]
    if not _uses(connection_class, "openStreamWindow", "_tryToWriteControlData"):
        return [f"{name}.openStreamWindow() no longer writes what h2 has to send"]
    called: list[bool] = []
    try:
        connection: Any = object.__new__(connection_class)
        connection._streamCleanupCallbacks = {1: Deferred()}
        connection._outboundStreamQueues = {1: deque()}
        connection.priority = _ProbePriority()
        stream: Any = object.__new__(_H2_STREAM)
        stream._conn, stream.streamID = connection, 1
        connection.streams = {1: stream}
        registered = h2_when_done(stream, lambda: called.append(True))
        connection._requestDone(1)
    except Exception as exc:  # a Twisted this different fails here, not on a client
        return [f"{name} failed a probe stream's end: {exc!r}"]
    if not (registered and called):
        return [f"{name}._requestDone() no longer fires _streamCleanupCallbacks"]
    return []


def _h2_hold_problems(connection_class: type[Any] | None) -> list[str]:
    """
    What `h2_hold_while_window_shut` relies on: the sending loop (``_sendPrioritisedData``,
    first scheduled by ``__init__`` on ``_reactor``) takes streams from ``priority`` with
    ``next`` and sends what ``_outboundStreamQueues`` holds, waits on ``_sendingDeferred``
    once every stream is blocked, and reads go through ``dataReceived``.  Checked on a
    connection with no socket and a clock for reactor: a stream whose window is shut must
    leave the loop waiting with nothing sent, and a read after its window opened must have
    its bytes sent on the next turn.
    """
    if connection_class is None or _H2_STREAM is None:
        return []
    name = _qualname(connection_class)
    window = _ProbeShutWindow()
    try:
        clock = _ProbeReactor()
        connection: Any = connection_class(reactor=clock)
        connection.conn = window
        connection.transport = _ProbeTransport()
        stream: Any = object.__new__(_H2_STREAM)
        stream._conn, stream.streamID, stream.producer = connection, 1, None
        connection.streams = {1: stream}
        connection._outboundStreamQueues = {1: deque([b"abc"])}
        connection.priority.insert_stream(1)
        h2_hold_while_window_shut(stream)
        clock.turn()  # the loop's first run: the stream is held
        waits = connection._sendingDeferred is not None and not clock.calls and not window.sent
        window.window = 65535
        connection.dataReceived(b"")  # the probe's h2 makes no event of it
        clock.turn()
    except Exception as exc:  # a Twisted this different fails here, not on a client
        return [f"{name} failed a probe of a shut flow-control window: {exc!r}"]
    if not waits:
        return [
            f"{name}._sendPrioritisedData() no longer waits on _sendingDeferred while the "
            f"one stream with bytes queued is blocked in its priority tree"
        ]
    if window.sent != [(1, b"abc")]:
        return [
            f"{name}._sendPrioritisedData(), woken after a read opened a held stream's "
            f"window, did not send its bytes (sent {window.sent!r})"
        ]
    return []


class _ProbeReactor:
    """What a probe `H2Connection` schedules on: calls made on `turn` (those due when it
    starts, as a reactor's turn does; a loop that reschedules itself runs once per turn)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def seconds(self) -> float:
        return 0.0

    def callLater(self, delay: float, call: Callable[..., object], *args: object) -> None:
        self.calls.append((call, args))

    def turn(self) -> None:
        due, self.calls = self.calls, []
        for call, args in due:
            call(*args)


class _ProbeShutWindow:
    """The h2 connection of a probe `H2Connection` with one stream (1), whose window is shut
    until ``window`` is set; records what is sent."""

    max_outbound_frame_size = 16384

    def __init__(self) -> None:
        self.window = 0
        self.sent: list[tuple[int, bytes]] = []
        self.streams = {1: _ProbeOpenStream()}

    def local_flow_control_window(self, stream_id: int) -> int:
        return self.window

    def send_data(self, stream_id: int, data: bytes) -> None:
        self.sent.append((stream_id, bytes(data)))
        self.window -= len(data)

    def receive_data(self, data: bytes) -> list[object]:
        return []

    def data_to_send(self) -> bytes:
        return b""


class _ProbeOpenStream:
    """An h2 stream as `_h2_closed` reads it: open."""

    closed = False


class _ProbeWindow:
    """The h2 connection a probe `H2Connection` asks about its window: always open."""

    def local_flow_control_window(self, stream_id: int) -> int:
        return 65535


class _ProbePriority:
    """The priority tree of a probe `H2Connection`: nothing to schedule."""

    def unblock(self, stream_id: int) -> None:
        pass

    def remove_stream(self, stream_id: int) -> None:
        pass


def _h2_library_problems() -> list[str]:
    """What `h2_stream_closed` reads of the h2 library: its connection's ``streams`` and a
    stream's ``closed``; and the reset `h2_reset` sends."""
    import h2.connection
    import h2.stream

    found = []
    if not _assigned_in(h2.connection.H2Connection, "__init__", "streams"):
        found.append("h2.connection.H2Connection no longer keeps its streams in streams")
    if not isinstance(getattr(h2.stream.H2Stream, "closed", None), property):
        found.append("h2.stream.H2Stream.closed is gone")
    if not callable(getattr(h2.connection.H2Connection, "reset_stream", None)):
        found.append("h2.connection.H2Connection.reset_stream() is gone")
    return found


def _client_head_problems(protocol_class: type[Any]) -> list[str]:
    """
    Send a request on a real client protocol (no socket) and feed it an answer in pieces:
    `response_head_parser` must see the head until its blank line, and nothing once the body
    is read.
    """
    from twisted.web import _newclient

    name = _qualname(protocol_class)
    seen: list[object | None] = []
    try:
        protocol: Any = protocol_class()
        protocol.makeConnection(_ProbeTransport())
        seen.append(response_head_parser(protocol))  # no request yet
        answer = protocol.request(_newclient.Request(b"GET", b"/", Headers(), None))
        answer.addErrback(lambda _: None)
        # (No 1xx head in the probe: Twisted logs an info line for each it ignores.)
        for piece in (b"HTTP/1.1 200 OK\r\n", b"Content-Length: 3\r\n", b"\r\nab"):
            protocol.dataReceived(piece)
            seen.append(response_head_parser(protocol))
        protocol.connectionLost(Failure(ConnectionDone()))
    except Exception as exc:  # a Twisted this different fails here, not on a client
        return [f"{name} failed a probe response: {exc!r}"]
    none, status, head, body = seen
    if not (none is None and status is not None and head is status and body is None):
        return [
            f"{name} no longer keeps the response parser in _parser with its state in "
            f"STATUS/HEADER while a head is read (found {seen!r})"
        ]
    return []


def _accept_log_problems(port_class: type[Any]) -> list[str]:
    """What `route_accept_log` relies on: a class logger read by ``doRead``, and the texts
    `registry.server.exhaustion` recognises still in Twisted's accept loop."""
    name = _qualname(port_class)
    # Looked up without calling Logger.__get__, which makes a new Logger per read.
    if not isinstance(inspect.getattr_static(port_class, "_logger", None), Logger):
        return [f"{name}._logger is no longer a Logger of the class"]
    if not _uses(port_class, "doRead", "_logger"):
        return [f"{name}.doRead() no longer logs through _logger"]
    texts = " ".join(c for c in _ACCEPT.__code__.co_consts if isinstance(c, str))
    return [
        f"twisted.internet.tcp._accept no longer logs {expected!r}"
        for expected in _ACCEPT_TEXTS
        if expected not in texts
    ]


def _uses(cls: type[Any], method: str, name: str) -> bool:
    """Whether ``cls.method`` reads an attribute ``name`` (of anything)."""
    code = getattr(getattr(cls, method, None), "__code__", None)
    return code is not None and name in code.co_names
