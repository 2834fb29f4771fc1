"""
One replication pass over many repositories with one new tag upstream: how long the pass
takes, and what it transfers (the issue's target: 200 repositories x 5 tags, ≤ 10 s, only the
new tag's blobs).

    python bench/sync_pass.py [--repositories 200] [--tags 5] [--concurrency 4]

Two ``twistd registry`` processes on loopback: the remote, filled through the client library
(one layer mounted into every repository, a distinct manifest per tag), and a registry with a
``[sync:bench]`` pull section.  After the first (full) pass, one new tag with a new layer is
pushed; the figure is the duration of the next pass, from the sync's own status (start to end
of the run), with its counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task

from registry.client import RegistryClient
from registry.sync.status import COUNTERS
from tests.client import images
from tests.e2e.client import get
from tests.e2e.harness import RegistryProcess, sleep


async def status(url: str) -> dict[str, Any]:
    _, body = await get(f"{url}/sync/status/bench")
    result: dict[str, Any] = json.loads(body)
    return result


async def wait_runs(url: str, runs: int, limit: float = 600) -> dict[str, Any]:
    for _ in range(int(limit / 0.1)):
        current = await status(url)
        if current["runs"] >= runs and current["state"] != "running":
            return current
        await sleep(0.1)
    raise RuntimeError("no run")


async def fill(client: RegistryClient, repositories: int, tags: int) -> None:
    layer = os.urandom(100_000)
    manifest, blobs = images.image("amd64", [layer])
    first = "bench/r000"
    for dgst, data in blobs.items():
        await client.upload_blob(first, data, dgst)
    limit = defer.DeferredSemaphore(8)

    async def one(index: int) -> None:
        name = f"bench/r{index:03d}"
        if name != first:
            for dgst in blobs:
                assert await client.mount_blob(name, dgst, first)
        for tag in range(tags):
            body = manifest.replace(b'"schemaVersion"', f'"t": "{tag}", "schemaVersion"'.encode())
            await client.put_manifest(name, f"t{tag}", body, images.OCI_MANIFEST)

    await defer.gatherResults(
        [limit.run(lambda i=i: defer.Deferred.fromCoroutine(one(i))) for i in range(repositories)]
    )


async def main(reactor: Any, options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "remote").mkdir()
        (root / "local").mkdir()
        remote = RegistryProcess(root / "remote")
        remote.start()
        local = None
        client = RegistryClient(reactor, remote.url)
        try:
            await fill(client, options.repositories, options.tags)
            local = RegistryProcess(
                root / "local",
                {
                    "sync:bench": {
                        "remote": remote.url,
                        "repositories": "bench/*",
                        "interval": "2s",
                        "concurrency": str(options.concurrency),
                    }
                },
            )
            local.start()
            first = await wait_runs(local.url, 1)
            new, blobs = images.image("amd64", [os.urandom(200_000)])
            for dgst, data in blobs.items():
                await client.upload_blob("bench/r007", data, dgst)
            await client.put_manifest("bench/r007", "new", new)
            before = await status(local.url)
            runs = before["runs"] + (2 if before["state"] == "running" else 1)
            after = await wait_runs(local.url, runs)
            last = after["last"]
            print(
                json.dumps(
                    {
                        "repositories": options.repositories,
                        "tags": options.repositories * options.tags + 1,
                        "concurrency": options.concurrency,
                        "first_pass_seconds": round(
                            first["last"]["finished"] - first["last"]["started"], 2
                        ),
                        "incremental_pass_seconds": round(last["finished"] - last["started"], 2),
                        "incremental": {k: last[k] for k in COUNTERS if k != "repositories"},
                        "new_tag_blob_bytes": sum(len(b) for b in blobs.values()),
                    }
                )
            )
        finally:
            await client.close()
            if local is not None:
                local.stop()
            remote.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--tags", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, parser.parse_args())))
