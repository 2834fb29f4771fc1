"""
``registry.client``: an async Twisted client for the OCI Distribution API, OCI image
layouts on disk, and an image copier between the two.  See docs/client.md.

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
from registry.client.copy import (
    CopyEvent,
    CopyResult,
    LayoutImage,
    RegistryImage,
    copy_image,
)
from registry.client.errors import (
    BadResponse,
    ClientError,
    NotFound,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
)
from registry.client.layout import OCILayout

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "BadResponse",
    "BlobStream",
    "ClientError",
    "CopyEvent",
    "CopyResult",
    "Credentials",
    "FileSink",
    "LayoutImage",
    "Manifest",
    "NotFound",
    "OCILayout",
    "Page",
    "RateLimitStatus",
    "RateLimited",
    "RegistryClient",
    "RegistryImage",
    "Rejected",
    "TLSOptions",
    "Unauthorized",
    "Unavailable",
    "Upload",
    "copy_image",
    "credentials_from_config",
    "index_descriptors",
]
