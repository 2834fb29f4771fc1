"""Helpers for the pull-through cache tests: pulling through a registry, hand-made images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater

from registry.proxy.cache import ProxyCache
from registry.proxy.config import ProxyConfig
from registry.proxy.upstream import UpstreamClient
from registry.storage.blobs import BlobStore
from registry.storage.driver import IStorageDriver
from registry.storage.tags import TagStore
from tests.e2e.client import sha256
from tests.e2e.harness import InProcessRegistry
from tests.fakes.content import BytesBlob, Content, GeneratedBlob, Image, Layer

reactor: Any = _reactor

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def hub_cache(
    upstream: str, client: UpstreamClient, driver: IStorageDriver, **options: Any
) -> ProxyCache:
    """A cache named hub of ``upstream`` (the default one) on ``driver``, built in the test's
    process; ``options`` are ProxyCache's others (limits, index, fleet)."""
    return ProxyCache(
        config=ProxyConfig(name="hub", remoteurl=upstream, default=True),
        client=client,
        driver=driver,
        blobs=BlobStore(driver),
        tags=TagStore(driver),
        reactor=reactor,
        **options,
    )


async def fetch(url: str, method: str = "GET", **kwargs: Any) -> tuple[Any, bytes]:
    response = await treq.request(method, url, **kwargs)
    return response, await response.content()


async def pull(registry: InProcessRegistry | str, name: str, reference: str) -> dict[str, Any]:
    """Pull manifest and every blob of an image (single-platform); assert every digest."""
    url = registry if isinstance(registry, str) else registry.url
    response, body = await fetch(f"{url}/v2/{name}/manifests/{reference}")
    assert response.code == 200, body[:500]
    manifest = json.loads(body)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        response, data = await fetch(f"{url}/v2/{name}/blobs/{descriptor['digest']}")
        assert response.code == 200, data[:500]
        assert sha256(data) == descriptor["digest"]
    return dict(manifest, digest=sha256(body))


def build_image(content: Content, name: str, tag: str, layers: list[GeneratedBlob]) -> Image:
    """An image made of given layer blobs (so that two images can share one)."""
    for blob in layers:
        content.add_blob(name, blob)
    config = BytesBlob(json.dumps({"tag": tag, "layers": [b.digest for b in layers]}).encode())
    content.add_blob(name, config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config.digest,
                "size": config.size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": b.digest,
                    "size": b.size,
                }
                for b in layers
            ],
        }
    ).encode()
    digest = content.add_manifest(name, DOCKER_MANIFEST, body, tag)
    return Image(
        name,
        tag,
        digest,
        DOCKER_MANIFEST,
        body,
        config.digest,
        tuple(Layer(b.digest, b.size) for b in layers),
    )


def storage_root(registry: InProcessRegistry) -> Path:
    config = registry.options.config
    assert config is not None
    return Path(config.storage.rootdirectory)


def blob_data_path(root: Path, digest: str) -> Path:
    algorithm, hex_ = digest.split(":", 1)
    return root / "docker/registry/v2/blobs" / algorithm / hex_[:2] / hex_ / "data"


def fill_files(root: Path) -> list[str]:
    fills = root / "docker/registry/v2/txregistry/proxy"
    found: list[str] = []
    for folder, _, files in os.walk(fills):
        if folder.endswith("fills") or "/fills" in folder:
            found += files
    return found


async def wait_for(condition: Any, within: float = 10.0) -> None:
    deadline = reactor.seconds() + within
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.05, lambda: None)


def metric(text: str, name: str, upstream: str = "hub") -> float:
    prefix = f'{name}{{upstream="{upstream}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"{name} not in metrics")
