"""
The web UI's two targets, measured on a running ``twistd registry`` over filesystem storage:

* the repository page of a repository with 10,000 tags (first page, newest first) <= 150 ms;
* the repository list of 5,000 repositories <= 150 ms.

    python bench/ui.py [--tags 10000] [--repositories 5000] [--requests 50]

The data is written straight into the registry:2 layout (tag links with spread-out dates,
catalog index entries), so setting up takes seconds rather than 15,000 pushes.  Each page is
fetched once cold (right after start: the tag dates are read from storage then) and then
``--requests`` times over one keep-alive connection; the median and p90 are reported.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import TxRegistry
from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.catalog import COMPLETE_MARKER, entry_path

BIG = "bench/big"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def write(root: Path, path: str, data: bytes, mtime: float | None = None) -> None:
    full = root / path
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_bytes(data)
    if mtime is not None:
        os.utime(full, (mtime, mtime))


def blob(root: Path, data: bytes, mtime: float | None = None) -> Digest:
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    write(root, layout.blob_data(digest), data, mtime)
    return digest


def store_image(
    root: Path, config: bytes, layers: list[bytes], mtime: float | None = None
) -> tuple[Digest, list[Digest]]:
    """An OCI image's blobs written into ``root``: its manifest's digest, and its config's
    and layers' (which a repository links)."""
    config_digest = blob(root, config, mtime)
    layer_digests = [blob(root, data, mtime) for data in layers]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(config_digest),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": str(d),
                    "size": len(data),
                }
                for d, data in zip(layer_digests, layers, strict=True)
            ],
        }
    ).encode()
    return blob(root, manifest, mtime), [config_digest, *layer_digests]


def image(root: Path) -> tuple[Digest, list[Digest]]:
    """One small image (config, two layers, manifest) whose blobs every repository links."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]}, "history": []}
    ).encode()
    return store_image(root, config, [os.urandom(1024), os.urandom(2048)])


def repository(root: Path, name: str, manifest: Digest, blobs: list[Digest]) -> None:
    for digest in blobs:
        write(root, layout.layer_link(name, digest), str(digest).encode())
    write(root, layout.revision_link(name, manifest), str(manifest).encode())
    write(root, entry_path(name), name.encode())


def tag(root: Path, name: str, tag_name: str, manifest: Digest, when: float) -> None:
    link = str(manifest).encode()
    write(root, layout.tag_index_link(name, tag_name, manifest), link)
    write(root, layout.tag_current_link(name, tag_name), link, when)


def fill(root: Path, tags: int, repositories: int) -> None:
    manifest, blobs = image(root)
    now = time.time()
    repository(root, BIG, manifest, blobs)
    for i in range(tags):
        # Dates spread over a year, not in name order: the page must really sort.
        tag(root, BIG, f"v{i:05d}", manifest, now - ((i * 7919) % tags) * 3600.0)
    for i in range(repositories - 1):
        name = f"team{i % 50:02d}/service-{i:05d}"
        repository(root, name, manifest, blobs)
        tag(root, name, "latest", manifest, now - i)
    write(root, COMPLETE_MARKER, b"1")


def fetch(connection: http.client.HTTPConnection, path: str) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    return (time.perf_counter() - started) * 1000.0, response.status, body


def measure(server: TxRegistry, path: str, requests: int) -> dict[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        cold, status, body = fetch(connection, path)
        if status != 200:
            raise SystemExit(f"{path}: {status} {body[:300]!r}")
        times = []
        for _ in range(requests):
            elapsed, status, _ = fetch(connection, path)
            assert status == 200
            times.append(elapsed)
    finally:
        connection.close()
    times.sort()
    return {
        "cold_ms": cold,
        "median_ms": statistics.median(times),
        "p90_ms": times[int(len(times) * 0.9) - 1],
        "bytes": len(body),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--repositories", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="txregistry-bench-ui-") as folder:
        data = Path(folder) / "data"
        started = time.monotonic()
        fill(data, args.tags, args.repositories)
        print(
            f"wrote {args.tags} tags and {args.repositories} repositories in "
            f"{time.monotonic() - started:.1f} s"
        )
        server = TxRegistry("txregistry", Path(folder) / "server", {"rootdirectory": str(data)})
        server.start()
        try:
            results = {
                f"repository page, {args.tags} tags, first page": measure(
                    server, f"/ui/r/{BIG}", args.requests
                ),
                f"repository page, {args.tags} tags, middle page": measure(
                    server, f"/ui/r/{BIG}?offset={args.tags // 2}", args.requests
                ),
                f"repository list, {args.repositories} repositories": measure(
                    server, "/ui/", args.requests
                ),
                f"repository list, {args.repositories} repositories, search": measure(
                    server, "/ui/?q=service-012", args.requests
                ),
            }
        finally:
            server.stop()
    for label, figures in results.items():
        print(
            f"{label}: median {figures['median_ms']:.1f} ms, p90 {figures['p90_ms']:.1f} ms, "
            f"cold {figures['cold_ms']:.1f} ms ({int(figures['bytes'])} bytes)"
        )


if __name__ == "__main__":
    main()
