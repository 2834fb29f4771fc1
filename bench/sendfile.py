"""
Pulling 1 GiB: txregistry with ``[http] sendfile`` = true and auto (the default: on loopback,
as here, no sendfile), registry:2, and nginx serving the same file as a static file (what
curl downloads from a trivial local server).

    python bench/sendfile.py [--rounds 5]

Each server stores the blob once (pushed with curl); then every round pulls it from each server
with curl (``-o /dev/null``), interleaved.  The blob is in the page cache for every pull: this
measures the sending, not the disk.  Reported per server: the median MiB/s (1 GiB over the
whole curl run) and the median CPU time the server used per GiB pulled (user + system, all
its processes and threads, from ``/proc/<pid>/stat`` before and after the pull).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import Nginx, Registry2, Server, TxRegistry
from bench.run import RESULTS, MiB, background_cpu, cpu_seconds, make_file, push_monolithic


def pull(url: str, size: int) -> float:
    """Seconds for curl to download ``url`` (the whole run, curl's start included)."""
    started = time.perf_counter()
    result = subprocess.run(
        ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
        capture_output=True,
        check=True,
    )
    elapsed = time.perf_counter() - started
    status, downloaded = result.stdout.decode().split()
    assert status == "200" and int(downloaded) == size, (url, result.stdout)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/txregistry-bench-sendfile")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = 1024 * MiB
    print("preparing the 1 GiB file ...", flush=True)
    blob = work / "blob-1g"
    digest = make_file(blob, size)

    registries: list[Server] = [
        TxRegistry("txregistry sendfile = true", work / "tx-sendfile", http={"sendfile": "true"}),
        TxRegistry("txregistry sendfile = auto", work / "tx-nosendfile", http={"sendfile": "auto"}),
        Registry2("registry:2", work / "registry2"),
    ]
    ceiling = Nginx("nginx static file", work / "nginx", blob)
    servers = [*registries, ceiling]
    urls: dict[str, str] = {}
    try:
        for server in servers:
            server.start()
        for server in registries:
            push_monolithic(server, "bench/pull", blob, digest)
            urls[server.name] = f"{server.url}/v2/bench/pull/blobs/{digest}"
        urls[ceiling.name] = f"{ceiling.url}/blob"
        for server in servers:  # untimed: the page cache and each process warmed up
            pull(urls[server.name], size)
        results: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        background = []
        for round_index in range(args.rounds):
            background.append(round(background_cpu(), 1))
            for server in servers:
                before = cpu_seconds(server.pid)
                elapsed = pull(urls[server.name], size)
                used = cpu_seconds(server.pid) - before
                results[server.name].append((size / MiB / elapsed, used))
                print(
                    f"round {round_index + 1}: {server.name:24} {size / MiB / elapsed:7.0f} MiB/s"
                    f"  server CPU {used:.2f} s",
                    flush=True,
                )
    finally:
        for server in servers:
            server.stop()

    ceiling_rate = statistics.median(rate for rate, _ in results[ceiling.name])
    print(f"\npull 1 GiB, medians of {args.rounds} rounds (background CPU {background}%)")
    print("| server | MiB/s | of nginx | server CPU s per GiB |\n|---|---:|---:|---:|")
    summary = {}
    for name, samples in results.items():
        rate = statistics.median(r for r, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        summary[name] = {"mib_per_s": round(rate), "cpu_s_per_gib": round(cpu, 3)}
        print(f"| {name} | {rate:.0f} | {100 * rate / ceiling_rate:.0f}% | {cpu:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"sendfile-{stamp}.json"
    out.write_text(json.dumps({"rounds": args.rounds, "background": background, **summary}))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
