"""
Whether the cache's storage can be read: while it cannot (S3 down or refusing, a disk giving
EIO), the cache looks nothing up there and serves every pull from the upstream without keeping
it, as a plain proxy would, instead of answering 503 for content the upstream would give.

An outage is one event: one warning when reads start failing, one line when they work again,
not a line per request (a busy cache would write thousands).

A storage that hangs (S3 not answering) would make every lookup wait for the storage's
timeouts: while reads fail, lookups skip the storage (taken as misses) and fills and manifests
do not try to store.  Whether it is back is found out by a probe of its own every ``RETRY``
seconds (a listing of a small folder), never by a client's request, which would wait for the
storage's timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.failures import log_failure
from registry.storage.driver import StorageError

log = Logger()

RETRY = 5.0


class StorageReads:
    """The state of one cache's storage reads, as its lookups and its probe find it."""

    def __init__(self, upstream: str, reactor: Any, probe: Callable[[], Awaitable[object]]) -> None:
        self.upstream = upstream
        self.reactor = reactor
        self.probe = probe  # a read of the storage; fails with StorageError while it fails
        self.failing: str | None = None  # why, while reads fail
        self._next: Any = None  # the probe's next run (an IDelayedCall), while failing

    def skipping(self) -> bool:
        """Whether a lookup skips the storage now (a miss): while reads fail."""
        return self.failing is not None

    def failed(self, error: BaseException) -> None:
        """A lookup failed with a storage error (not a missing path): served from upstream."""
        if self.failing is not None:
            return
        self.failing = str(error)
        log.warn(
            "proxy {upstream}: the cache's storage cannot be read: {error}; serving pulls from"
            " the upstream without keeping them until it can (a line says when)",
            upstream=self.upstream,
            error=self.failing,
            event="proxy_storage_unreadable",
        )
        self._schedule()

    def worked(self) -> None:
        """A lookup (or the probe) got an answer from the storage."""
        if self.failing is None:
            return
        self.failing = None
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        log.info(
            "proxy {upstream}: the cache's storage can be read again: serving from the cache",
            upstream=self.upstream,
            event="proxy_storage_readable",
        )

    def stop(self) -> None:
        """No more probes (the service stops)."""
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _schedule(self) -> None:
        self._next = self.reactor.callLater(RETRY, self._run)

    def _run(self) -> None:
        self._next = None
        if self.failing is None:
            return

        def answered(_: object) -> None:
            self.worked()

        def still(failure: Failure) -> None:
            if not failure.check(StorageError):
                log_failure(
                    log,
                    failure,
                    "proxy {upstream}: the storage probe failed",
                    upstream=self.upstream,
                )
            if self.failing is not None:
                self._schedule()

        d: Deferred[object] = Deferred.fromCoroutine(self._probe())
        d.addCallbacks(answered, still)

    async def _probe(self) -> object:
        return await self.probe()
