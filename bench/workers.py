"""
``[http] workers``: txregistry with 1 and with 2 workers beside registry:2, interleaved.

    python bench/workers.py [--rounds 3] [--seconds 10] [--workers 1,2] [--before DIR]
                            [--connections 64,1000]

Each round runs the manifest GET (wrk) at every ``--connections`` count and the blob HEAD (hey;
wrk cannot send HEAD) at 64 connections against registry:2, txregistry with each ``--workers``
count and, with ``--before DIR``, the code of the checkout DIR with the largest of those
counts (before and after a change, in the same run), each on its own empty storage with the
same small image pushed first.  Reported: the median rate and p99 of each, wrk's errors
(timeouts apart: an answer slower than 2 s), the ratios to registry:2, the CPU seconds the
server's whole process tree (supervisor and workers) used per 10,000 requests, and the tree's
peak RSS sum during the step.  These machines are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import Registry2, Server, TxRegistry
from bench.requests import Rate, hey, push_small_image, wrk_get
from bench.run import PeakRss, cpu_seconds

# The blob HEAD's connections (hey at 1,000 connections would take the cores it measures).
CONNECTIONS = 64


def scenarios_for(
    server: Server, layer: str, connections: list[int], seconds: int
) -> dict[str, Callable[[], Rate]]:
    manifest = f"{server.url}/v2/bench/small/manifests/latest"
    scenarios: dict[str, Callable[[], Rate]] = {
        f"manifest GET, {count} connections": lambda c=count: wrk_get(manifest, c, seconds)
        for count in connections
    }
    scenarios[f"blob HEAD, {CONNECTIONS} connections"] = lambda: hey(
        f"{server.url}/v2/bench/small/blobs/{layer}", CONNECTIONS, seconds, "HEAD"
    )
    return scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument(
        "--before", type=Path, help="a checkout whose code runs too (the largest worker count)"
    )
    parser.add_argument(
        "--connections", default="64", help="manifest GET connection counts, comma-separated"
    )
    args = parser.parse_args()
    counts = [int(word) for word in args.workers.split(",")]
    connections = [int(word) for word in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="txregistry-bench-workers-"))
    servers: list[Server] = [Registry2("registry:2", work / "registry2")]
    servers += [
        TxRegistry(f"workers={count}", work / f"tx{count}", http={"workers": str(count)})
        for count in counts
    ]
    if args.before is not None:
        most = max(counts)
        servers.append(
            TxRegistry(
                f"before w={most}",
                work / "before",
                http={"workers": str(most)},
                code_root=args.before.resolve(),
            )
        )
    results: dict[str, dict[str, list[tuple[Rate, float, float]]]] = {}
    try:
        targets = {}
        for server in servers:
            server.start()
            targets[server.name] = push_small_image(server.url, "bench/small")
        print(f"load average at the start: {os.getloadavg()}", flush=True)
        for round_index in range(args.rounds):
            for server in servers:
                _, layer = targets[server.name]
                for name, action in scenarios_for(server, layer, connections, args.seconds).items():
                    before = cpu_seconds(server.pid)
                    with PeakRss(server.pid) as rss:
                        rate = action()
                    cpu = cpu_seconds(server.pid) - before
                    per_10k = cpu / max(1.0, rate.requests_per_second * args.seconds) * 10_000
                    results.setdefault(name, {}).setdefault(server.name, []).append(
                        (rate, per_10k, rss.peak_mib)
                    )
                    print(
                        f"round {round_index + 1} {server.name:11} {name:30} "
                        f"{rate.requests_per_second:8.0f} req/s  p99 {rate.p99_ms:7.1f} ms  "
                        f"errors {rate.errors}{rate.detail and f' ({rate.detail})'} "
                        f"non-2xx {rate.non_2xx}  "
                        f"CPU {cpu:5.1f} s ({per_10k:4.2f} s per 10k requests)  "
                        f"peak RSS {rss.peak_mib:6.1f} MiB  load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
    print(f"\nmedians of {args.rounds} rounds, {args.seconds} s each; load average now "
          f"{os.getloadavg()}")  # fmt: skip
    for name, by_server in results.items():
        reference = statistics.median(r.requests_per_second for r, _, _ in by_server["registry:2"])
        for server_name, runs in by_server.items():
            rate = statistics.median(r.requests_per_second for r, _, _ in runs)
            p99 = statistics.median(r.p99_ms for r, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            rss = statistics.median(m for _, _, m in runs)
            errors = "/".join(str(r.errors) for r, _, _ in runs)
            print(
                f"{name:30} {server_name:11} {rate:8.0f} req/s  p99 {p99:7.1f} ms  "
                f"{rate / reference:5.2f}x registry:2  CPU {cpu:4.2f} s/10k  "
                f"RSS {rss:6.1f} MiB  errors per round {errors}"
            )


if __name__ == "__main__":
    main()
