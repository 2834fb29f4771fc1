"""
HTTP clients whose connections refuse an endless response head.

twisted.web's client keeps every status and header line a server sends, without a limit: one
response of endless header lines from an upstream registry, a CDN it redirects to, a webhook
receiver or an S3 endpoint grows the process by gigabytes before any timeout ends it.  Every
`Agent` the registry makes comes from `bounded_agent`: each of its connections counts the bytes
that arrive while a response's head (status line, headers, and any 1xx heads before them) is
being read, and aborts the connection past the limit; the request fails with
`ResponseHeadTooLarge`.  Bodies are not counted here: each reader bounds its own.

Which part of a response the bytes belong to is Twisted's parser's state, read through
`registry.http.twisted_internals.response_head_parser` (checked at start-up).
"""

from __future__ import annotations

import ipaddress
import weakref
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from registry.http import twisted_internals
from registry.http.connecting import cancelled_as_cancelled

# Far above any real response head (nginx's default buffer for an upstream's is 4-8 KiB;
# twisted.web's server takes 16 KiB of request head), far below what would hurt.
MAX_RESPONSE_HEAD = 64 * 1024


class ResponseHeadTooLarge(Exception):
    """The server's response head (status line and headers), or one line of it, went past
    the limit."""

    def __init__(self, limit: int, what: str = "response head") -> None:
        detail = " (status line and headers)" if what == "response head" else ""
        super().__init__(f"{what} over {limit // 1024} KiB{detail}")
        self.limit = limit


class _HeadLimit(ProtocolWrapper):
    """Counts a response head's bytes between the connection and the HTTP client protocol."""

    factory: _HeadLimitFactory
    _counted: weakref.ref[object] | None = None
    _bytes = 0
    _refused = False
    _why: ResponseHeadTooLarge | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        inner = self.wrappedProtocol
        before = twisted_internals.response_head_parser(inner)
        inner.dataReceived(data)
        # Counted after the parser had it, and only when one response's head was read before
        # and still is after: a read that ends a head and starts the body is not counted (the
        # body can be large), nor one whose response ended and whose connection already
        # carries the next request (its parser new, in its head: none of these bytes are its).
        parser = twisted_internals.response_head_parser(inner)
        if parser is None:
            self._counted = None
            return
        if self._counted is None or self._counted() is not parser:
            # Another response (a new request on a kept-alive connection) starts from zero.
            self._counted = weakref.ref(parser)
            self._bytes = 0
        if parser is not before:
            return
        self._bytes += len(data)
        if self._bytes > self.factory.limit:
            self._refused = True
            self._why = ResponseHeadTooLarge(self.factory.limit)
            transport: Any = self.transport
            transport.abortConnection()

    def loseConnection(self) -> None:
        # While a head is read, the only close from this side is Twisted's parser refusing a
        # header line over its own limit (`LineReceiver.MAX_LENGTH`): said as such, not as the
        # server closing cleanly.
        parser = twisted_internals.response_head_parser(self.wrappedProtocol)
        if parser is not None and not self._refused:
            self._refused = True
            limit = int(getattr(parser, "MAX_LENGTH", 16384))
            self._why = ResponseHeadTooLarge(limit, "a response header line")
        super().loseConnection()  # type: ignore[no-untyped-call]

    # Set through the wrapper, the read and send sizes must reach the connection under it
    # (`registry.client._body.set_read_size`, the S3 pool's connections): an attribute set on
    # the wrapper itself would leave Twisted moving 64 KiB at a time, a reactor turn (and a
    # parser trip) each.
    @property
    def bufferSize(self) -> int:
        transport: Any = self.transport
        size: int = transport.bufferSize
        return size

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        transport: Any = self.transport
        transport.bufferSize = size

    @property
    def SEND_LIMIT(self) -> int:
        transport: Any = self.transport
        limit: int = transport.SEND_LIMIT
        return limit

    @SEND_LIMIT.setter
    def SEND_LIMIT(self, limit: int) -> None:
        transport: Any = self.transport
        transport.SEND_LIMIT = limit

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._why is not None:
            reason = Failure(self._why)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class _HeadLimitFactory(WrappingFactory):
    protocol = _HeadLimit
    noisy = False  # the pool's own factory is made quiet (quiet_pool); so is this one

    def __init__(self, wrapped: IProtocolFactory, limit: int) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.limit = limit


@implementer(IStreamClientEndpoint)
class _HeadLimitEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint, limit: int) -> None:
        self._endpoint = endpoint
        self._limit = limit

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._endpoint.connect(_HeadLimitFactory(protocolFactory, self._limit))

        def unwrapped(wrapper: Any) -> IProtocol:
            # The pool keeps and calls the HTTP client protocol itself, as wrapClientTLS's
            # endpoint hands back the protocol it wrapped.
            inner: IProtocol = wrapper.wrappedProtocol
            return inner

        return connecting.addCallback(unwrapped)


def tcp_endpoint(
    reactor: Any, host: str, port: int, timeout: float | None = None
) -> IStreamClientEndpoint:
    """The TCP endpoint to ``host``: connecting straight to an IP address, a host name through
    `HostnameEndpoint` (name resolution, then its addresses one after the other).

    An IP address never goes through `HostnameEndpoint`: it reports a failed attempt only
    once its next attempt is due (``attemptDelay``, 0.3 s), even with no other address to try,
    so every request to an upstream that refuses connections (down, restarting) would wait
    that long for its 503.  A scoped IPv6 address (``fe80::1%eth0``) is left to name
    resolution, which understands the scope."""
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    try:
        address = ipaddress.ip_address(host) if "%" not in host else None
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv4Address):
        return TCP4ClientEndpoint(reactor, host, port, **options)
    if isinstance(address, ipaddress.IPv6Address):
        return TCP6ClientEndpoint(reactor, host, port, **options)
    return HostnameEndpoint(reactor, host, port, **options)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """TCP for http (`tcp_endpoint`), TLS under ``policy`` for https (as `Agent`'s own),
    head-limited, a cancelled attempt reported as one (`registry.http.connecting`)."""

    def __init__(
        self, reactor: Any, policy: IPolicyForHTTPS, timeout: float | None, limit: int
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = timeout
        self._limit = limit

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII") from None
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # an IPv6 address, as a URL writes it ([::1])
        endpoint = tcp_endpoint(self._reactor, host, uri.port, self._timeout)
        if uri.scheme == b"https":
            from registry.http.host_check import HostChecked  # pyOpenSSL: with TLS only

            netloc = host.encode("ascii")
            creator = HostChecked(self._policy.creatorForNetloc(netloc, uri.port), host)
            endpoint = wrapClientTLS(creator, endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        endpoint = cancelled_as_cancelled(endpoint, uri.host, uri.port)
        return _HeadLimitEndpoint(endpoint, self._limit)


def bounded_agent(
    reactor: Any,
    *,
    pool: HTTPConnectionPool | None = None,
    tls: IPolicyForHTTPS | None = None,
    connect_timeout: float | None = None,
    limit: int = MAX_RESPONSE_HEAD,
) -> Agent:
    """An `Agent` like ``Agent(reactor, tls, connect_timeout, pool=pool)`` whose connections
    refuse a response head over ``limit`` bytes."""
    policy = tls if tls is not None else BrowserLikePolicyForHTTPS()
    endpoints = _Endpoints(reactor, policy, connect_timeout, limit)
    agent: Agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return agent
