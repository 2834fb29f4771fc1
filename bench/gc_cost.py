"""
What ``txregistry gc`` costs on the filesystem driver, on data written straight into the
registry:2 layout (so that setting up takes a minute rather than 20,000 pushes):

    python bench/gc_cost.py [--repositories 1000] [--images 20] [--untagged 5] [--orphans 20000]

Each repository holds ``--images`` images (a config, two layers and the manifest: four blobs
of its own each), all tagged but ``--untagged`` of them; every file is dated two hours back,
past gc's grace period.  On that data, one after the other: ``gc --dry-run
--delete-untagged``, ``gc`` (nothing to delete), ``gc --delete-untagged`` (deletes the
untagged images).  Then, on a storage holding only ``--orphans`` blobs that no manifest
references: ``gc --dry-run`` and ``gc``.  Each row: the wall time and the gc process's peak
RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ui import blob, store_image, write
from registry.storage import layout
from registry.storage.catalog import COMPLETE_MARKER, entry_path

AGE = 2 * 3600.0


def image(root: Path, name: str, number: int, tagged: bool, mtime: float) -> None:
    """One image of four blobs of its own, linked into ``name`` (tagged ``v<number>``)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": [name, number]}).encode()
    layers = [f"{name} {number} layer {i}".encode() * 8 for i in range(2)]
    manifest, linked = store_image(root, config, layers, mtime)
    for digest in linked:
        write(root, layout.layer_link(name, digest), str(digest).encode(), mtime)
    write(root, layout.revision_link(name, manifest), str(manifest).encode(), mtime)
    if tagged:
        link = str(manifest).encode()
        write(root, layout.tag_index_link(name, f"v{number}", manifest), link, mtime)
        write(root, layout.tag_current_link(name, f"v{number}"), link, mtime)


def fill(root: Path, repositories: int, images: int, untagged: int) -> None:
    mtime = time.time() - AGE
    for r in range(repositories):
        name = f"team{r % 50:02d}/service-{r:05d}"
        for i in range(images):
            image(root, name, i, tagged=i >= untagged, mtime=mtime)
        write(root, entry_path(name), name.encode(), mtime)
        if r % 100 == 99:
            print(f"  written {r + 1}/{repositories} repositories", file=sys.stderr, flush=True)
    write(root, COMPLETE_MARKER, b"1", mtime)


def orphans(root: Path, count: int) -> None:
    mtime = time.time() - AGE
    for i in range(count):
        blob(root, f"orphan {i}".encode(), mtime)


def gc(root: Path, *options: str) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one ``txregistry gc`` run on ``root``."""
    command = [sys.executable, "-m", "registry.cli", "gc", "--storage", str(root), *options]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    began = time.monotonic()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read() if process.stderr is not None else ""
    if process.returncode != 0:
        raise SystemExit(f"gc {' '.join(options)} failed ({process.returncode}): {stderr[-500:]}")
    return elapsed, usage.ru_maxrss / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=1000)
    parser.add_argument("--images", type=int, default=20, help="images per repository")
    parser.add_argument("--untagged", type=int, default=5, help="untagged images per repository")
    parser.add_argument("--orphans", type=int, default=20000, help="unreferenced blobs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as folder:
        data, loose = Path(folder) / "data", Path(folder) / "orphans"
        print("writing the data...", file=sys.stderr, flush=True)
        fill(data, args.repositories, args.images, args.untagged)
        orphans(loose, args.orphans)
        images = args.repositories * args.images
        dropped = args.repositories * args.untagged
        described = f"{args.repositories:,} repositories, {images:,} images, {images * 4:,} blobs"
        rows = [
            (described, "gc --dry-run --delete-untagged", data, ("--dry-run", "--delete-untagged")),
            ("same", "gc (nothing to delete)", data, ()),
            (
                "same",
                f"gc --delete-untagged ({dropped:,} untagged images: {dropped:,} revisions,"
                f" {dropped * 4:,} blobs deleted)",
                data,
                ("--delete-untagged",),
            ),
            (f"{args.orphans:,} unreferenced blobs", "gc --dry-run", loose, ("--dry-run",)),
            ("same", "gc", loose, ()),
        ]
        print("| data | command | time | peak RSS |\n|---|---|---|---|")
        for what, label, root, options in rows:
            seconds, peak = gc(root, *options)
            print(f"| {what} | `{label}` | {seconds:.1f} s | {peak:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
