"""
Blob downloads over TLS: HTTP/2 against HTTP/1.1, from the same txregistry.

    python bench/http2_download.py [--size-mib 200] [--rounds 5] [--port PORT]

Starts one txregistry on an ``ssl:`` endpoint with ``[http] http2 = true`` (a self-signed
certificate made by ``openssl``), pushes one blob of ``--size-mib`` MiB (pseudo-random bytes)
with curl, then every round downloads it with ``curl --http2`` and ``curl --http1.1``
(``-o /dev/null``, in turn, the order swapped every other round, so that both see the same
load from whatever else runs on the machine).  The blob is in the page cache for every pull.
Reported per protocol: the median MiB/s (the whole curl run), the median CPU time the server
used per GiB downloaded (user + system, from ``/proc/<pid>/stat``), and the ratio of the
HTTP/1.1 rate to the HTTP/2 rate.  curl says which protocol it spoke; a download that did not
get the one asked for fails the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import TxRegistry
from bench.run import MiB, background_cpu, cpu_seconds, make_file
from tests.e2e.harness import free_port, twistd_command

PROTOCOLS = {"HTTP/2": ("--http2", "2"), "HTTP/1.1": ("--http1.1", "1.1")}


class TlsTxRegistry(TxRegistry):
    """txregistry on ``ssl:PORT`` with HTTP/2 offered by ALPN."""

    def __init__(self, name: str, workdir: Path, port: int) -> None:
        super().__init__(name, workdir, http={"http2": "true"})
        self.port = port
        self.url = f"https://127.0.0.1:{port}"

    def command(self) -> list[str]:
        key, cert = self.workdir / "key.pem", self.workdir / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        plain = super().command()
        config = plain[plain.index("--config") + 1]
        endpoint = f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        return twistd_command("--config", config, "--port", endpoint)


def curl(*args: str) -> str:
    result = subprocess.run(["curl", "-s", "-S", "-k", *args], capture_output=True, check=True)
    return result.stdout.decode()


def push(server: TlsTxRegistry, repo: str, path: Path, digest: str) -> None:
    """A POST opening an upload, then one PUT of the whole blob (HTTP/1.1)."""
    head = curl(
        "--http1.1",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-X",
        "POST",
        f"{server.url}/v2/{repo}/blobs/uploads/",
    )
    location = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("location:")
    )
    if location.startswith("/"):
        location = server.url + location
    separator = "&" if "?" in location else "?"
    status = curl(
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "-T",
        str(path),
        f"{location}{separator}digest={digest}",
    )
    assert status == "201", f"push: {status}"


def pull(url: str, protocol: str, size: int) -> float:
    """Seconds for curl to download ``url`` over ``protocol`` (the whole curl run)."""
    option, version = PROTOCOLS[protocol]
    started = time.perf_counter()
    out = curl(
        option, "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{http_version}", url
    )
    elapsed = time.perf_counter() - started
    status, downloaded, spoken = out.split()
    assert status == "200" and int(downloaded) == size, (protocol, out)
    assert spoken == version, f"asked for {protocol}, curl spoke HTTP/{spoken}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, help="the registry's TLS port (default: a free one)")
    parser.add_argument("--workdir", default="/tmp/txregistry-bench-http2")
    args = parser.parse_args()
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    blob = work / f"blob-{args.size_mib}m"
    digest = make_file(blob, size)
    server = TlsTxRegistry("txregistry", work / "registry", args.port or free_port())
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in PROTOCOLS}
    background = []
    try:
        server.start()
        push(server, "bench/h2", blob, digest)
        url = f"{server.url}/v2/bench/h2/blobs/{digest}"
        for protocol in PROTOCOLS:  # untimed: the page cache and the process warmed up
            pull(url, protocol, size)
        for round_index in range(args.rounds):
            background.append(round(background_cpu(), 1))
            order = list(PROTOCOLS) if round_index % 2 == 0 else list(reversed(PROTOCOLS))
            for protocol in order:
                before = cpu_seconds(server.pid)
                elapsed = pull(url, protocol, size)
                used = cpu_seconds(server.pid) - before
                rate = size / MiB / elapsed
                results[protocol].append((rate, used * 1024 * MiB / size))
                print(
                    f"round {round_index + 1}: {protocol:8} {rate:7.0f} MiB/s"
                    f"  server CPU {used:.2f} s",
                    flush=True,
                )
    finally:
        server.stop()

    print(
        f"\ndownload {args.size_mib} MiB over TLS, medians of {args.rounds} rounds"
        f" (background CPU {background}%)"
    )
    print("| protocol | MiB/s | server CPU s per GiB |\n|---|---:|---:|")
    summary: dict[str, dict[str, float]] = {}
    for protocol, samples in results.items():
        rate = statistics.median(r for r, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        summary[protocol] = {"mib_per_s": round(rate, 1), "cpu_s_per_gib": round(cpu, 2)}
        print(f"| {protocol} | {rate:.0f} | {cpu:.2f} |")
    ratios = sorted(h1 / h2 for (h2, _), (h1, _) in zip(*results.values(), strict=True))
    ratio = summary["HTTP/1.1"]["mib_per_s"] / summary["HTTP/2"]["mib_per_s"]
    print(
        f"HTTP/1.1 / HTTP/2 rate: {ratio:.2f}x"
        f" (medians; per round {ratios[0]:.2f}x to {ratios[-1]:.2f}x)"
    )
    print(json.dumps({"size_mib": args.size_mib, "rounds": args.rounds, **summary}))


if __name__ == "__main__":
    main()
