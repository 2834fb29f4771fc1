"""
What the inline sha256 of a push costs: CPU seconds per GiB for the registry's own hasher
(``registry.api.digests.DigestingHasher``, the one uploads feed as bytes arrive), on one core.

    python bench/sha256_cost.py [--size-mib 1024] [--chunk-kib 1024] [--rounds 5]

Every round feeds ``--size-mib`` MiB (one random ``--chunk-kib`` KiB buffer, over and over: the
data is in memory, so this measures the hashing alone) and reads the digest.  Reported: the
median CPU time of this process per GiB (``time.process_time``), the rounds', and whether the
CPU announces SHA instructions (``sha_ni`` in /proc/cpuinfo), which the hasher uses when there.
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
from registry.api.digests import DigestingHasher


def sha_instructions() -> bool:
    try:
        return " sha_ni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    chunk = os.urandom(args.chunk_kib * 1024)
    count = args.size_mib * MiB // len(chunk)
    per_gib = 1024 * MiB / (count * len(chunk))
    seconds: list[float] = []
    for round_index in range(args.rounds):
        hasher = DigestingHasher("sha256")
        started = time.process_time()
        for _ in range(count):
            hasher.update(chunk)
        hasher.digest()
        used = (time.process_time() - started) * per_gib
        seconds.append(round(used, 3))
        print(f"round {round_index + 1}: {used:.3f} CPU s per GiB", flush=True)
    median = statistics.median(seconds)
    print(
        f"\nsha256 of {args.size_mib} MiB in {args.chunk_kib} KiB pieces: {median:.2f} CPU s per"
        f" GiB (median of {args.rounds}; SHA instructions: {sha_instructions()})"
    )
    print(json.dumps({"cpu_s_per_gib": median, "rounds": seconds, "sha_ni": sha_instructions()}))


if __name__ == "__main__":
    main()
