"""
Streaming a fill in progress from the instance that holds it to the other instances.

The holder serves ``GET /fills/<cache>/<digest>?offset=N&length=M`` on its ``[fleet] listen``
endpoint, an internal address, to the other instances only:

- deny by default: a request without ``Authorization: Bearer <[fleet] secret>`` gets 401, and
  nothing else than that one path exists (404);
- it serves only fills in flight on this instance (404 otherwise: the caller then reads the
  stored blob, or takes over), from the growing file with a `TailProducer`, so the bytes go
  out as they arrive and the last byte only once the whole blob is verified;
- bounded: at most ``max_streams`` at once (503 beyond), and no more than the fill's size.

The link may be TLS: ``listen`` an ``ssl:`` endpoint (built as ``--port`` builds its own, so
plain HTTP sent to it gets a 400 saying so) and ``advertise`` an ``https://`` URL.  The caller
then checks the holder's certificate against ``[fleet] tls_cafile`` and may show its own
(mutual TLS).  Deny by default here too: a fleet that uses TLS never opens a plain-http peer
URL (the secret would cross the network in clear), and a certificate that does not verify
is a `PeerTLSFailure`, never retried without TLS; the caller waits for the blob as it does
for an unreachable holder.

The caller (`PeerClient`) relays such a response into its own client's response through
`BodyRelay`, which adds an idle timeout, so a holder that vanishes without closing its
connections does not hold a client forever.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone
from twisted.web.iweb import IBodyProducer, IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.client._body import BodyRelay
from registry.http.body_head import read_head
from registry.http.bounded_agent import bounded_agent
from registry.http.twisted_internals import quiet_pool
from registry.http.unbranded import UnbrandedRequest
from registry.proxy.errors import UpstreamError
from registry.proxy.fill import Fill, TailProducer

log = Logger()

FillLookup = Callable[[str, Digest], Fill | None]
MAX_STREAMS = 256
# How much of a peer's answer other than a stream is read (for the log line).
ERROR_BODY_LIMIT = 1024


class PeerUnavailable(Exception):
    """The holder did not serve the fill (gone, refused, no longer filling)."""


def _bearer(request: IRequest) -> bytes:
    value = request.getHeader(b"authorization") or b""
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


class PeerResource(Resource):
    """The holder's side; see the module docstring."""

    isLeaf = True

    def __init__(
        self,
        secret: str,
        lookup: FillLookup,
        driver_for: Callable[[str], Any],
        max_streams: int = MAX_STREAMS,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._secret = secret.encode()
        self._lookup = lookup
        self._driver_for = driver_for
        self.max_streams = max_streams
        self.streams = 0

    def render(self, request: Any) -> bytes | int:
        request.setHeader(b"content-type", b"text/plain")
        if not self._secret or not hmac.compare_digest(_bearer(request), self._secret):
            request.setResponseCode(401)
            return b"unauthorized\n"
        parts = request.path.decode("ascii", "replace").strip("/").split("/")
        if request.method != b"GET" or len(parts) != 3 or parts[0] != "fills":
            request.setResponseCode(404)
            return b"not found\n"
        try:
            digest = Digest.parse(parts[2])
            offset = int(request.args.get(b"offset", [b"0"])[0])
            length = int(request.args.get(b"length", [b"-1"])[0])
            if offset < 0 or length < -1:  # (-1: to the blob's end)
                raise ValueError(f"offset {offset}, length {length}")
        except (ValueError, RegistryError):
            request.setResponseCode(400)
            return b"bad request\n"
        if self.streams >= self.max_streams:
            request.setResponseCode(503)
            return b"too many streams\n"
        self.streams += 1
        d = Deferred.fromCoroutine(self._serve(request, parts[1], digest, offset, length))
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def ended(result: object) -> None:
            self.streams -= 1
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.warn(
                    "peer stream of {digest} ended: {error}",
                    digest=str(digest),
                    error=result.getErrorMessage(),
                )

        d.addBoth(ended)
        return NOT_DONE_YET

    async def _serve(
        self, request: Any, cache: str, digest: Digest, offset: int, length: int
    ) -> None:
        fill = self._lookup(cache, digest)
        # Until the upstream answered (bounded by the upstream's own timeout).
        while fill is not None and not fill.opened and not fill.finished:
            await fill.changed()
        if fill is None or fill.error is not None or fill.size is None:
            request.setResponseCode(404)
            request.write(b"no such fill in flight\n")
            request.finish()
            return
        size = fill.size
        if length == -1:  # to the blob's end
            length = size - offset
        if offset < 0 or offset + length > size or length <= 0:
            request.setResponseCode(416)
            request.write(b"range outside the blob\n")
            request.finish()
            return
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(length).encode())
        request.setHeader(b"x-blob-size", str(size).encode())
        request.write(b"")  # the headers now: the caller waits for them, not for the bytes
        producer = TailProducer(fill, self._driver_for(cache), offset, length)
        request.registerProducer(producer, True)
        try:
            await producer.startProducing(request)
        except CancelledError:
            producer.stopProducing()
            raise
        finally:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.unregisterProducer()
        if not request.finished:
            request.finish()


class PeerSite(Site):
    """The fleet's peer listener: one structured line per request, like the registry's own
    access lines (twisted.web's default is an Apache-style line, unlike every other one).
    At info level: a fleet's instances stream fills to each other all day."""

    noisy = False
    requestFactory = UnbrandedRequest

    def log(self, request: Any) -> None:
        client = request.getClientAddress()
        log.info(
            "peer access method={method} path={path} status={status} bytes={bytes} client={client}",
            method=request.method.decode("latin-1"),
            path=request.uri.decode("latin-1")[:512],
            status=request.code,
            bytes=request.sentLength,
            client=getattr(client, "host", "-"),
            peer=True,
        )


class _ToConsumer(Protocol):
    """Writes a peer body into the consumer; ``done`` fires when it ended complete."""

    def __init__(self, consumer: IConsumer, on_write: Callable[[bytes], None]) -> None:
        self.consumer = consumer
        self.on_write = on_write
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.on_write(data)
        self.consumer.write(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if isinstance(reason.value, ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)


@implementer(IBodyProducer, IPushProducer)
class PeerProducer:
    """``length`` bytes of a fill streamed from its holder (the response is already open)."""

    def __init__(
        self,
        response: Any,
        digest: Digest,
        length: int,
        reactor: Any,
        idle: float,
        origin: str = "a peer",
    ):
        # Where these bytes come from (`ResumingProducer` names it if they hash wrong).
        self.origin = origin
        self._response = response
        self._digest = digest
        self.length = length
        self._reactor = reactor
        self._idle = idle
        self._relay: BodyRelay | None = None
        self._paused = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        inner = _ToConsumer(consumer, lambda _data: None)
        relay = BodyRelay(
            inner,
            reactor=self._reactor,
            digest=self._digest,
            length=self.length,
            verify=False,
            idle_timeout=self._idle,
            on_bytes=lambda _n: None,
            on_error=lambda: None,
        )
        self._relay = relay
        self._response.deliverBody(relay)
        if self._paused:
            relay.pause()
        return inner.done

    def pauseProducing(self) -> None:
        self._paused = True
        if self._relay is not None:
            self._relay.pause()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._relay is not None:
            self._relay.resume()

    def stopProducing(self) -> None:
        if self._relay is not None:
            self._relay.abort(UpstreamError(None, "peer stream stopped"))
        else:
            self._response.deliverBody(_Discard())


def _first_line(data: bytes) -> str:
    """A body's first line for a log line: printable ASCII only."""
    line = data.split(b"\n", 1)[0].decode("ascii", "replace")
    return "".join(c for c in line if c.isprintable()).strip()[:200]


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS reason a request failed (a certificate that did not verify, a handshake the
    holder refused), in one line; None when it failed for another reason."""
    from OpenSSL import SSL

    reasons = getattr(exc, "reasons", None) or [exc]
    for reason in reasons:
        value = getattr(reason, "value", reason)
        if isinstance(value, SSL.Error):
            details = [
                str(part)
                for entry in (value.args[0] if value.args else [])
                if isinstance(entry, tuple)
                for part in entry[-1:]
            ]
            return ", ".join(details) or "TLS handshake failed"
    return None


class PeerTLSFailure(PeerUnavailable):
    """The holder's TLS did not pass: its certificate did not verify against
    ``[fleet] tls_cafile``, or it refused this instance's (mutual TLS).  Never retried over
    plain HTTP."""


@attrs.frozen
class PeerTLS:
    """``[fleet] tls_cafile`` / ``tls_certfile`` / ``tls_keyfile``: whom to trust when a
    peer URL is https, and the client certificate to show.  ``required``: plain-http peer
    URLs are refused (this fleet uses TLS; the secret never goes out in clear)."""

    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    required: bool = False

    def policy(self) -> Any:
        """The `IPolicyForHTTPS` for peer URLs (pyOpenSSL is loaded only here)."""
        from registry.client._tls import TLSOptions

        return TLSOptions(
            ca_file=self.cafile or None,
            cert_file=self.certfile or None,
            key_file=self.keyfile or None,
        ).policy()


@attrs.define(eq=False)
class PeerClient:
    """Opens fills held by other instances."""

    reactor: Any
    secret: str
    idle: float
    tls: PeerTLS = attrs.field(factory=PeerTLS)
    _pool: HTTPConnectionPool = attrs.field(init=False)
    _http: HTTPClient = attrs.field(init=False)
    _https: HTTPClient | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        # Not persistent: a stream is long and ends with its fill; nothing to reuse.
        self._pool = quiet_pool(HTTPConnectionPool(self.reactor, persistent=False))
        self._http = HTTPClient(bounded_agent(self.reactor, pool=self._pool))

    def _client_for(self, url: str) -> HTTPClient:
        """The HTTP client for a peer URL: TLS under the fleet's settings, or plain."""
        if not url.lower().startswith("https://"):
            if self.tls.required:
                raise PeerTLSFailure(f"{url}: plain http refused, this fleet uses TLS")
            return self._http
        if self._https is None:
            try:
                policy = self.tls.policy()
            except Exception as exc:  # checked at start-up; a file changed since
                raise PeerTLSFailure(f"{url}: TLS settings: {exc}") from None
            self._https = HTTPClient(bounded_agent(self.reactor, tls=policy, pool=self._pool))
        return self._https

    async def open(
        self, url: str, cache: str, digest: Digest, offset: int, length: int
    ) -> tuple[int, PeerProducer]:
        """The blob's size and a producer of ``length`` bytes from ``offset``."""
        target = f"{url.rstrip('/')}/fills/{cache}/{digest}?offset={offset}&length={length}"
        headers: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {self.secret}"}
        client = self._client_for(url)
        # A holder never redirects: one that did would be asking for the secret elsewhere.
        options: dict[str, Any] = {
            "headers": headers,
            "unbuffered": True,
            "allow_redirects": False,
            "reactor": self.reactor,
            "timeout": self.idle,
        }
        try:
            response = await client.get(target, **options)
        except Exception as exc:
            failure = _tls_failure(exc) if client is not self._http else None
            if failure is not None:
                raise PeerTLSFailure(f"{url}: TLS: {failure}") from None
            raise PeerUnavailable(f"{url}: {exc}") from exc
        if response.code != 200:
            # Only its first bytes, for the log line: the body of an answer that is not a
            # stream comes from whatever listens at that URL, and could be any size.
            data = await read_head(response, ERROR_BODY_LIMIT, self.reactor, self.idle)
            said = _first_line(data)
            shown = f": {said}" if said else ""
            raise PeerUnavailable(f"{url} answered {response.code}{shown}")
        sizes = response.headers.getRawHeaders(b"x-blob-size") or [b""]
        try:
            size = int(sizes[0])
        except ValueError:
            response.deliverBody(_Discard())
            raise PeerUnavailable(f"{url} sent no blob size") from None
        if length < 0:
            # To the blob's end: the relay must know how much (a length of -1 refused the
            # first bytes, and every stream was opened twice).
            length = size - offset
        return size, PeerProducer(
            response, digest, length, self.reactor, self.idle, origin=f"peer {url}"
        )

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
