"""
The upstream failures a pull-through store acts on: the client library's errors by the names
the cache uses.  The store decides between "serve stale", "answer 404", "answer 429" and
"answer 503" from the class alone; the mapping to our own HTTP answers lives with the store.
"""

from __future__ import annotations

from registry.client.errors import (
    AccessDenied as UpstreamAccessDenied,
)
from registry.client.errors import (
    BadResponse as UpstreamBadResponse,
)
from registry.client.errors import (
    ClientError as UpstreamError,
)
from registry.client.errors import (
    ForeignChallenge as UpstreamForeignChallenge,
)
from registry.client.errors import (
    NotFound as UpstreamNotFound,
)
from registry.client.errors import (
    RateLimited as UpstreamRateLimited,
)
from registry.client.errors import (
    Unauthorized as UpstreamUnauthorized,
)
from registry.client.errors import (
    Unavailable as UpstreamUnavailable,
)
from registry.client.errors import (
    UntrustedCertificate as UpstreamUntrustedCertificate,
)

__all__ = [
    "CorruptBody",
    "ResumeFailed",
    "UpstreamAccessDenied",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamForeignChallenge",
    "UpstreamNotFound",
    "UpstreamRateLimited",
    "UpstreamUnauthorized",
    "UpstreamUnavailable",
    "UpstreamUntrustedCertificate",
]


class CorruptBody(Exception):
    """A fleet body whose bytes do not hash to the digest (`registry.proxy.fleet.follow`):
    the response is dropped before its end.  A designed-for case (a peer or a source that
    served other bytes), said in one line; here so that the app can tell it without loading
    the fleet's modules."""


class ResumeFailed(Exception):
    """A fleet body that lost its source (the holder's fill failed, or the holder died) and
    whose next source could not be opened: this instance's own fill failed on the upstream
    too, Redis went away, the blob was not stored in time.  The status line went out with
    the first bytes, so the reason can no longer be an error answer, only why the body is
    cut short: a designed-for case, said in one line."""
