"""
A blob body that survives the loss of its source: `ResumingProducer`.

A client of an instance that does not hold the fill reads the bytes from the holder (a peer
stream).  If the holder dies mid-layer, the response must not break: the producer asks for a
new source from the byte it reached (the stored blob, a fill this instance takes over, or a
fill another instance took over) and carries on.  The status line and ``Content-Length`` went
out long ago, so nothing else could be honest.

A whole-blob read is hashed on the way out, and its last chunk is written only when the bytes
hash to the digest: bytes stitched together from two sources never complete a wrong blob.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.api.digests import Digest, DigestingHasher
from registry.proxy.errors import CorruptBody

__all__ = ["CorruptBody", "ResumingProducer"]

# Opens the next source at an absolute position of the blob; returns a producer of the bytes
# from there to the end of the range.
OpenSource = Callable[[int], Awaitable[IBodyProducer]]

MAX_SOURCES = 8


@implementer(IConsumer)
class _Gate:
    """Between a source and the real consumer: counts, hashes, holds the last chunk until
    the hash is checked, and refuses more than the range."""

    def __init__(self, outer: ResumingProducer, consumer: IConsumer) -> None:
        self._outer = outer
        self._consumer = consumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # the outer producer is what the consumer knows

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        outer = self._outer
        room = outer.end - outer.position
        beyond = len(data) > room
        if beyond:
            # A source that serves past the range (the first one of a Range request runs to
            # the blob's end): what the range needs, then stop it.
            data = data[:room]
            outer.stop_source()
        if not data:
            return
        if outer.hasher is not None:
            outer.hasher.update(data)
            if outer.position + len(data) == outer.end and outer.hasher.digest() != outer.digest:
                outer.corrupt = True
                outer.stop_source()
                return
        outer.position += len(data)
        self._consumer.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@implementer(IBodyProducer, IPushProducer)
class ResumingProducer:
    """Produces ``[offset, offset + length)`` of ``digest`` from successive sources; the
    first is given, the next ones come from ``open_source``."""

    def __init__(
        self,
        digest: Digest,
        offset: int,
        length: int,
        first: IBodyProducer,
        open_source: OpenSource,
        *,
        whole: bool,
        on_complete: Callable[[], None] = lambda: None,
    ) -> None:
        self.digest = digest
        self.position = offset
        self.end = offset + length
        self.length = length
        self._first: IBodyProducer | None = first
        self._open_source = open_source
        self.hasher = DigestingHasher(digest.algorithm) if whole else None
        self.corrupt = False
        self._on_complete = on_complete
        self._source: IBodyProducer | None = None
        self._paused = False
        self._stopped = False
        self._run: Deferred[None] | None = None
        self.sources = 0
        self.origins: list[str] = []

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._run = Deferred.fromCoroutine(self._produce(consumer))
        return self._run

    async def _produce(self, consumer: IConsumer) -> None:
        gate = _Gate(self, consumer)
        last_error: BaseException | None = None
        while self.position < self.end:
            if self._stopped:
                raise CancelledError("stopped")
            if self.sources >= MAX_SOURCES:
                raise RuntimeError(f"{self.digest}: gave up after {self.sources} sources") from (
                    last_error
                )
            source, self._first = self._first, None
            if source is None:
                source = await self._open_source(self.position)
            self.sources += 1
            # Where the bytes came from, for the line that says they were wrong.
            origin = str(getattr(source, "origin", "this instance"))
            if origin not in self.origins:
                self.origins.append(origin)
            self._source = source
            if self._paused:
                source.pauseProducing()
            try:
                await source.startProducing(gate)
            except CancelledError:
                if self._stopped:
                    raise
                last_error = None
            except Exception as exc:  # the source broke off: resume from here
                last_error = exc
            finally:
                self._source = None
            if self.corrupt:
                raise CorruptBody(
                    f"the bytes served for {self.digest} (from {', '.join(self.origins)}) "
                    "hash to another digest"
                )
        self._on_complete()

    def stop_source(self) -> None:
        source = self._source
        if source is not None:
            source.stopProducing()

    def pauseProducing(self) -> None:
        self._paused = True
        if self._source is not None:
            self._source.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._source is not None:
            self._source.resumeProducing()

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._first is not None:
            self._first.stopProducing()
            self._first = None
        self.stop_source()
        if self._run is not None and not self._run.called:
            self._run.cancel()
