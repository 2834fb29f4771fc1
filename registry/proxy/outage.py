"""
Whether the cache's storage can be read: while it cannot (S3 down or refusing, a disk giving
EIO), the cache looks nothing up there and serves every pull from the upstream without keeping
it, as a plain proxy would, instead of answering 503 for content the upstream would give.

An outage is one event: one warning when reads start failing, one line when they work again,
not a line per request (a busy cache would write thousands).  Fills still try to store what
they fetch, each saying in its own line that it could not (`ProxyCache._run_fill`), so the
cache is kept again as soon as its storage is back.

A storage that hangs (S3 not answering) would make every lookup wait for the storage's
timeouts: while reads fail, lookups are skipped (taken as misses) and fills do not try to
store, except one lookup every ``RETRY`` seconds, which tells when the storage is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()

RETRY = 5.0


class StorageReads:
    """The state of one cache's storage reads, as its lookups find it."""

    def __init__(self, upstream: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.clock = clock
        self.failing: str | None = None  # why, while reads fail
        self.tried_at = 0.0  # while failing: when a lookup last tried the storage

    def skipping(self) -> bool:
        """Whether a lookup skips the storage now (a miss): while reads fail, but for one
        lookup every ``RETRY`` seconds."""
        if self.failing is None:
            return False
        now = self.clock()
        if now - self.tried_at >= RETRY:
            self.tried_at = now  # this one tries; the others skip meanwhile
            return False
        return True

    def failed(self, error: BaseException) -> None:
        """A lookup failed with a storage error (not a missing path): served from upstream."""
        self.tried_at = self.clock()
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

    def worked(self) -> None:
        """A lookup got an answer from the storage."""
        if self.failing is None:
            return
        self.failing = None
        log.info(
            "proxy {upstream}: the cache's storage can be read again: serving from the cache",
            upstream=self.upstream,
            event="proxy_storage_readable",
        )
