"""
Body producers shared by the storage backends.

A storage read is an `IBodyProducer` that writes into any consumer with back-pressure.  These
two cover local data: `BytesProducer` for data already in memory (the in-memory driver, small
manifests) and `FileProducer` for a local file, whose reads run in a worker thread one chunk
ahead of the consumer so that a cold page cache never stalls the reactor.
"""

from __future__ import annotations

from typing import IO, Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import Interface, implementer

# Large reads: the transport's default 64 KiB rounds cost a reactor turn each.  2 MiB rather
# than 4: pulls are no faster with 4, and every pull holds about three chunks at once (one
# read ahead, one being sent and the transport's copy of it), so the smaller chunk halves that.
CHUNK_SIZE = 2 * 1024 * 1024


class _PausableProducer:
    """The pause/resume/stop state machine both producers share."""

    length: int

    def __init__(self) -> None:
        self._consumer: IConsumer | None = None
        self._paused = False
        self._stopped = False
        self._finished: Deferred[None] | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        finished: Deferred[None] = Deferred(lambda _: self.stopProducing())
        self._finished = finished
        self._produce()
        return finished

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused and not self._stopped:
            self._paused = False
            self._produce()

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._release()
        finished, self._finished = self._finished, None
        if finished is not None and not finished.called:
            finished.errback(Failure(CancelledError("producer stopped")))

    def _produce(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free resources (files) once production ends for any reason."""

    def _done(self, failure: Failure | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._release()
        finished, self._finished = self._finished, None
        settle(finished, failure)


def settle(finished: Deferred[None] | None, failure: Failure | None) -> None:
    """Fire a producer's "all written" Deferred once: with None, or with the failure."""
    if finished is None or finished.called:
        return
    if failure is None:
        finished.callback(None)
    else:
        finished.errback(failure)


@implementer(IBodyProducer, IPushProducer)
class BytesProducer(_PausableProducer):
    """Writes a bytes-like object in chunks, honouring pauses."""

    def __init__(self, data: bytes | memoryview, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._offset = 0
        self._chunk_size = chunk_size
        self.length = len(self._data)

    def _produce(self) -> None:
        assert self._consumer is not None
        while not self._paused and not self._stopped:
            if self._offset >= self.length:
                self._done()
                return
            end = min(self._offset + self._chunk_size, self.length)
            chunk = bytes(self._data[self._offset : end])
            self._offset = end
            # write() may re-enter pauseProducing (or stopProducing) synchronously.
            self._consumer.write(chunk)

    def _release(self) -> None:
        self._data = memoryview(b"")


@attrs.frozen
class LocalRange:
    """
    A byte range of an open local file, owned by whoever holds it (it closes ``file``), and the
    thread pool its reads belong in: whoever sends it must not read it on the reactor thread.
    """

    file: IO[bytes]
    offset: int
    length: int
    reactor: Any
    threadpool: ThreadPool


class IChunkLimit(Interface):
    """A producer whose write size its consumer may lower."""

    def limit_chunk_size(size: int) -> None:
        """
        Read and write at most ``size`` bytes at a time from now on: an HTTP/2 stream queues
        a whole write until its client's flow-control window takes it, so a client that
        opens many streams and never reads would otherwise hold two full chunks per stream.
        """


class ILocalFile(Interface):
    """
    A producer over a local file that can hand the file over instead of producing: a
    consumer able to send straight from a file (``os.sendfile`` on a plain TCP socket) then
    never has the bytes pass through Python.
    """

    def detach() -> LocalRange | None:
        """
        The file and the range this producer would write, now owned by the caller; the
        producer is spent.  None once production has started (or stopped).
        """


@implementer(IBodyProducer, IPushProducer, ILocalFile, IChunkLimit)
class FileProducer(_PausableProducer):
    """
    Writes ``length`` bytes of an open file, reading ``CHUNK_SIZE`` at a time in a worker thread
    and keeping one chunk read ahead.  Takes ownership of the file and closes it at the end.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: ThreadPool,
        file: IO[bytes],
        length: int,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._threadpool = threadpool
        self._file: IO[bytes] | None = file
        self.length = length
        self._remaining = length
        self._chunk_size = chunk_size
        self._ahead: Deferred[bytes] | None = None
        self._ready: bytes | None = None

    def limit_chunk_size(self, size: int) -> None:
        self._chunk_size = max(1, min(self._chunk_size, size))

    def detach(self) -> LocalRange | None:
        file = self._file
        if file is None or self._consumer is not None or self._stopped:
            return None
        self._file = None
        self._stopped = True
        return LocalRange(file, file.tell(), self.length, self._reactor, self._threadpool)

    def _read_ahead(self) -> None:
        if self._ahead is not None or self._ready is not None or self._remaining <= 0:
            return
        file = self._file
        if file is None:
            return
        size = min(self._chunk_size, self._remaining)
        self._remaining -= size
        ahead: Deferred[bytes] = deferToThreadPool(self._reactor, self._threadpool, file.read, size)
        self._ahead = ahead
        ahead.addCallbacks(self._chunk_read, self._read_failed, callbackArgs=(size,))

    def _chunk_read(self, data: bytes, expected: int) -> None:
        self._ahead = None
        if self._stopped:
            return
        if len(data) != expected:
            self._done(Failure(OSError(f"file shrank while reading: {len(data)} < {expected}")))
            return
        self._ready = data
        self._produce()

    def _read_failed(self, failure: Failure) -> None:
        self._ahead = None
        self._done(failure)

    def _produce(self) -> None:
        assert self._consumer is not None
        while not self._paused and not self._stopped:
            if self._ready is None:
                if self._ahead is None and self._remaining <= 0:
                    self._done()
                else:
                    self._read_ahead()
                return
            data, self._ready = self._ready, None
            self._read_ahead()
            self._consumer.write(data)

    def _release(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        if self._ahead is not None:
            # A read is running in a thread: close once it is back.
            self._ahead.addBoth(lambda _: file.close())
        else:
            file.close()


class CollectingConsumer:
    """A consumer that keeps everything written to it (for small reads: links, manifests)."""

    def __init__(self, limit: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise ValueError(f"more than {self.limit} bytes")
        self.chunks.append(data)

    def value(self) -> bytes:
        return b"".join(self.chunks)
