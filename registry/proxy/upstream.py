"""
The pull-through cache's view of its upstream: the public client library
(`registry.client.RegistryClient`) with the cache's defaults.

The cache retries nothing itself at this level (a fill that fails is retried by the next pull,
and a client waiting on it should hear "unavailable" within one timeout), so retries are off.
The credential rules (credentials and tokens only to the realm the upstream's own ``/v2/``
announced; a 401 from elsewhere is an error; redirects to another origin never carry
``Authorization``) live in
the library.
"""

from __future__ import annotations

from typing import Any

from registry.client._client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_ACCEPT,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobStream,
    Manifest,
    RegistryClient,
    index_descriptors,
)
from registry.client._session import RateLimitStatus, origin_of
from registry.client._tls import load_trust_root

UpstreamManifest = Manifest
UpstreamBlob = BlobStream


class UpstreamClient(RegistryClient):
    """`RegistryClient` without retries, as the cache uses it."""

    def __init__(self, reactor: Any, remote_url: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(reactor, remote_url, **kwargs)
        self.remote_url = self.url


__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1",
    "DOCKER_SCHEMA1_SIGNED",
    "MANIFEST_ACCEPT",
    "MANIFEST_MEDIA_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "RateLimitStatus",
    "UpstreamBlob",
    "UpstreamClient",
    "UpstreamManifest",
    "index_descriptors",
    "load_trust_root",
    "origin_of",
]
