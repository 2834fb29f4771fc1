"""
``txregistry copy`` against ``skopeo copy``: a 3-platform image between two local registries.

    python bench/copy_image.py [--size 1GiB] [--rounds 1] [--target registry2|txregistry]

The image: an OCI index of three platforms, each one gzip layer of ``size / 3`` bytes (random
content, so compression does not shrink it) and a config.  It is pushed once into a source
txregistry; each round then copies it, with each tool in turn, into a fresh empty target
registry (so nothing is skipped or mounted and skopeo's blob cache has nothing to reuse).
Reported per tool: the median wall time of the copy command and its peak RSS (sampled every
50 ms); then the ratio txregistry / skopeo.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.reference import REPO_ROOT, Registry2, Server, TxRegistry
from bench.run import RESULTS, MiB, PeakRss

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def parse_size(text: str) -> int:
    units = {"kib": 1024, "mib": MiB, "gib": 1024 * MiB, "b": 1}
    lowered = text.lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            return int(float(lowered.removesuffix(unit)) * factor)
    return int(text)


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _gzip_layer(layout: Path, size: int, seed: int) -> dict[str, object]:
    """A gzip stream of ``size`` random-ish bytes, written and hashed in pieces."""
    temp = layout / "blobs" / "sha256" / f".layer-{seed}"
    block = os.urandom(4 * MiB)
    with (
        open(temp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as out,
    ):
        written = 0
        index = 0
        while written < size:
            chunk = (seed * 1_000_003 + index).to_bytes(8, "big") + block[
                8 : min(len(block), size - written)
            ]
            out.write(chunk)
            written += len(chunk)
            index += 1
    hasher = hashlib.sha256()
    with open(temp, "rb") as handle:
        while piece := handle.read(4 * MiB):
            hasher.update(piece)
    target = layout / "blobs" / "sha256" / hasher.hexdigest()
    os.replace(temp, target)
    return {"digest": f"sha256:{hasher.hexdigest()}", "size": target.stat().st_size}


def make_layout(layout: Path, size: int) -> None:
    """The 3-platform image as an OCI layout (made once per size, reused)."""
    marker = layout / f".done-{size}"
    if marker.exists():
        return
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for seed, arch in enumerate(("amd64", "arm64", "ppc64le")):
        layer = _gzip_layer(layout, size // 3, seed)
        config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers"}})
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **_blob(layout, config.encode())},
                "layers": [{"mediaType": OCI_LAYER, **layer}],
            }
        ).encode()
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                **_blob(layout, manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    top = {"mediaType": OCI_INDEX, **_blob(layout, index)}
    top["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    )
    marker.write_text("")


def txregistry_copy(*args: str) -> list[str]:
    return [sys.executable, "-m", "registry.cli", "copy", "--quiet", *args]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with PeakRss(process.pid) as rss:
        _, err = process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err.decode()}")
    return elapsed, rss.peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=1024 * MiB, help="layers in all")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--target", choices=("registry2", "txregistry"), default="txregistry")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-copy")
    args = parser.parse_args()
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is not installed: make tools")
    layout = args.workdir / "image"
    make_layout(layout, args.size)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # skopeo keeps a blob-location cache under $HOME; a private one per run.
    env["HOME"] = str(args.workdir / "home")
    no_tls = ["--src-tls-verify=false", "--dest-tls-verify=false"]
    source = TxRegistry("source", args.workdir / "source")
    source.start()
    results: dict[str, list[tuple[float, float]]] = {"txregistry copy": [], "skopeo copy": []}
    try:
        host = source.url.removeprefix("http://")
        subprocess.run(
            txregistry_copy(
                "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{host}/bench/img:v1"
            ),
            env=env,
            check=True,
        )
        for round_number in range(args.rounds):
            order = list(results) if round_number % 2 == 0 else list(reversed(results))
            for tool in order:  # alternated: neither always meets the warmer page cache
                target: Server = (
                    Registry2("target", args.workdir / "target")
                    if args.target == "registry2"
                    else TxRegistry("target", args.workdir / "target")
                )
                target.start()
                try:
                    dest = target.url.removeprefix("http://")
                    src_ref, dst_ref = (
                        f"docker://{host}/bench/img:v1",
                        f"docker://{dest}/bench/img:v1",
                    )
                    if tool == "txregistry copy":
                        command = txregistry_copy(*no_tls, src_ref, dst_ref)
                    else:
                        command = [
                            "skopeo",
                            "--insecure-policy",
                            "copy",
                            "--all",
                            "--preserve-digests",
                            *no_tls,
                            src_ref,
                            dst_ref,
                        ]
                    results[tool].append(timed(command, env))
                finally:
                    target.stop()
    finally:
        source.stop()
    summary = {}
    for tool, runs in results.items():
        summary[tool] = {
            "seconds": round(statistics.median(r[0] for r in runs), 2),
            "peak_rss_mib": round(max(r[1] for r in runs), 1),
        }
    ratio = summary["txregistry copy"]["seconds"] / summary["skopeo copy"]["seconds"]
    report = {
        "size_bytes": args.size,
        "rounds": args.rounds,
        "target": args.target,
        "tools": summary,
        "time_ratio_txregistry_over_skopeo": round(ratio, 2),
    }
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "copy.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
