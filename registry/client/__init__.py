"""
``registry.client``: an async Twisted client for the OCI Distribution API, and OCI image
layouts on disk.  See docs/client.md.

    client = RegistryClient(reactor, "https://registry.example", credentials=...)
    manifest = await client.get_manifest("library/alpine", "latest")

Everything here is typed; every failure is a `ClientError` subclass carrying the HTTP status
and the OCI error codes.
"""

from registry.client._client import (
    MANIFEST_MEDIA_TYPES,
    BlobStream,
    Manifest,
    Page,
    RegistryClient,
    Upload,
    index_descriptors,
)
from registry.client._session import RateLimitStatus
from registry.client._streams import FileSink
from registry.client._tls import TLSOptions
from registry.client.auth import Credentials, credentials_from_config
from registry.client.errors import (
    BadResponse,
    ClientError,
    NotFound,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "BadResponse",
    "BlobStream",
    "ClientError",
    "Credentials",
    "FileSink",
    "Manifest",
    "NotFound",
    "Page",
    "RateLimitStatus",
    "RateLimited",
    "RegistryClient",
    "Rejected",
    "TLSOptions",
    "Unauthorized",
    "Unavailable",
    "Upload",
    "credentials_from_config",
    "index_descriptors",
]
