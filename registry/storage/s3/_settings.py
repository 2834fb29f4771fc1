"""
The S3 driver's settings, under registry:2's key names, and where requests go.

The key names are registry:2's (``storage.s3.*`` in its config.yml) so that a registry:2
configuration translates one to one; the lead's config loader builds an `S3Settings` from them.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import quote, urlsplit

import attrs

MIB = 1024 * 1024
# S3's limits: every part but the last is at least 5 MiB; a part (or a CopyObject) at most 5 GiB.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
DEFAULT_CHUNK_SIZE = 10 * MIB


def _chunksize(instance: S3Settings, attribute: attrs.Attribute[int], value: int) -> None:
    if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
        raise ValueError(f"s3 chunksize must be between 5 MiB and 5 GiB, not {value}")


def _regionendpoint(instance: S3Settings, attribute: attrs.Attribute[str], value: str) -> None:
    # A path would be taken for the bucket and keys (path-style addressing puts the bucket
    # there): requests would go to another bucket than the one configured.
    if "://" in value and urlsplit(value).path.strip("/"):
        raise ValueError(
            f"s3 regionendpoint must be scheme://host[:port] without a path, not {value!r}"
        )


@attrs.frozen
class S3Settings:
    """
    ``regionendpoint`` empty means AWS (``s3.<region>.amazonaws.com``); with no scheme it gets
    https, or http when ``secure`` is false.  Credentials left empty come from
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``).
    ``rootdirectory`` prefixes every key, as in registry:2, so its buckets are served as they are.
    ``spooldirectory`` buffers upload parts in files there instead of memory.
    """

    bucket: str
    region: str = "us-east-1"
    regionendpoint: str = attrs.field(default="", validator=_regionendpoint)
    accesskey: str = ""
    secretkey: str = ""
    rootdirectory: str = ""
    chunksize: int = attrs.field(default=DEFAULT_CHUNK_SIZE, validator=_chunksize)
    secure: bool = True
    forcepathstyle: bool = False
    redirect: bool = False
    spooldirectory: str | None = None
    # Seconds a request waits for S3's answer (not counting the time to send a streamed body).
    answertimeout: float = 60.0
    # Seconds a server-side copy or a multipart completion may take before S3 answers.
    copytimeout: float = 600.0
    # Seconds a transfer may go without a byte moving either way (None: no limit); see
    # `registry.storage.s3._connections`.
    idletimeout: float | None = 60.0

    def credentials(self) -> tuple[str, str, str | None]:
        """(access key, secret key, session token), falling back to the AWS_* variables."""
        if self.accesskey and self.secretkey:
            return self.accesskey, self.secretkey, None
        # Each key left empty comes from its AWS_* variable (a secret kept out of the file).
        access = self.accesskey or os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret = self.secretkey or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not access or not secret:
            raise ValueError(
                "s3 storage needs accesskey and secretkey "
                "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        # A session token goes with the temporary key of the environment, not one of the file.
        token = None if self.accesskey else os.environ.get("AWS_SESSION_TOKEN") or None
        return access, secret, token

    def key_prefix(self) -> str:
        """The prefix of every object key: ``rootdirectory`` without its slashes, then ``/``."""
        root = self.rootdirectory.strip("/")
        return f"{root}/" if root else ""


def quote_key(key: str) -> str:
    """Percent-encode a key for a URL path, as SigV4's canonical URI expects for S3."""
    return quote(key, safe="/-_.~")


def quote_query(value: str) -> str:
    """Percent-encode a query value as SigV4 canonicalises it (``/`` included)."""
    return quote(value, safe="-_.~")


@attrs.frozen
class Endpoint:
    """The base URLs for bucket-level and object requests."""

    bucket_url: str  # ends with "/": object URLs are bucket_url + quoted key

    @classmethod
    def from_settings(cls, settings: S3Settings) -> Endpoint:
        endpoint = settings.regionendpoint.rstrip("/")
        if not endpoint:
            endpoint = f"s3.{settings.region}.amazonaws.com"
        if "://" not in endpoint:
            endpoint = f"{'https' if settings.secure else 'http'}://{endpoint}"
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        # Virtual-hosted addressing needs a DNS name under which <bucket>.<host> resolves (and,
        # over TLS, a bucket name without dots for the wildcard certificate); otherwise use paths.
        path_style = (
            settings.forcepathstyle
            or _is_ip_or_localhost(host)
            or ("." in settings.bucket and parts.scheme == "https")
        )
        if path_style:
            return cls(f"{endpoint}/{settings.bucket}/")
        return cls(f"{parts.scheme}://{settings.bucket}.{parts.netloc}/")

    def url(self, key: str = "", query: dict[str, str] | None = None) -> str:
        url = self.bucket_url + quote_key(key)
        if query:
            url += "?" + "&".join(
                f"{quote_query(name)}={quote_query(value)}" for name, value in sorted(query.items())
            )
        return url


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
