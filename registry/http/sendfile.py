"""
Blob bodies sent with ``os.sendfile``: from the page cache to the socket, never through Python.

On a plain TCP connection (no TLS: the kernel cannot encrypt; not HTTP/2: bodies are framed)
a response whose body is one byte range of a local file is sent by the kernel.  A pull then
costs the server a system call per socket-buffer's worth of data instead of a thread-pool read,
a copy into Python and a copy out of it per chunk.  Anything else (TLS, HTTP/2, S3 or in-memory
storage, a producer wrapped by the pull-through cache) goes through `responses.stream`.

Not to a peer on loopback, unless asked (``[http] sendfile = true``): there the receiving
process must copy the bytes out of the socket on this machine anyway, and over loopback the
producer path pulls faster, for no more server CPU (``bench/sendfile.py`` compares the two;
the likely reason is that the receiver then copies from buffers the registry just wrote,
still in the CPU's caches, instead of from page-cache pages sendfile hands over untouched).
Over a network card the copy sendfile saves is the whole point.

How it shares the socket with Twisted, through the consumer API of the TCP transport:

1. ``request.write(b"")`` makes twisted.web put the status line and headers in the transport's
   write buffer, with its usual bookkeeping (``Content-Length`` is set, so no chunking).
2. The channel, which is the transport's registered producer, is swapped for a `_Sender`
   registered as a *pull* producer.  A transport asks a pull producer for more
   (``resumeProducing``) each time its own buffer has been written out completely; so the
   first call after ``startWriting`` comes once the headers are on the wire, and from then on
   the socket is ours.
3. Each ``resumeProducing`` runs ``os.sendfile`` in the storage thread pool (the one whose
   threads read files for the producer path), never on the reactor thread: a body that is not
   in the page cache is read from disk inside ``sendfile``, and that wait holds up one pool
   thread instead of every connection.  The thread sends `_TURN_BUDGET` bytes, for
   `_TURN_SECONDS`, at most, so that other downloads get the threads in turn, waiting up to
   `_PATIENCE_MS` each time the (non-blocking) socket is full; a socket that stays full
   hands the wait back to the reactor: ``startWriting`` again, and the reactor's next
   "writable" makes the transport find its buffer empty and call us back.  That is the flow
   control: one call in a thread at a time per connection, started only when the socket
   takes more.
4. At the end the channel is registered again and told the buffer is empty; the route returns
   and twisted.web finishes the request, so the connection stays open for the next request.

The thread writes to a duplicate of the socket's descriptor (``os.dup``), closed by us once
no call is running: if the connection is lost meanwhile, Twisted closes its own descriptor,
and its number can be reused by a new connection at once, while ours still names the old one.

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
import ipaddress
import os
import select
import time
from typing import Any

from twisted.internet import abstract
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPullProducer, ISSLTransport, ITCPTransport
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IBodyProducer, IRequest
from zope.interface import implementer

from registry.http import responses, twisted_internals
from registry.storage.driver import StorageError
from registry.storage.producers import ILocalFile, LocalRange

log = Logger()

# Most bytes sent in one thread-pool call before other downloads get their turn: tens of
# milliseconds at loopback speed when the file is in the page cache.
_TURN_BUDGET = 64 * 1024 * 1024
# And at most this long, so that slow clients cannot keep the pool's threads to themselves.
_TURN_SECONDS = 0.05
# How long a pool thread waits for a full socket to take more before handing the wait to the
# reactor.  A client reading at full speed drains the socket buffer in well under this.
_PATIENCE_MS = 5
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


def on_loopback(address: object) -> bool:
    """Whether a transport's peer address is on loopback (127.0.0.0/8, ::1, or IPv4-mapped)."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False  # UNIX sockets and the like: not TCP
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _socket_transport(request: IRequest, to_loopback: bool) -> Any | None:
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
    if not to_loopback and on_loopback(transport.getPeer()):
        return None
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


async def stream(request: IRequest, producer: IBodyProducer, to_loopback: bool) -> None:
    """
    Send ``producer``'s bytes as the response body: with ``os.sendfile`` when the producer is
    a local file and the connection plain HTTP/1.x over TCP (to a peer on loopback only with
    ``to_loopback``), else through `responses.stream`.
    Errors as there: `CancelledError` when the client left, `responses.ResponseInterrupted`
    (the connection dropped) when the file could not be sent.
    """
    transport = _socket_transport(request, to_loopback)
    socket = None
    if (
        transport is not None
        and ILocalFile.providedBy(producer)
        and _plain_body(request, producer.length)
    ):
        try:
            socket = os.dup(transport.fileno())
        except OSError as exc:  # out of descriptors: the producer path needs none
            log.warn("sendfile: cannot duplicate the socket ({reason})", reason=exc.strerror)
    local = ILocalFile(producer).detach() if socket is not None else None
    if local is None:
        if socket is not None:
            os.close(socket)
        await responses.stream(request, producer)
        return
    assert socket is not None
    sender = _Sender(request, transport, socket, local)
    try:
        await sender.start()
    except (CancelledError, responses.ResponseInterrupted):
        raise
    except Exception as exc:
        raise responses.ResponseInterrupted(str(exc)) from exc


# What one thread-pool call did: bytes sent, and the error that stopped it (None: the socket
# would block, the budget is spent, or the range is complete).
_Turn = tuple[int, OSError | None]


def _send(socket: int, source: int, offset: int, remaining: int) -> _Turn:
    """
    In a pool thread: ``os.sendfile`` until `_TURN_BUDGET` is sent, or the socket stays full
    for `_PATIENCE_MS`: a client that reads as fast as we send is served without a round trip
    through the reactor per socket buffer, a slow one gives the thread back.
    """
    sent_total, budget = 0, _TURN_BUDGET
    deadline = time.monotonic() + _TURN_SECONDS
    writable = select.poll()
    writable.register(socket, select.POLLOUT)
    while remaining > 0 and budget > 0:
        wanted = min(remaining, budget)
        try:
            sent = os.sendfile(socket, source, offset, wanted)
        except BlockingIOError:
            if time.monotonic() < deadline and writable.poll(_PATIENCE_MS):
                continue  # writable again (or an error, which the next call reports)
            break
        except InterruptedError:
            continue
        except OSError as exc:
            return sent_total, exc
        if sent == 0:  # the file is shorter than its size said
            return sent_total, OSError(errno.EIO, "blob file shrank while sending")
        offset += sent
        remaining -= sent
        budget -= sent
        sent_total += sent
    return sent_total, None


@implementer(IPullProducer)
class _Sender:
    """Sends one file range on a transport it has taken over from the HTTP channel."""

    def __init__(self, request: IRequest, transport: Any, socket: int, local: LocalRange) -> None:
        self._request: Any = request
        self._transport = transport
        self._channel = request.channel  # type: ignore[attr-defined]
        self._socket: int | None = socket  # our duplicate of the transport's descriptor
        self._file: Any = local.file
        self._reactor = local.reactor
        self._pool = local.threadpool
        self._offset = local.offset
        self._remaining = local.length
        self._armed = False
        self._over = False
        self._sending = False  # a call runs in a pool thread
        # Whether reading was paused by us (and is resumed at the end).
        self._paused_reading = False
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
        # No reading while the body goes out: a client that closes as soon as it has the last
        # byte must not be seen leaving before the thread that sent it is back (the request
        # would count as abandoned).  A client that leaves earlier makes sendfile fail.
        # Resumed at the end only if it was reading (HTTPChannel pauses it for pipelining).
        if transport in self._reactor.getReaders():
            self._paused_reading = True
            transport.pauseProducing()
        self._armed = True
        transport.startWriting()
        return self._done

    def resumeProducing(self) -> None:
        if not self._armed or self._over or self._sending:
            return
        assert self._socket is not None
        self._sending = True
        turn: Deferred[_Turn] = deferToThreadPool(
            self._reactor,
            self._pool,
            _send,
            self._socket,
            self._file.fileno(),
            self._offset,
            self._remaining,
        )
        turn.addCallbacks(self._sent, self._thread_failed)

    def _sent(self, turn: _Turn) -> None:
        self._sending = False
        sent, error = turn
        self._offset += sent
        self._remaining -= sent
        self._request.sentLength += sent
        if sent:
            self._channel.resetTimeout()  # the channel's idle timer sees none of these writes
            self._request.sent_with_sendfile = True
        if self._over:  # the connection went away (or the handler was cancelled) meanwhile
            self._release()
            return
        if error is not None:
            self._failed(error)
            return
        if self._remaining > 0:
            self._transport.startWriting()  # resumed when the socket takes more
            return
        self._end()
        self._transport.unregisterProducer()
        self._transport.registerProducer(self._channel, True)
        if self._paused_reading:
            self._transport.resumeProducing()
        # The transport's buffer is empty: a channel it had paused may go on.
        self._channel.resumeProducing()
        self._done.callback(None)

    def _thread_failed(self, failure: Failure) -> None:
        """Not an OSError from sendfile (those are returned): the pool refused the call."""
        self._sending = False
        exc = failure.value
        self._failed(exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc)))

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
        """Stop once; True the first time (whoever settles the Deferred)."""
        if self._over:
            return False
        self._over = True
        if not self._sending:  # else once the thread is back (`_sent`)
            self._release()
        return True

    def _release(self) -> None:
        """Close the file and our socket descriptor; no thread uses them any more."""
        self._file.close()
        if self._socket is not None:
            os.close(self._socket)
            self._socket = None
