"""
What can go wrong talking to a registry, as exception classes a caller can act on.

Every failure raised by `registry.client` is a `ClientError`.  The class says what to do
(``NotFound``: it is not there; ``RateLimited``: wait ``retry_after``; ``Unavailable``: no usable
answer, try later; ``Unauthorized``: the credentials do not reach; ``BadResponse``: an answer
that cannot be trusted, never keep anything that came with it; ``UntrustedCertificate``: the
server's TLS certificate did not verify, fix the configuration).  ``status`` is the HTTP status
(None when there was no answer); ``code`` is the first OCI error code of the error body
(``MANIFEST_UNKNOWN``, ``BLOB_UNKNOWN``, ``DENIED`` ...) and ``errors`` all of them, as
``(code, message)`` pairs, when the registry sent an OCI error body.
"""

from __future__ import annotations

import re

# ``scheme://USER[:PASSWORD]@``: the userinfo of a URL, never shown in a message.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


def without_userinfo(text: str) -> str:
    """``text`` with the userinfo of every URL in it taken out (``http://u:p@h/`` reads
    ``http://h/``): a password in a URL someone passed or a server sent is not repeated in
    an error message, a log or a terminal."""
    return _USERINFO.sub(r"\1", text)


class ClientError(Exception):
    """Base of every client failure."""

    # The origin (``scheme://host:port``) that failed, when it is not the registry's but a
    # host a redirect named (a CDN serving blob bytes): the registry itself answered.
    elsewhere: str | None = None

    def __init__(
        self,
        status: int | None,
        reason: str,
        code: str | None = None,
        errors: tuple[tuple[str, str], ...] = (),
        source: str = "registry",
    ) -> None:
        # "registry 404: ..." for an answer ("token service 401: ..." for a token's);
        # without one the reason says what happened.
        reason = without_userinfo(reason)
        super().__init__(reason if status is None else f"{source} {status}: {reason}")
        self.status = status
        self.reason = reason
        self.code = code
        self.errors = errors


class NotFound(ClientError):
    """404: ``code`` tells what is unknown (``NAME_UNKNOWN``, ``MANIFEST_UNKNOWN``,
    ``BLOB_UNKNOWN``, ``BLOB_UPLOAD_UNKNOWN``); None for a HEAD or a bare 404."""


class RateLimited(ClientError):
    """429.  ``retry_after`` is in seconds when the registry said so."""

    def __init__(
        self,
        status: int | None,
        reason: str,
        retry_after: float | None = None,
        code: str | None = None,
        errors: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status, reason, code, errors)
        self.retry_after = retry_after


class Unavailable(ClientError):
    """No usable answer: 5xx, refused or reset connection, a TLS handshake that failed for
    another reason than the server's certificate (a TLS alert from the server, say: it
    refused ours), timeout, stalled body."""


class UntrustedCertificate(ClientError):
    """The server's TLS certificate did not verify: not issued by a CA the client trusts,
    expired or not yet valid, or not valid for the host asked for.  A configuration error
    (the CA bundle, the URL, the server's certificate), not an outage: raised at once, never
    retried.  No request was sent to that server.  ``host`` is its origin
    (``https://host:port``: the registry, its token service or a host it redirected to),
    ``failure`` what failed, in the words of OpenSSL or of the host name check."""

    def __init__(self, host: str, failure: str) -> None:
        super().__init__(None, f"the TLS certificate of {host} did not verify: {failure}")
        self.host = host
        self.failure = failure


class Unauthorized(ClientError):
    """401/403 after fresh credentials (or from the token service), or a 401 from an origin
    that is not the registry's: the credentials do not reach, and were not sent elsewhere."""


class AccessDenied(Unauthorized):
    """The registry itself answered 401/403 to a call made with a token (or credentials)
    fetched for it: this repository is not open to them (private, or unknown: Docker Hub
    answers both alike).  The token service's own refusal is plain `Unauthorized`; a 401 from
    another origin is `ForeignChallenge`."""


class ForeignChallenge(Unauthorized):
    """A 401 from another origin than the registry's (a host it redirected to): nothing was
    sent to it, and the registry's own credentials are not in question."""


class BadResponse(ClientError):
    """An answer that cannot be trusted: digest mismatch, missing digest, oversized manifest,
    wrong length, malformed JSON."""


class TooLarge(BadResponse):
    """A body larger than the limit the call was given (``limit``, in bytes): a blob read
    whole over its ``max_size``, a manifest over the manifest limit.  The answer may be right;
    raise the limit to take it."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(None, f"{what} larger than {limit} bytes")
        self.limit = limit


class Rejected(ClientError):
    """Any other 4xx: the registry refused the request (``code`` says why: ``DIGEST_INVALID``,
    ``MANIFEST_INVALID``, ``UNSUPPORTED``, ``RANGE_INVALID`` ...); or, with ``status`` None, a
    request refused before it was sent (a malformed digest: ``DIGEST_INVALID``)."""


__all__ = [
    "BadResponse",
    "ClientError",
    "NotFound",
    "RateLimited",
    "Rejected",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UntrustedCertificate",
]
