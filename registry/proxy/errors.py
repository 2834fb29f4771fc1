"""
What can go wrong talking to an upstream registry, in terms a pull-through store can act on.

The store decides between "serve stale", "answer 404", "answer 429" and "answer 503" from the
class alone; ``status`` and ``reason`` are there for logs and for the error detail sent to the
client.  None of these know about our own HTTP answers: the mapping lives with the store.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every upstream failure; ``status`` is the upstream HTTP status (None: no answer)."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"upstream {status if status is not None else '-'}: {reason}")
        self.status = status
        self.reason = reason


class UpstreamNotFound(UpstreamError):
    """404 upstream; ``code`` is the registry error code when the body told (e.g. NAME_UNKNOWN,
    MANIFEST_UNKNOWN, BLOB_UNKNOWN), None for a HEAD or a bare 404."""

    def __init__(self, status: int | None, reason: str, code: str | None = None) -> None:
        super().__init__(status, reason)
        self.code = code


class UpstreamRateLimited(UpstreamError):
    """429 upstream.  ``retry_after`` is in seconds when the upstream said so."""

    def __init__(self, status: int | None, reason: str, retry_after: float | None = None) -> None:
        super().__init__(status, reason)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """No usable answer: 5xx, refused or reset connection, TLS failure, timeout, stalled body."""


class UpstreamUnauthorized(UpstreamError):
    """401/403 after a fresh token (or from the token service): our credentials do not reach."""


class UpstreamBadResponse(UpstreamError):
    """An answer we cannot trust: digest mismatch, missing digest, oversized manifest, wrong
    length.  Never cache anything that came with it."""
