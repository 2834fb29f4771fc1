"""
``[http] workers``: txregistry with 1 and with 2 workers beside registry:2, interleaved.

    python bench/workers.py [--rounds 3] [--seconds 10]

Each round runs the manifest GET (wrk) and the blob HEAD (hey; wrk cannot send HEAD) at 64
connections against registry:2, txregistry with ``workers = 1`` and txregistry with
``workers = 2``, each on its own empty storage with the same small image pushed first.
Reported: the median rate and p99 of each, the ratios to registry:2, and the CPU seconds the
server's whole process tree (supervisor and workers) used per 10,000 requests.  These machines
are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import Registry2, Server, TxRegistry
from bench.requests import Rate, hey, push_small_image, wrk_get

CONNECTIONS = 64


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (the workers)."""
    total = 0.0
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="txregistry-bench-workers-"))
    servers: list[Server] = [
        Registry2("registry:2", work / "registry2"),
        TxRegistry("workers=1", work / "tx1", http={"workers": "1"}),
        TxRegistry("workers=2", work / "tx2", http={"workers": "2"}),
    ]
    results: dict[str, dict[str, list[tuple[Rate, float]]]] = {}
    try:
        targets = {}
        for server in servers:
            server.start()
            targets[server.name] = push_small_image(server.url, "bench/small")
        for round_index in range(args.rounds):
            for server in servers:
                _, layer = targets[server.name]
                scenarios: dict[str, Callable[[], Rate]] = {
                    "manifest GET": lambda s=server: wrk_get(
                        f"{s.url}/v2/bench/small/manifests/latest", CONNECTIONS, args.seconds
                    ),
                    "blob HEAD": lambda s=server, b=layer: hey(
                        f"{s.url}/v2/bench/small/blobs/{b}", CONNECTIONS, args.seconds, "HEAD"
                    ),
                }
                for name, action in scenarios.items():
                    before = tree_cpu(server.pid)
                    rate = action()
                    cpu = tree_cpu(server.pid) - before
                    per_10k = cpu / max(1.0, rate.requests_per_second * args.seconds) * 10_000
                    results.setdefault(name, {}).setdefault(server.name, []).append((rate, per_10k))
                    print(
                        f"round {round_index + 1} {server.name:11} {name:13} "
                        f"{rate.requests_per_second:8.0f} req/s  p99 {rate.p99_ms:7.1f} ms  "
                        f"errors {rate.errors}{rate.detail and f' ({rate.detail})'} "
                        f"non-2xx {rate.non_2xx}  "
                        f"CPU {cpu:5.1f} s ({per_10k:4.2f} s per 10k requests)",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
    print(f"\nmedians of {args.rounds} rounds, {CONNECTIONS} connections, {args.seconds} s each")
    for name, by_server in results.items():
        reference = statistics.median(r.requests_per_second for r, _ in by_server["registry:2"])
        for server_name, runs in by_server.items():
            rate = statistics.median(r.requests_per_second for r, _ in runs)
            p99 = statistics.median(r.p99_ms for r, _ in runs)
            print(
                f"{name:13} {server_name:11} {rate:8.0f} req/s  p99 {p99:7.1f} ms  "
                f"{rate / reference:5.2f}x registry:2"
            )


if __name__ == "__main__":
    main()
