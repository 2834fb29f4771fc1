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

from collections.abc import Sequence
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
    Method,
    RegistryClient,
    index_descriptors,
)
from registry.client._session import RateLimitStatus, origin_of
from registry.client._tls import load_trust_root
from registry.proxy.health import FIRST_HOLD, UpstreamHealth

UpstreamManifest = Manifest
UpstreamBlob = BlobStream


class UpstreamClient(RegistryClient):
    """`RegistryClient` without retries, as the cache uses it; the calls the cache makes go
    through the upstream's health (`registry.proxy.health`): none is made while it is out."""

    def __init__(
        self,
        reactor: Any,
        remote_url: str,
        *,
        name: str = "",
        hold_off: float = FIRST_HOLD,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(reactor, remote_url, **kwargs)
        self.remote_url = self.url
        self.health = UpstreamHealth(name, self.url, clock=reactor.seconds, first_hold=hold_off)

    async def manifest(
        self,
        name: str,
        reference: str,
        method: Method = "GET",
        accept: Sequence[str] = MANIFEST_MEDIA_TYPES,
    ) -> Manifest:
        return await self.health.call(
            lambda: super(UpstreamClient, self).manifest(name, reference, method, accept),
            f"manifest {method}",
        )

    async def blob(self, *args: Any, **kwargs: Any) -> BlobStream:
        return await self.health.call(
            lambda: super(UpstreamClient, self).blob(*args, **kwargs), "blob GET"
        )

    async def blob_head(self, *args: Any, **kwargs: Any) -> int:
        return await self.health.call(
            lambda: super(UpstreamClient, self).blob_head(*args, **kwargs), "blob HEAD"
        )

    async def tags(self, *args: Any, **kwargs: Any) -> tuple[list[str], bool]:
        return await self.health.call(
            lambda: super(UpstreamClient, self).tags(*args, **kwargs), "tags"
        )

    async def referrers(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]] | None:
        return await self.health.call(
            lambda: super(UpstreamClient, self).referrers(*args, **kwargs), "referrers"
        )


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
