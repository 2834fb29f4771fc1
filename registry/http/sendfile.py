"""
Blob bodies sent with ``os.sendfile``: from the page cache to the socket, never through Python.

On a plain TCP connection (no TLS: the kernel cannot encrypt; not HTTP/2: bodies are framed)
a response whose body is one byte range of a local file is sent by the kernel.  A pull then
costs the server a system call per socket-buffer's worth of data instead of a thread-pool read,
a copy into Python and a copy out of it per chunk.  Anything else (TLS, HTTP/2, S3 or in-memory
storage, a producer wrapped by the pull-through cache) goes through `responses.stream`.

How it shares the socket with Twisted, through the consumer API of the TCP transport:

1. ``request.write(b"")`` makes twisted.web put the status line and headers in the transport's
   write buffer, with its usual bookkeeping (``Content-Length`` is set, so no chunking).
2. The channel, which is the transport's registered producer, is swapped for a `_Sender`
   registered as a *pull* producer.  A transport asks a pull producer for more
   (``resumeProducing``) each time its own buffer has been written out completely; so the
   first call after ``startWriting`` comes once the headers are on the wire, and from then on
   the socket is ours.
3. ``os.sendfile`` goes on until the socket would block; then ``startWriting`` again: the
   reactor's next "writable" makes the transport find its buffer empty and call us back.
   Each turn sends at most `_TURN_BUDGET` so other connections get their turns.
4. At the end the channel is registered again and told the buffer is empty; the route returns
   and twisted.web finishes the request, so the connection stays open for the next request.

A client that goes away makes the transport stop its producer (us: the file is closed, the
handler sees `CancelledError`); a send that fails (the peer reset) drops the connection.

Only public Twisted API is called.  Which producer a transport holds is read from its
``producer`` and ``streamingProducer`` attributes (documented instance variables of Twisted's
consumer mixin, not part of an interface), through `registry.http.twisted_internals`, whose
start-up check covers the rest of what this module calls on Twisted's classes too.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any

from twisted.internet import abstract
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPullProducer, ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IBodyProducer, IRequest
from zope.interface import implementer

from registry.http import responses, twisted_internals
from registry.storage.driver import StorageError
from registry.storage.producers import ILocalFile, LocalRange

log = Logger()

# Most bytes sent in one reactor turn before the other connections get theirs.  On loopback a
# socket takes a few MiB per call; 8 MiB is a handful of calls, a few milliseconds.
_TURN_BUDGET = 8 * 1024 * 1024
# The peer went away (the connection is dropped, and the handler sees a cancellation).
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}


@functools.cache
def platform_problems() -> tuple[str, ...]:
    """
    Why this platform cannot send with ``os.sendfile`` (empty when it can).  Checked at
    start-up and before the first use: with any problem, bodies take the producer path.  What
    this module needs from Twisted is checked with the rest, by
    `registry.http.twisted_internals.problems`, and start-up refuses a Twisted without it.
    """
    if not hasattr(os, "sendfile"):
        return ("os.sendfile is not available on this platform",)
    return ()


def _socket_transport(request: IRequest) -> Any | None:
    """The plain TCP transport under an HTTP/1.x request, when sendfile may use it."""
    if platform_problems():
        return None
    channel: Any = getattr(request, "channel", None)
    if not isinstance(channel, http.HTTPChannel):  # HTTP/2 streams, test doubles
        return None
    transport = channel.transport
    if (
        transport is None
        or not ITCPTransport.providedBy(transport)
        or ISSLTransport.providedBy(transport)
        or not isinstance(transport, abstract.FileDescriptor)
        or not transport.connected
        or transport.disconnecting
    ):
        return None
    if twisted_internals.transport_producer(transport) != (channel, True):
        return None  # something else drives this connection: leave it alone
    return transport


def _plain_body(request: IRequest, length: object) -> bool:
    """A response not started yet whose body is exactly ``Content-Length`` = ``length`` bytes."""
    req: Any = request
    declared = request.responseHeaders.getRawHeaders(b"content-length")
    return (
        request.method == b"GET"
        and not req.startedWriting
        and req.producer is None
        and declared is not None
        and declared == [str(length).encode()]
    )


async def stream(request: IRequest, producer: IBodyProducer) -> None:
    """
    Send ``producer``'s bytes as the response body: with ``os.sendfile`` when the producer is
    a local file and the connection plain HTTP/1.x over TCP, else through `responses.stream`.
    Errors as there: `CancelledError` when the client left, `responses.ResponseInterrupted`
    (the connection dropped) when the file could not be sent.
    """
    transport = _socket_transport(request)
    local = (
        ILocalFile(producer).detach()
        if transport is not None
        and ILocalFile.providedBy(producer)
        and _plain_body(request, producer.length)
        else None
    )
    if local is None:
        await responses.stream(request, producer)
        return
    sender = _Sender(request, transport, local)
    try:
        await sender.start()
    except (CancelledError, responses.ResponseInterrupted):
        raise
    except Exception as exc:
        raise responses.ResponseInterrupted(str(exc)) from exc


@implementer(IPullProducer)
class _Sender:
    """Sends one file range on a transport it has taken over from the HTTP channel."""

    def __init__(self, request: IRequest, transport: Any, local: LocalRange) -> None:
        self._request: Any = request
        self._transport = transport
        self._channel = request.channel  # type: ignore[attr-defined]
        self._file: Any = local.file
        self._offset = local.offset
        self._remaining = local.length
        self._armed = False
        self._over = False
        self._done: Deferred[None] = Deferred(self._cancel)

    def start(self) -> Deferred[None]:
        """Fires once every byte is in the socket; the transport is the channel's again."""
        self._request.write(b"")  # the status line and headers, into Twisted's buffer
        transport = self._transport
        transport.unregisterProducer()
        # A pull producer is resumed right away by registerProducer (ignored: the headers
        # may still be buffered), then each time the transport has written out its buffer.
        transport.registerProducer(self, False)
        if self._over:  # the connection was lost meanwhile
            return self._done
        self._armed = True
        transport.startWriting()
        return self._done

    def resumeProducing(self) -> None:
        if not self._armed or self._over:
            return
        socket, source = self._transport.fileno(), self._file.fileno()
        budget = _TURN_BUDGET
        while self._remaining > 0 and budget > 0:
            wanted = min(self._remaining, budget)
            try:
                sent = os.sendfile(socket, source, self._offset, wanted)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                self._failed(exc)
                return
            if sent == 0:  # the file is shorter than its size said
                self._failed(OSError(errno.EIO, "blob file shrank while sending"))
                return
            self._offset += sent
            self._remaining -= sent
            budget -= sent
            self._request.sentLength += sent
            if sent < wanted:
                break  # the socket's buffer is full: the next call would only say EAGAIN
        if self._remaining > 0:
            self._transport.startWriting()  # resumed when the socket takes more
            return
        self._request.sent_with_sendfile = True
        self._end()
        self._transport.unregisterProducer()
        self._transport.registerProducer(self._channel, True)
        # The transport's buffer is empty: a channel it had paused may go on.
        self._channel.resumeProducing()
        self._done.callback(None)

    def stopProducing(self) -> None:
        """The connection was lost (the transport stops its producer)."""
        if self._end():
            self._done.errback(Failure(CancelledError("connection lost during sendfile")))

    def _cancel(self, done: Deferred[None]) -> None:
        """The handler was cancelled mid-body: the response cannot be completed any more."""
        if self._end():
            self._transport.abortConnection()
            done.errback(Failure(CancelledError("sendfile cancelled")))

    def _failed(self, exc: OSError) -> None:
        if not self._end():
            return
        self._transport.abortConnection()
        if exc.errno in _GONE:
            self._done.errback(Failure(CancelledError(f"client went away: {exc.strerror}")))
        else:
            reason = exc.strerror or str(exc)
            self._done.errback(Failure(StorageError(f"sending a blob file: {reason}")))

    def _end(self) -> bool:
        """Close the file once; True the first time (whoever settles the Deferred)."""
        if self._over:
            return False
        self._over = True
        self._file.close()
        return True
