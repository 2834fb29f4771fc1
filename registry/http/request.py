"""
A twisted.web Request and Site that stream request bodies instead of spooling them.

twisted.web collects a whole request body (in memory, or a temp file above 100 kB) before any
resource runs.  For blob uploads that is a second copy of every byte and unbounded latency, so
this Request asks the Site, as soon as the headers are in (`gotLength`), whether a *body sink*
wants the body.  If so, every chunk goes straight from the socket into the sink; when the sink
cannot keep up the transport is paused, so a slow disk or S3 pushes back on the client instead
of filling memory.  Other requests keep an in-memory body, refused past ``max_body_size``.

The Klein route then runs, as usual, once the body is complete, and asks the sink for the
result.  When the sink refuses the body before it is all in (no access, an unknown upload, a
full disk), the error is answered at once.  Over HTTP/1.x, as registry:2 does, up to 256 KiB
more of the body is read and dropped, then the connection is closed; a body refused for its
size (413) is not read at all, and the connection closes just after the answer.  Over HTTP/2
the answer ends the stream, whose body is not read on (its flow-control window stays shut),
and the stream is then reset: the connection's other streams go on.  A client that sent
``Expect: 100-continue`` (curl, for bodies over 1 MiB) gets ``100 Continue`` only once the
upload is open, so a refused body is never sent at all.
"""

from __future__ import annotations

import functools
import io
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from zope.interface import implementer

from registry import fdlimit
from registry.api.errors import RegistryError
from registry.http import (
    head_deadline,
    line_ends,
    malformed,
    misdirected,
    oversized,
    reasons,
    responses,
    twisted_internals,
)
from registry.http.chunked import ChunkedBodyDecoder
from registry.http.forwarded import TrustedProxies, client_address
from registry.http.headers import request_header
from registry.http.host_header import MissingHost, lacks_host
from registry.http.unbranded import UnbrandedRequest

log = Logger()

# Reads of 1 MiB per reactor turn instead of Twisted's 64 KiB: each turn costs a system call
# and a pass through the protocol, so larger reads leave more of the core to hashing and
# writing (bench/run.py's push steps show it).
_UPLOAD_READ_SIZE = 1024 * 1024
# A larger send buffer lets large producer reads go out in fewer reactor turns.
_DOWNLOAD_SEND_LIMIT = 4 * 1024 * 1024
# After an early answer, how long a client may stay silent before the connection is closed.
_AFTER_REFUSAL_TIMEOUT = 30.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The versions that know ``Expect: 100-continue``.
_CONTINUED = (b"HTTP/1.1", b"HTTP/2")
# How long a refused body is still read (and dropped) after the answer's FIN (Go: 500 ms).
_RESET_AVOIDANCE_DELAY = 0.5
# How much of a refused body is still read (and dropped) after the answer, so that a client
# that reads the answer only once its body is sent sees it; past this, the connection is
# closed as for a body refused for its size (Go's server reads 256 KiB, as registry:2 does).
# Reading every byte let any client, credentials or not, keep the reactor busy for good.
_READ_AFTER_ANSWER = 256 * 1024
_MISSING_HOST = MissingHost()


class BodySink(Protocol):
    """Receives a request body as it arrives."""

    def feed(self, data: bytes) -> Deferred[None] | None:
        """Take a chunk; return a Deferred to have the socket paused until it fires."""

    def connection_lost(self, reason: Failure) -> None:
        """The client went away before the request completed."""

    def malformed(self) -> None:
        """The server refused the body as malformed: drop what was taken of it."""

    def watch(self, ready: Callable[[], None], refused: Callable[[RegistryError], None]) -> None:
        """Call ``ready`` once the body is welcome, or ``refused`` as soon as it is not."""


SinkFactory = Callable[["RegistryRequest", bytes, bytes, "int | None"], "BodySink | None"]


class RequestObserver(Protocol):
    """
    Told about every request (`registry.ops.accounting.RequestAccounting`), by the Site, from
    the calls twisted.web makes anyway: no wrapper resource, no Deferred per request.
    """

    def started(self, request: RegistryRequest) -> None:
        """The request goes to the application (its body is in)."""

    def finished(self, request: RegistryRequest, status: int, elapsed: float) -> None:
        """
        Once per request: answered with ``status`` (the early answer of a refused upload
        included), or 499 when its client went away after `started` and before the answer.
        ``elapsed``: seconds since its first byte.
        """


def origin_form(target: bytes) -> bytes:
    """
    The path and query of an absolute-form request target (``http://host:port/v2/?n=1`` gives
    ``/v2/?n=1``); any other target as it is.  RFC 9112, section 3.2.2: a server must accept
    the absolute form (a client speaking to what it takes for a proxy sends it), and twisted.web
    would route the whole URL as a path (404).  Only ``http`` and ``https`` are taken, in any
    case; the Host header keeps its usual part.
    """
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return target
    start = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i != -1), default=len(rest))
    path = rest[start:]
    return path if path.startswith(b"/") else b"/" + path


def _innermost_transport(transport: Any) -> Any:
    """The TCP connection below any TLS wrapper (where read and send sizes live)."""
    while (
        transport is not None
        and hasattr(transport, "transport")
        and not hasattr(transport, "socket")
    ):
        transport = transport.transport
    return transport


class RegistryRequest(UnbrandedRequest):
    """A Request whose body goes to a sink chosen when its headers arrive."""

    sink: BodySink | None = None
    body_too_large: bool = False
    started: float = 0.0
    principal_name: str | None = None
    # Answered before the body was all in; what the route writes later is dropped.
    answered_early: bool = False
    access_logged: bool = False
    # The body went out through os.sendfile (registry.http.sendfile); in the access event.
    sent_with_sendfile: bool = False
    # Its kind for the metrics (`registry.ops.accounting.route_kind`), set once it is started.
    route_kind: str | None = None
    # The body is chunked and decoded by ChunkedBodyDecoder (tests check the fast path is on).
    chunked_in_bulk: bool = False
    # The server refused the body as malformed (answered 400 by twisted.web, then closed).
    body_malformed: bool = False
    # The connection ended before the whole answer was written (the client went away, or a
    # drain cut it): its access line says ``complete=false``, its metrics ``499``.
    cut_short: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._parsePOSTFormSubmission = False
        self.started = time.monotonic()
        self._body_limit = 1024 * 1024
        self._paused_by_body = False
        self._body_complete = False
        self._continue_held = False
        self._body_started = False
        self._read_after_answer = 0
        self._closing_unread = False
        # HTTP/2: the body's length, until every header is in (`gotLength`).
        self._pending_length: tuple[int | None] | None = None

    def _site(self) -> RegistrySite | None:
        site = getattr(self.channel, "site", None)
        return site if isinstance(site, RegistrySite) else None

    def request_line(self) -> tuple[bytes, bytes]:
        channel: Any = self.channel
        # HTTP/1.1 keeps the request line on the channel until the body is in; HTTP/2 streams
        # have it as attributes.
        if isinstance(channel, http.HTTPChannel):
            method, path, _ = twisted_internals.pending_request_line(channel)
            return method, origin_form(path)
        method = getattr(channel, "command", b"")
        path = getattr(channel, "path", b"")
        return bytes(method or b""), bytes(path or b"")

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if not self._speaks_http1():
            # (Once per connection: its sending loop waits while a client's window is shut.)
            twisted_internals.h2_hold_while_window_shut(self.channel)
            # twisted.web's HTTP/2 stream calls this as it meets ``content-length`` among the
            # headers, before those after it are in (an ``authorization`` sent after it was
            # not seen by the upload: 401).  The body is set up once they all are
            # (`_headers_complete`).
            if self._pending_length is None:
                self._pending_length = (length,)
            return
        self._start_body(length)

    def parseCookies(self) -> None:
        # twisted.web's HTTP/2 stream calls this once every header is in, before it answers
        # ``Expect: 100-continue`` (which `_hold_continue` may take over): the first moment.
        self._headers_complete()
        super().parseCookies()  # type: ignore[no-untyped-call]

    def _headers_complete(self) -> None:
        """Set up an HTTP/2 body whose length came with the headers, now that they all did.
        Also from its first data or its end (`handleContentChunk`, `requestReceived`), in
        case a twisted.web of another day no longer calls `parseCookies` there."""
        pending, self._pending_length = self._pending_length, None
        if pending is not None:
            self._start_body(pending[0])

    def _start_body(self, length: int | None) -> None:
        site = self._site()
        if site is None:
            return
        self._body_limit = site.max_body_size
        method, path = self.request_line()
        if self._speaks_http1() and lacks_host(self._pending_version(), self.requestHeaders):
            # Answered 400 once in (`getResourceFor`): its body goes to no upload.
            self.body_too_large = length is not None and length > self._body_limit
            return
        self.sink = site.sink_factory(self, method, path, length) if site.sink_factory else None
        if self.sink is not None:
            transport = _innermost_transport(self.channel.transport)
            if transport is not None and hasattr(transport, "bufferSize"):
                transport.bufferSize = _UPLOAD_READ_SIZE
            # Without a body there is nothing to refuse early: the route answers (a refusal
            # included) and the connection stays open for the next request.
            if length != 0 and self._speaks_http1():
                self._decode_chunks_in_bulk()
                self._hold_continue()
                self.sink.watch(self._body_welcome, self._body_refused)
            elif length != 0:
                # twisted.web files an HTTP/2 stream with its connection (where its answer
                # is queued) only once this call, made as the stream is built, returns.
                self._hold_continue()
                site.reactor.callLater(0, self._watch_body)
        elif length is not None and length > self._body_limit:
            self.body_too_large = True

    def _pending_version(self) -> bytes:
        channel: Any = self.channel
        return twisted_internals.pending_request_line(channel)[2]

    def _speaks_http1(self) -> bool:
        """Over HTTP/2 (a stream, not a channel) a body is paused and refused per stream."""
        return isinstance(self.channel, http.HTTPChannel)

    def _watch_body(self) -> None:
        """From the turn after an HTTP/2 stream's headers: ready, or refused (`gotLength`)."""
        if self.sink is not None and not self.finished and not self._disconnected:
            self.sink.watch(self._body_welcome, self._body_refused)

    def _decode_chunks_in_bulk(self) -> None:
        """A chunked upload body goes through `ChunkedBodyDecoder` instead of twisted.web's."""
        channel: Any = self.channel

        def make(
            on_data: Callable[[bytes], None], on_finish: Callable[[bytes], None]
        ) -> ChunkedBodyDecoder:
            return ChunkedBodyDecoder(on_data, on_finish, self._body_malformed)

        self.chunked_in_bulk = twisted_internals.use_chunked_decoder(channel, make)

    def _body_malformed(self) -> None:
        """twisted.web answers 400 and closes: nothing of this body is kept, and the request
        is logged as the 400 it got, not as a client that left (`connectionLost`)."""
        self.body_malformed = True
        if self.sink is not None:
            self.sink.malformed()

    def _hold_continue(self) -> None:
        """
        Take ``Expect: 100-continue`` away from twisted.web, which answers it as soon as the
        headers are in, and answer it when the sink is ready (`_body_welcome`).
        """
        expect = self.requestHeaders.getRawHeaders(b"expect")
        # (An HTTP/2 stream of twisted.web's answers it just after `gotLength`, if it is still
        # among the headers.)
        version = self._pending_version() if self._speaks_http1() else b"HTTP/2"
        if expect and expect[0].lower() == b"100-continue" and version in _CONTINUED:
            self.requestHeaders.removeHeader(b"expect")
            self._continue_held = True

    def _body_welcome(self) -> None:
        # A client tired of waiting (curl: after 1 s) sends anyway: no "100 Continue" then.
        if self._continue_held and not self._body_started and not self._disconnected:
            self._continue_held = False
            if self._speaks_http1():
                self.channel.transport.write(_CONTINUE)  # type: ignore[union-attr]
            else:  # an HTTP/2 stream: a HEADERS frame of its own
                self.channel.writeHeaders(b"HTTP/2", b"100", b"Continue", Headers())

    def _body_refused(self, error: RegistryError) -> None:
        """Answer now; the route, once the body is in, finds the request answered."""
        if self._body_complete or self.finished or self._disconnected or self.channel is None:
            return
        if not self._speaks_http1() and self._reset_unseen():
            # Refused (a write failing in the read that also carries the client's
            # RST_STREAM) before twisted.web handed over the reset: an answer queued on the
            # closed stream would stop the connection's sending loop, every stream with it.
            return
        # A client still waiting for "100 Continue" will not send the body: nothing to wait for.
        close_now = self._continue_held and not self._body_started
        self._continue_held = False
        channel: Any = self.channel
        http1 = self._speaks_http1()
        # The request line is filled in by twisted.web only once the body is in.
        self.method, self.uri = self.request_line()
        self.path = self.uri.split(b"?", 1)[0]
        if http1:
            self.clientproto = self._pending_version()
            channel.persistent = False
            self.setHeader("Connection", "close")
        else:  # only its stream ends (and HTTP/2 has no Connection header)
            self.clientproto = b"HTTP/2"
        self.setHeader(*responses.API_VERSION_HEADER)
        self.setHeader("Date", http.datetimeToString())
        body = responses.error(self, error)
        server.Request.write(self, body)
        self.answered_early = True
        site = self._site()
        if site is not None:
            site.log(self)
        if not http1:
            self._end_stream_unread(channel)
        elif close_now:
            self.loseConnection()  # type: ignore[no-untyped-call]
        elif error.status == 413 or getattr(self.sink, "read_through", True) is False:
            self._close_unread()
        else:
            # A client that stops sending but keeps the connection open is not waited for long.
            channel.setTimeout(_AFTER_REFUSAL_TIMEOUT)

    def _close_unread(self) -> None:
        """
        After refusing a body for its size, close without reading it (it may be gigabytes).
        As Go's server does: the answer, then a FIN, then nothing more is read and the
        connection is closed a moment later.  Closing at once, with the body's first bytes
        unread, would send a reset, which can reach the client before the answer; reading
        meanwhile would take half a second of whatever the client sends (on loopback, half a
        gigabyte).
        """
        self._closing_unread = True
        transport: Any = self.channel.transport
        site = self._site()
        if site is None:
            self.loseConnection()  # type: ignore[no-untyped-call]
            return
        if ISSLTransport.providedBy(transport) or not ITCPTransport.providedBy(transport):
            # TLS: close_notify after the answer; closing waits for the client's, reading
            # (and decrypting) whatever it sends meanwhile: paused, and cut as over TCP.
            self.loseConnection()  # type: ignore[no-untyped-call]
        else:
            transport.loseWriteConnection()
        if IPushProducer.providedBy(transport):
            IPushProducer(transport).pauseProducing()
        site.reactor.callLater(_RESET_AVOIDANCE_DELAY, transport.abortConnection)

    def _end_stream_unread(self, stream: Any) -> None:
        """
        HTTP/2: the early answer ends the stream, and the rest of the body is not read.  What
        still arrives waits in the stream, paused, which keeps its flow-control window shut:
        the client can send no more than the window it has (64 KiB, h2's default, which
        twisted.web keeps).  Once the answer went out whole, the stream is reset with NO_ERROR
        (RFC 9113, section 8.1: a server whose response is complete may so ask the client to
        stop sending the body), and what waited is dropped (`_stream_done`).  Closing the
        connection, as HTTP/1.1 does, would cut its other streams.
        """
        self._closing_unread = True
        stream.pauseProducing()
        twisted_internals.h2_when_done(stream, functools.partial(self._stream_done, stream))
        sink = self.sink
        self.finish()
        if sink is not None:
            # As when a client leaves mid-body: no route runs to claim what was stored.
            sink.connection_lost(Failure(ConnectionDone("upload body refused")))

    def _stream_done(self, stream: Any) -> None:
        """
        twisted.web is through with a stream `_end_stream_unread` ended: its answer went out
        (then it is reset here), or the client reset it, or the connection was lost (nothing
        to do).  What waited in the stream is dropped; its bytes go back to the connection's
        flow-control window (not the stream's: it is closed), which the other streams share.
        """
        if not twisted_internals.h2_stream_closed(stream):
            if self._disconnected:
                return
            twisted_internals.h2_reset(stream)
        # Hands what waited to `handleContentChunk`, which drops it, and the body's end to
        # `requestReceived`, which routes nothing; then acknowledges those bytes.
        stream.resumeProducing()

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        # The standard phrases (`registry.http.reasons`): twisted.web lacks some (429).
        super().setResponseCode(code, message or reasons.phrase(code))

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._headers_complete()
        if self.finished:
            return  # answered (and ended) before its body was in: `_end_stream_unread`
        self._body_complete = True
        super().requestReceived(command, origin_form(path), version)  # type: ignore[no-untyped-call]

    def write(self, data: bytes) -> None:
        if self.answered_early:
            return  # the early answer was the whole response
        if self._reset_unseen():
            return
        super().write(data)  # type: ignore[no-untyped-call]

    def finish(self) -> None:
        if self._reset_unseen():
            return
        super().finish()  # type: ignore[no-untyped-call]

    def _reset_unseen(self) -> bool:
        """An HTTP/2 stream the client reset in the read twisted.web is still handing over
        (`twisted_internals.h2_stream_closed`): the request is lost now, as it will be told,
        rather than written to a stream that no longer exists."""
        if self._disconnected or not twisted_internals.h2_stream_closed(self.channel):
            return False
        self.connectionLost(Failure(ConnectionLost("HTTP/2 stream reset by the client")))
        return True

    def handleContentChunk(self, data: bytes) -> None:
        self._headers_complete()
        self._body_started = True
        if self._closing_unread:
            return  # read before the pause took hold: dropped, and no sink may resume it
        if self.answered_early:
            self._read_after_answer += len(data)
            if self._read_after_answer > _READ_AFTER_ANSWER:
                self._close_unread()
                return
        if self.sink is not None:
            pending = self.sink.feed(data)
            if pending is not None and not self._paused_by_body:
                self._pause_body()
                pending.addBoth(self._resume_body)
            return
        if self.body_too_large:
            return
        content = self.content
        assert content is not None
        if content.tell() + len(data) > self._body_limit:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        content.write(data)

    def _pause_body(self) -> None:
        self._paused_by_body = True
        if self._speaks_http1():
            self.channel.transport.pauseProducing()  # type: ignore[union-attr]
        else:  # HTTP/2 stream: flow control through the stream
            self.channel.pauseProducing()

    def _resume_body(self, result: object) -> None:
        if not self._paused_by_body or self._closing_unread:
            return
        self._paused_by_body = False
        # A finished request has no channel attribute at all (twisted.web deletes it): the
        # body's writer can catch up after an early refusal answered the request.
        channel = getattr(self, "channel", None)
        if channel is None:
            return
        if self._speaks_http1():
            channel.transport.resumeProducing()
        else:
            channel.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        sink = self.sink
        if sink is not None and not self.finished:
            sink.connection_lost(reason)
        if not self.finished and not self.access_logged:
            site = self._site()
            if site is None:
                pass
            elif self.startedWriting and self.channel is not None:
                # Cut mid-answer (the client went away, an HTTP/2 stream reset, a drain that
                # reached its deadline): the status line went out, so the access line keeps
                # that status, with what was sent and ``complete=false``.
                self.cut_short = True
                # Over HTTP/2 what is still queued for the stream never went out.
                self.sentLength -= twisted_internals.h2_queued(self.channel) or 0
                site.log(self)
            elif self.route_kind is None and sink is not None and not self._body_complete:
                site.left_mid_body(self, 400 if self.body_malformed else 499)
            else:
                site.abandoned(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def raise_send_limit(self) -> None:
        """Before a large download: let the transport push bigger writes per reactor turn."""
        transport = _innermost_transport(self.channel.transport if self.channel else None)
        if transport is not None and hasattr(transport, "SEND_LIMIT"):
            transport.SEND_LIMIT = _DOWNLOAD_SEND_LIMIT


def answer_complete(request: Any) -> bool:
    """
    Whether ``request``'s whole answer was written: not when its connection ended first
    (`RegistryRequest.cut_short`), nor when the body written falls short of its
    ``Content-Length``.  The second catches a download whose client left while its body was
    produced: the transport stops the body's producer before it tells the request, and the
    route then finishes the request (an access line, as for a complete answer) with what it
    had written so far.  Bodies that never go out (HEAD, 1xx, 204, 304) are complete.
    """
    if getattr(request, "cut_short", False):
        return False
    if request.method == b"HEAD" or request.code < 200 or request.code in (204, 304):
        return True
    lengths = request.responseHeaders.getRawHeaders(b"content-length")
    if not lengths:
        return True  # chunked (or closed-delimited): only a lost connection tells
    try:
        expected = int(lengths[-1])
    except ValueError:
        return True
    return bool(request.sentLength >= expected)


# In an access line's text, a field's value ends at the first space, and a line at its end:
# a value with either (an HTTP/2 path, a user name from a certificate or a Basic login) would
# read as fields or lines of its own.  They are percent-encoded, as in a URL; the last field
# (the agent) keeps its spaces.  The line ends a reader splits on besides the ASCII ones
# (Python's ``splitlines``: the C1 controls, U+2028 and U+2029) are encoded too.  The
# event's fields keep the values as they are.
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")
_UNSAFE_LAST = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(value: object, last: bool) -> str:
    text = str(value)
    if text.isprintable() and (last or " " not in text):
        return text  # nothing to encode: what nearly every value is, at a fraction of a sub
    pattern = _UNSAFE_LAST if last else _UNSAFE
    # As in a URL: the UTF-8 bytes of the character (U+2028: %E2%80%A8), so that a value
    # decodes back to itself.
    return pattern.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


def access_line(fields: dict[str, object], complete: bool) -> str:
    """The text of an access event: ``key=value`` pairs, ``complete=false`` after ``bytes``
    for an answer cut short (the one case to look for, as nginx marks it)."""
    last = len(fields) - 1
    parts = [f"{key}={_escaped(value, i == last)}" for i, (key, value) in enumerate(fields.items())]
    if not complete:
        parts.insert(list(fields).index("duration_ms"), "complete=false")
    return " ".join(parts)


@implementer(misdirected.IAnswersWithoutRequest)
class RegistrySite(server.Site):
    """A Site with streaming bodies and one structured access-log line per request."""

    def __init__(
        self,
        resource: Any,
        sink_factory: SinkFactory | None = None,
        max_body_size: int = 1024 * 1024,
        access_log: bool = True,
        after_request: Callable[[int], None] | None = None,
        trusted_proxies: TrustedProxies | None = None,
        observer: RequestObserver | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, requestFactory=RegistryRequest, **kwargs)  # type: ignore[no-untyped-call]
        self.sink_factory = sink_factory
        self.max_body_size = max_body_size
        self.access_log = access_log
        # Told how many body bytes each finished request moved (in and out).
        self.after_request = after_request
        # Whose forwarding headers name the client (read by registry.http.forwarded.origin).
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        # Counts every request (the metrics): see `RequestObserver`.
        self.observer = observer
        self.displayTracebacks = False

    def startFactory(self) -> None:
        """Before the first connection: room for as many as the hard limit allows."""
        super().startFactory()
        before, after = fdlimit.raise_open_files_limit()
        if after != before:
            log.info("open files limit raised from {before} to {after}", before=before, after=after)

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if protocol is not None:
            answered = functools.partial(self.answered_without_request, addr)
            # TLS clients on a plain port get an HTTP answer at once (see the module).
            misdirected.refuse_tls(protocol, answered)
            oversized.answer_long_lines(protocol, answered)
            head_deadline.limit_head_time(protocol, self.reactor.callLater, answered)
            # After the deadline's wrapper: a head refused at once starts no deadline.
            line_ends.refuse_bare_lf(protocol, answered)
            malformed.answer_malformed(protocol, answered)
        return protocol

    def answered_without_request(self, addr: Any, status: int, sent: int) -> None:
        """
        The access line of an answer written before twisted.web made a request of what came
        (a TLS handshake on a plain port, plain HTTP on a TLS port, a head line too long, a
        head too slow): one line per answer, like any request's, with what is known (no
        method, path or headers).
        """
        if not self.access_log:
            return
        fields = {
            "method": "-",
            "path": "-",
            "status": status,
            "bytes": sent,
            "duration_ms": "-",
            "client": getattr(addr, "host", "-"),
            "user": "-",
            "agent": "-",
        }
        line = access_line(fields, True)
        log.info("access {line}", line=line, access=True, sendfile=False, complete=True, **fields)

    def getResourceFor(self, request: Any) -> Any:
        # Called once per request, as twisted.web hands it to the application.
        observer = self.observer
        # An early answer (a refused upload) was counted when it was sent.
        if (
            observer is not None
            and isinstance(request, RegistryRequest)
            and not request.answered_early
        ):
            observer.started(request)
        if (
            isinstance(request, RegistryRequest)
            and request._speaks_http1()
            and lacks_host(request.clientproto, request.requestHeaders)
        ):
            return _MISSING_HOST
        return super().getResourceFor(request)  # type: ignore[no-untyped-call]

    def abandoned(self, request: RegistryRequest) -> None:
        """Its client went away before any of the answer was written (a handler waiting on
        an upstream, a lock, the storage): one access line with status 499, as nginx writes,
        and counted as 499 once.  Without the line, a pull that clients give up on while the
        upstream hangs leaves no trace in the access log.  Only a request that was routed:
        one whose head never completed was answered (and logged) as such, or is nothing."""
        if request.route_kind is None:
            return
        request.code = 499
        request.cut_short = True  # not answered at all
        self.log(request)

    def left_mid_body(self, request: RegistryRequest, status: int = 499) -> None:
        """
        An upload whose body did not all arrive (the route never ran): counted as 499 with its
        route, and its access line, as any request its client left; as 400 when the server
        refused the body as malformed (twisted.web answered that, then closed).
        """
        # twisted.web fills the request line in only once the body is in.
        method, uri = request.request_line()
        request.method, request.uri = method, uri
        request.path = uri.split(b"?", 1)[0]
        request.code = status
        request.cut_short = status == 499  # not answered at all
        self.log(request)

    def log(self, request: Any) -> None:
        # Called by twisted.web once per answered request (and by an early answer); the one
        # place that counts it, for the metrics as for the access log.
        if getattr(request, "access_logged", False):
            return  # answered early and logged then
        registry_request = isinstance(request, RegistryRequest)
        if registry_request:
            request.access_logged = True
        if self.after_request is not None:
            self.after_request(request.sentLength + getattr(request.sink, "received", 0))
        now = time.monotonic()
        elapsed = now - getattr(request, "started", now)
        complete = answer_complete(request)
        if self.observer is not None and registry_request:
            # An answer cut short counts as 499 (docs/monitoring.md), whatever status it began
            # with: the same requests the access log marks ``complete=false``.
            self.observer.finished(request, request.code if complete else 499, elapsed)
        if not self.access_log:
            return
        fields = {
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1")[:512],
            "status": request.code,
            "bytes": request.sentLength,
            "duration_ms": round(elapsed * 1000, 1),
            "client": client_address(request),
            "user": getattr(request, "principal_name", None) or "-",
            "agent": (request_header(request, "user-agent") or "-")[:120],
        }
        # The line is formatted here, once: the fields stay in the event for structured
        # observers (JSON logs), and text observers do not parse a format string per request.
        # ``complete=false`` follows ``bytes`` only on an answer cut short, the one case to
        # look for (as nginx, which also keeps the status it sent); the event always has it.
        line = access_line(fields, complete)
        log.info(
            "access {line}",
            line=line,
            access=True,
            sendfile=getattr(request, "sent_with_sendfile", False),
            complete=complete,
            **fields,
        )
