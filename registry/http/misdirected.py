"""
Answers for clients that speak the wrong protocol to a port: TLS to a plain-HTTP port, plain
HTTP to a TLS port.  Both get an HTTP 400 that says what happened, at once, and the connection
closes.

TLS on a plain port: skopeo, podman, dockerd and the docker CLI, told a registry is
"insecure", try TLS first and fall back to plain HTTP only when the answer reads
``server gave HTTP response to HTTPS client`` (Go's TLS client says so when the first bytes
back are ``HTTP/``).  Without an answer twisted.web would wait for a request line that never
comes, and the client would give up (``docker manifest push --insecure`` fails) or stall for
its TLS timeout.

Plain HTTP on a TLS port: OpenSSL would just drop the connection, and the client would see an
empty reply.  Go's server answers ``400 Bad Request`` with "Client sent an HTTP request to an
HTTPS server."; so do we.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IProtocol, ISSLTransport, ITCPTransport, ITransport
from zope.interface import Interface, directlyProvides, providedBy

# The first byte of a TLS record carrying a handshake (every ClientHello starts with it).
_TLS_HANDSHAKE = 0x16


def _answer(text: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return (
        version + b" 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n"
        b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text
    )


TLS_ON_PLAIN_HTTP = _answer(b"This port speaks plain HTTP; the client sent a TLS handshake.\n")
# As Go's net/http answers (HTTP/1.0: the request's version is not known).
PLAIN_HTTP_ON_TLS = _answer(b"Client sent an HTTP request to an HTTPS server.\n", b"HTTP/1.0")


def is_tls_handshake(data: bytes) -> bool:
    return bool(data) and data[0] == _TLS_HANDSHAKE


def _refuse_when(
    protocol: IProtocol,
    wrong: Callable[[bytes], bool],
    answer: bytes,
    answered: Answered | None = None,
) -> None:
    """
    Look at the first bytes ``protocol`` receives: when ``wrong(data)``, write ``answer`` and
    close, without ``protocol`` seeing them.  After the first call the protocol's own methods
    are called directly again.

    The write side closes first and what still arrives is dropped until the client closes:
    a ClientHello can span TCP segments, and closing a socket with unread bytes in it sends
    a reset that can reach the client before the answer.  A client that never closes is
    dropped by the HTTP channel's idle timeout.

    The transport is taken from ``makeConnection`` (public `IProtocol`) because the protocol
    twisted.web builds per connection does not expose its transport itself.
    """
    transport: list[ITransport] = []
    make_connection = protocol.makeConnection
    data_received = protocol.dataReceived
    instance: Any = protocol

    def connected(given: ITransport) -> None:
        del instance.makeConnection
        transport.append(given)
        make_connection(given)

    def first_data(data: bytes) -> None:
        if not transport or not wrong(data):
            del instance.dataReceived
            data_received(data)
            return
        instance.dataReceived = _drop
        answer_and_close(transport[0], answer, answered)

    instance.makeConnection = connected
    instance.dataReceived = first_data


# Told of an answer written here, before any request exists (status, bytes of its body, as
# every access line counts them): so that it gets its access-log line like every answered
# request.
Answered = Callable[[int, int], None]


def plain_answer(status: str, text: str) -> bytes:
    """A whole HTTP/1.1 answer of ``status`` (``"400 Bad Request"``) with ``text`` as its
    plain-text body, closing the connection: what is written before a request exists."""
    body = text.encode()
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def answered_body(answer: bytes) -> int:
    """The bytes of a raw answer's body (after its head)."""
    return len(answer) - answer.index(b"\r\n\r\n") - 4


class IAnswersWithoutRequest(Interface):
    """
    A protocol factory that logs answers given before a request exists (`RegistrySite`), or
    one standing in front of such a factory and passing the call on: the TLS layer, which
    answers plain HTTP sent to a TLS port, finds it through the factories it wraps.
    """

    def answered_without_request(addr: object, status: int, sent: int) -> None:
        """One access line for an answer of ``status`` with a body of ``sent`` bytes, to
        ``addr``."""


def answered_for(factory: object, addr: object) -> Answered | None:
    """The `Answered` callback of ``factory`` for a connection from ``addr``, if it has one."""
    site = IAnswersWithoutRequest(factory, None)
    if site is None:
        return None
    return functools.partial(site.answered_without_request, addr)


def pass_answers_on(front: object, behind: object) -> None:
    """Make ``front`` (a factory wrapping ``behind``) provide `IAnswersWithoutRequest` when
    ``behind`` does; ``front`` passes the calls on with its own method of that name."""
    if IAnswersWithoutRequest.providedBy(behind):
        directlyProvides(front, providedBy(front), IAnswersWithoutRequest)


def answer_and_close(
    transport: ITransport, answer: bytes, answered: Answered | None = None
) -> None:
    """
    Write ``answer`` and close, the write side first on plain TCP: the caller drops what
    still arrives, so that no unread bytes turn the close into a reset that can overtake the
    answer (see `_refuse_when`).
    """
    transport.write(answer)
    if answered is not None:
        answered(int(answer.split(b" ", 2)[1]), answered_body(answer))
    if ITCPTransport.providedBy(transport) and not ISSLTransport.providedBy(transport):
        transport.loseWriteConnection()
    else:
        transport.loseConnection()


def _drop(data: bytes) -> None:
    """The rest of a refused client's first message."""


def refuse_tls(protocol: IProtocol, answered: Answered | None = None) -> None:
    """On a plain-HTTP port: answer a TLS handshake with an HTTP 400 (`TLS_ON_PLAIN_HTTP`)."""
    _refuse_when(protocol, is_tls_handshake, TLS_ON_PLAIN_HTTP, answered)


def looks_like_http(data: bytes) -> bool:
    """Whether ``data`` starts as an HTTP/1.x request does (a method: capital letters).  Go's
    server makes the same guess; anything else (a TLS alert, a record of another version) is
    left to OpenSSL, whose failed handshake is logged as such."""
    return bool(data) and 0x41 <= data[0] <= 0x5A


def refuse_plain_http(protocol: IProtocol, answered: Answered | None = None) -> None:
    """
    On a TLS port, ``protocol`` being the TLS layer (it sees the raw bytes): answer what
    looks like an HTTP request with Go's 400 (`PLAIN_HTTP_ON_TLS`).
    """
    _refuse_when(protocol, looks_like_http, PLAIN_HTTP_ON_TLS, answered)
