"""
``registry.client``: an async Twisted client for the OCI Distribution API, OCI image
layouts on disk, and an image copier between the two.  See docs/client.md.

    client = RegistryClient(reactor, "https://registry.example", credentials=...)
    manifest = await client.get_manifest("library/alpine", "latest")

Everything here is typed; every failure is a `ClientError` subclass carrying the HTTP status
and the OCI error codes.

The names are loaded on first use (PEP 562 ``__getattr__``): a registry that only needs the
error classes (its pull-through cache names them) does not load the HTTP client with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from registry.client.errors import (
    AccessDenied,
    BadResponse,
    ClientError,
    ForeignChallenge,
    NotFound,
    RateLimited,
    Rejected,
    TooLarge,
    Unauthorized,
    Unavailable,
    UntrustedCertificate,
)

if TYPE_CHECKING:
    from registry.api.digests import Digest
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
    from registry.client._streams import FileSink, single_use
    from registry.client._tls import TLSOptions
    from registry.client.auth import Credentials, credentials_from_config
    from registry.client.copy import (
        CopyEvent,
        CopyResult,
        LayoutImage,
        RegistryImage,
        copy_image,
    )
    from registry.client.layout import OCILayout

_LAZY = {
    "Digest": "registry.api.digests",
    **dict.fromkeys(
        [
            "MANIFEST_MEDIA_TYPES",
            "BlobStream",
            "Manifest",
            "Page",
            "RegistryClient",
            "Upload",
            "index_descriptors",
        ],
        "registry.client._client",
    ),
    "RateLimitStatus": "registry.client._session",
    "FileSink": "registry.client._streams",
    "single_use": "registry.client._streams",
    "TLSOptions": "registry.client._tls",
    "Credentials": "registry.client.auth",
    "credentials_from_config": "registry.client.auth",
    **dict.fromkeys(
        ["CopyEvent", "CopyResult", "LayoutImage", "RegistryImage", "copy_image"],
        "registry.client.copy",
    ),
    "OCILayout": "registry.client.layout",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'registry.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "AccessDenied",
    "BadResponse",
    "BlobStream",
    "ClientError",
    "CopyEvent",
    "CopyResult",
    "Credentials",
    "Digest",
    "FileSink",
    "ForeignChallenge",
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
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UntrustedCertificate",
    "Upload",
    "copy_image",
    "credentials_from_config",
    "index_descriptors",
    "single_use",
]
