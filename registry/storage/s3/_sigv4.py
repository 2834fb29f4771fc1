"""
AWS Signature Version 4 for S3, on the standard library (``hmac``, ``hashlib``).

Signing is the only part of an AWS SDK the driver needs; botocore would bring urllib3,
pyOpenSSL, cryptography's Rust extension and dateutil into every worker (about 20 MiB of
resident memory per process, at rest) for a few HMACs.

The canonical request follows S3's rules: the path is signed as sent (keys are percent-encoded
once, by `registry.storage.s3._settings.quote_key`, never twice), query parameters are sorted
after encoding, and every header given to `SigV4.headers` is signed along with ``host``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _quote(value: str) -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but unreserved characters."""
    return quote(value, safe="-_.~")


def _host(url: str) -> str:
    """The Host header for ``url``: the port only when it is not the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _canonical_query(query: str, extra: list[tuple[str, str]] | None = None) -> str:
    pairs = [
        (_quote(name), _quote(value))
        for name, value in parse_qsl(query, keep_blank_values=True) + (extra or [])
    ]
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


class SigV4:
    """Signs requests for one service and region with one set of credentials."""

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        region: str,
        token: str | None = None,
        service: str = "s3",
    ) -> None:
        self.access_key = access_key
        self._secret = secret_key
        self.region = region
        self.token = token
        self.service = service
        # The signing key depends on the day only: derive it once a day, not per request.
        self._key_day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._key_day:
            key = _hmac(f"AWS4{self._secret}".encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._key_day, self._key = day, key
        return self._key

    def _scope(self, day: str) -> str:
        return f"{day}/{self.region}/{self.service}/aws4_request"

    def _signature(self, stamp: str, canonical_request: str) -> str:
        day = stamp[:8]
        to_sign = "\n".join(
            (
                ALGORITHM,
                stamp,
                self._scope(day),
                hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
            )
        )
        return hmac.new(self._signing_key(day), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()

    def headers(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        payload_sha256: str = UNSIGNED_PAYLOAD,
        now: datetime.datetime | None = None,
    ) -> dict[str, str]:
        """
        ``headers`` plus ``X-Amz-Date``, ``X-Amz-Content-SHA256``, the session token if any,
        and ``Authorization``.  ``payload_sha256`` is the body's hex SHA-256, or
        ``UNSIGNED-PAYLOAD`` for a streamed body (hashing it first would read it twice).
        """
        stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
        signed = dict(headers)
        signed["X-Amz-Date"] = stamp
        signed["X-Amz-Content-SHA256"] = payload_sha256
        if self.token:
            signed["X-Amz-Security-Token"] = self.token
        canonical: dict[str, str] = {"host": _host(url)}
        for name, value in signed.items():
            canonical[name.lower()] = " ".join(value.split())
        names = sorted(canonical)
        parts = urlsplit(url)
        canonical_request = "\n".join(
            (
                method,
                parts.path or "/",
                _canonical_query(parts.query),
                "".join(f"{name}:{canonical[name]}\n" for name in names),
                ";".join(names),
                payload_sha256,
            )
        )
        signature = self._signature(stamp, canonical_request)
        signed["Authorization"] = (
            f"{ALGORITHM} Credential={self.access_key}/{self._scope(stamp[:8])}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return signed

    def presign(
        self, method: str, url: str, expires: int, now: datetime.datetime | None = None
    ) -> str:
        """``url`` with its signature in the query string, valid for ``expires`` seconds."""
        stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
        extra = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self.access_key}/{self._scope(stamp[:8])}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if self.token:
            extra.append(("X-Amz-Security-Token", self.token))
        parts = urlsplit(url)
        query = _canonical_query(parts.query, extra)
        canonical_request = "\n".join(
            (
                method,
                parts.path or "/",
                query,
                f"host:{_host(url)}\n",
                "host",
                UNSIGNED_PAYLOAD,
            )
        )
        signature = self._signature(stamp, canonical_request)
        base = url.split("?", 1)[0]
        return f"{base}?{query}&X-Amz-Signature={signature}"
