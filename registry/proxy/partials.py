"""
The bytes of fills interrupted by a restart (kill -9, a crash, a stop or a deploy), kept for
the next fill of the same blob to resume from instead of fetching the blob again from its
first byte (`registry.proxy.cache.ProxyCache`).

A fill writes into ``fills/<alg>-<hex>-<uuid>`` (in a fleet ``fills/<instance>/...``) and
holds an exclusive lock (``flock``) on that file while it writes.  What a dead process left
there (found at start-up in this instance's own folder, or by a fleet's sweep in the folder of
an instance that is no longer alive in Redis) is moved, unless a live process still holds its
lock, to ``partials/<alg>-<hex>``: one file per digest, owned by nobody.  A fill of that digest
that got its upstream's answer takes the file (a rename, so two fills never share it), hashes
its bytes off the reactor thread, and asks the upstream for the rest (``Range``); the digest of
the whole decides, as for any fill.  The name is the digest alone, not the repository the bytes
were fetched through: the fill that takes them has its own repository's upstream confirm the
blob (its ``Range`` GET is answered for that repository), and bytes that are not the blob fail
the digest check, so bytes fetched for one repository are never served through another without
that repository's upstream having the blob.

On S3 a fill is a multipart upload that no other process can read back or continue, but
its spool file (`registry.proxy.spool`) holds the same bytes: the next process of the host
moves a dead process's spool files into its own spool folder as ``partials/<alg>-<hex>``
(owner names, ``<host>-<pid>``, say which processes are dead), and a fill that takes them
uploads them again from the local disk, hashed on the way, before it asks for the rest.

Partials older than ``partial_age`` go, and so do the oldest of them beyond the room
``max_size`` leaves (`ProxyCache.prune_partials`, at start and at each eviction pass).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.api.digests import Digest, DigestingHasher
from registry.api.errors import RegistryError
from registry.storage.driver import IFileWriter
from registry.storage.hash_offload import OffloadedHasher

# A fill's file: ``<algorithm>-<hex>-<uuid hex>`` (`ProxyCache._join_fill`).
FILL_NAME = re.compile(r"^(?P<algorithm>[a-z0-9]+)-(?P<hex>[0-9a-f]{32,128})-[0-9a-f]{32}$")


def partial_name(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}"


def digest_of_fill(name: str) -> Digest | None:
    """The digest a fill's file name is for, or None for another name."""
    found = FILL_NAME.match(name)
    if found is None:
        return None
    try:
        return Digest.parse(f"{found['algorithm']}:{found['hex']}")
    except RegistryError:
        return None


@implementer(IConsumer)
class _Feeding:
    """Gives each chunk a storage reader writes to ``feed``, pausing the reader while the
    Deferred ``feed`` returned has not fired (a hashing queue over its mark, a thread)."""

    def __init__(self, feed: Callable[[bytes], Deferred[Any] | None]) -> None:
        self._feed = feed
        self._producer: IProducer | None = None
        self.fed = 0
        self.last: Deferred[Any] | None = None
        self.failure: Failure | None = None  # of a write or a hashing

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        self.fed += len(data)
        waiter = self._feed(data)
        if waiter is None:
            return
        self.last = waiter
        producer = self._producer
        if producer is None:
            return
        pushing: Any = producer  # (a storage reader: pausable)
        pushing.pauseProducing()

        def settled(result: object) -> None:
            if isinstance(result, Failure):
                if self.failure is None:
                    self.failure = result
                pushing.stopProducing()
            else:
                pushing.resumeProducing()

        waiter.addBoth(settled)


async def rehash(
    driver: Any, path: str, length: int, hasher: Any, copy_to: IFileWriter | None = None
) -> int:
    """Feed the first ``length`` bytes of ``path`` to ``hasher`` (an `OffloadedHasher` hashes
    them on the hash threads; a plain `DigestingHasher` is fed in a thread, a chunk at a
    time): the reactor thread only passes chunks on.  With ``copy_to`` (a new S3 upload for
    bytes kept in the local spool), they are written there too, at its pace.  Returns how
    many bytes were fed."""

    if isinstance(hasher, OffloadedHasher):
        hash_: Callable[[bytes], Deferred[Any] | None] = hasher.update
    else:
        assert isinstance(hasher, DigestingHasher)

        def hash_(data: bytes) -> Deferred[Any] | None:
            return deferToThread(hasher.update, data)

    def feed(data: bytes) -> Deferred[Any] | None:
        hashed = hash_(data)
        written = copy_to.write(data) if copy_to is not None else None
        waits: list[Deferred[Any]] = [d for d in (hashed, written) if d is not None]
        if not waits:
            return None
        return waits[0] if len(waits) == 1 else gatherResults(waits, consumeErrors=True)

    producer = await driver.reader(path, 0, length)
    consumer = _Feeding(feed)
    consumer.registerProducer(producer, True)
    try:
        await producer.startProducing(consumer)
    except CancelledError:
        if consumer.failure is None:
            raise
    finally:
        consumer.unregisterProducer()
    if consumer.last is not None and not consumer.last.called:
        await consumer.last
    if consumer.failure is not None:
        consumer.failure.raiseException()
    return consumer.fed
