"""
What deleting a large file costs the thread that deletes it: the time of one ``os.unlink`` of a
file whose pages are in the page cache (the kernel frees them inside the call).

    python bench/unlink_cost.py [--size-mib 1024] [--rounds 5] [--workdir DIR]

Every round writes a file of ``--size-mib`` MiB of pseudo-random bytes in ``--workdir`` (on
the filesystem to measure: the registry's storage root) and unlinks it twice over: once right
after writing (pages still dirty, as an upload just committed), once after ``fsync`` (pages
written back, clean).  Reported: the median milliseconds per GiB of each case, and every
round's.  This is why the filesystem driver renames deleted files into ``<root>/.trash/`` and
removes them on a worker thread (docs/storage.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import MiB


def write(path: Path, size: int, block: bytes, sync: bool) -> None:
    with open(path, "wb") as file:
        for index in range(size // len(block)):
            file.write(index.to_bytes(8, "big") + block[8:])
        if sync:
            file.flush()
            os.fsync(file.fileno())


def unlink_ms(path: Path) -> float:
    started = time.perf_counter()
    os.unlink(path)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/txregistry-bench-unlink")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    per_gib = 1024 / args.size_mib
    block = os.urandom(4 * MiB)
    results: dict[str, list[float]] = {"dirty": [], "clean": []}
    path = work / "victim"
    try:
        for round_index in range(args.rounds):
            for case in results:
                write(path, size, block, sync=case == "clean")
                elapsed = unlink_ms(path) * per_gib
                results[case].append(round(elapsed, 1))
                print(f"round {round_index + 1}: {case:5} {elapsed:7.1f} ms per GiB", flush=True)
    finally:
        path.unlink(missing_ok=True)
    summary = {case: statistics.median(values) for case, values in results.items()}
    print(f"\nunlink of a {args.size_mib} MiB file in {work}, medians of {args.rounds} rounds")
    print("| pages | ms per GiB |\n|---|---:|")
    for case, value in summary.items():
        print(f"| {case} | {value:.0f} |")
    print(json.dumps({"size_mib": args.size_mib, "rounds": results, "median": summary}))


if __name__ == "__main__":
    main()
