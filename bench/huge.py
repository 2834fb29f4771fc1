"""
A very large layer through txregistry, on the filesystem driver and on S3 (SeaweedFS):

    python bench/huge.py [--size-gib 20] [--storage filesystem s3]

The layer is generated data streamed from a generator (never stored on the client side): a
first pass hashes it, then a monolithic push (``POST`` + ``PUT ?digest=`` with the body) sends
it and a pull reads it back, hashing what arrives.  While each transfer runs, a thread samples
the server's RSS (the supervisor and its workers) every second together with the bytes moved
so far.  Reports MB/s per transfer and the RSS at the first GiB, at the last GiB, and its peak.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import TxRegistry
from bench.run import MiB, start_upload, with_query
from tests.storage.s3server import start_s3_server

GiB = 1024 * MiB
BLOCK = 16 * MiB
READ_SIZE = 4 * MiB


def generate(size: int, seed: bytes = b"txregistry-huge") -> Iterator[bytes]:
    """``size`` bytes of incompressible data, the same every time, made block by block: a
    random block whose first 8 bytes carry the block number, so no two blocks are equal."""
    block = bytearray(hashlib.shake_256(seed).digest(BLOCK))
    for number, start in enumerate(range(0, size, BLOCK)):
        block[:8] = number.to_bytes(8, "big")
        yield bytes(block[: min(BLOCK, size - start)])


def digest_of(size: int) -> str:
    hasher = hashlib.sha256()
    for piece in generate(size):
        hasher.update(piece)
    return "sha256:" + hasher.hexdigest()


def tree_rss(pid: int) -> int:
    """RSS of a process and its children (the supervisor and its workers)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # a worker may be replaced meanwhile
            total += process.memory_info().rss
    return total


class RssSeries:
    """(bytes moved, server RSS) every second while a transfer runs."""

    def __init__(self, pid: int, progress: Callable[[], int]) -> None:
        self.samples: list[tuple[int, int]] = []
        self._pid = pid
        self._progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((self._progress(), tree_rss(self._pid)))

    def __enter__(self) -> RssSeries:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, size: int) -> str:
        """RSS at the first GiB moved, at the last GiB, and the peak, in MiB."""
        inside = [(moved, rss) for moved, rss in self.samples if GiB <= moved <= size - GiB]
        if not inside:
            inside = self.samples or [(0, 0)]
        first, last = inside[0][1], inside[-1][1]
        peak = max(rss for _, rss in self.samples or [(0, 0)])
        return (
            f"RSS first GiB {first / MiB:.0f} MiB, last GiB {last / MiB:.0f} MiB, "
            f"peak {peak / MiB:.0f} MiB ({len(self.samples)} samples)"
        )


class Counted:
    """The generator's blocks, counting what was handed to the socket."""

    def __init__(self, size: int) -> None:
        self.moved = 0
        self._size = size

    def __iter__(self) -> Iterator[bytes]:
        for piece in generate(self._size):
            yield piece
            self.moved += len(piece)


def push(server: TxRegistry, repo: str, size: int, digest: str) -> tuple[float, RssSeries]:
    location = with_query(start_upload(server, repo), f"digest={digest}")
    parts = urlsplit(location)
    body = Counted(size)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    with RssSeries(server.pid, lambda: body.moved) as series:
        started = time.perf_counter()
        connection.request("PUT", f"{parts.path}?{parts.query}", body=iter(body), headers=headers)
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
    connection.close()
    assert response.status == 201, f"push: {response.status}"
    return elapsed, series


def pull(server: TxRegistry, repo: str, size: int, digest: str) -> tuple[float, RssSeries]:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    hasher = hashlib.sha256()
    received = [0]
    with RssSeries(server.pid, lambda: received[0]) as series:
        started = time.perf_counter()
        connection.request("GET", f"/v2/{repo}/blobs/{digest}")
        response = connection.getresponse()
        assert response.status == 200, f"pull: {response.status}"
        while chunk := response.read(READ_SIZE):
            hasher.update(chunk)
            received[0] += len(chunk)
        elapsed = time.perf_counter() - started
    connection.close()
    assert received[0] == size, f"pulled {received[0]} of {size} bytes"
    assert "sha256:" + hasher.hexdigest() == digest, "pulled bytes do not match the digest"
    return elapsed, series


def run(storage: str, size: int, digest: str, work: Path) -> None:
    settings: dict[str, str] = {}
    s3 = None
    s3_dir: Path | None = None
    if storage == "s3":
        s3_dir = Path(tempfile.mkdtemp(prefix="bench-huge-s3-", dir=work))
        s3 = start_s3_server(s3_dir)
        settings = {
            "driver": "s3",
            "bucket": s3.bucket,
            "region": s3.region,
            "regionendpoint": s3.endpoint,
            "accesskey": s3.access_key,
            "secretkey": s3.secret_key,
            "rootdirectory": f"/bench/{uuid.uuid4().hex}",
        }
    registry = TxRegistry("txregistry", work / f"txregistry-{storage}", settings)
    registry.start()
    gib = size / GiB
    try:
        seconds, series = push(registry, "bench/huge", size, digest)
        print(f"{storage:10} push {gib:.0f} GiB: {size / MiB / seconds:6.0f} MB/s; "
              f"{series.summary(size)}", flush=True)  # fmt: skip
        seconds, series = pull(registry, "bench/huge", size, digest)
        print(f"{storage:10} pull {gib:.0f} GiB: {size / MiB / seconds:6.0f} MB/s; "
              f"{series.summary(size)}", flush=True)  # fmt: skip
    finally:
        registry.stop()
        if s3 is not None:
            s3.stop()
        if s3_dir is not None:
            shutil.rmtree(s3_dir, ignore_errors=True)
        shutil.rmtree(work / f"txregistry-{storage}", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=20)
    parser.add_argument("--storage", nargs="+", default=["filesystem", "s3"])
    parser.add_argument("--workdir", default="/tmp/txregistry-bench-huge")
    args = parser.parse_args()
    size = int(args.size_gib * GiB)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    # Each storage holds the layer once (the S3 server a little more); one at a time.
    if free < size * 1.2:
        sys.exit(f"{free / GiB:.0f} GiB free in {work}: too little for a {args.size_gib} GiB layer")
    started = time.perf_counter()
    digest = digest_of(size)
    print(f"layer {args.size_gib} GiB {digest} (hashed in {time.perf_counter() - started:.0f} s)",
          flush=True)  # fmt: skip
    for storage in args.storage:
        run(storage, size, digest, work)


if __name__ == "__main__":
    main()
