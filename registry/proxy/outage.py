"""
Whether the cache's storage can be read: while it cannot (S3 down or refusing, a disk giving
EIO), the cache looks nothing up there and serves every pull from the upstream without keeping
it, as a plain proxy would, instead of answering 503 for content the upstream would give.

An outage is one event: one warning when reads start failing, one line when they work again,
not a line per request (a busy cache would write thousands).  Fills still try to store what
they fetch, each saying in its own line that it could not (`ProxyCache._run_fill`), so the
cache is kept again as soon as its storage is back.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()


class StorageReads:
    """The state of one cache's storage reads, as its lookups find it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failing: str | None = None  # why, while reads fail

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
