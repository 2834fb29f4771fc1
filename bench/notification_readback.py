"""
What a webhook backlog costs a registry that reads it back at start.

    python bench/notification_readback.py [--events 100000] [--settle 8]

Writes a queue log of ``--events`` pending push events (each as the registry writes them:
docker's User-Agent, a tag, about 800 bytes a line), then starts ``twistd -n registry`` (one
process) twice, side by side in time: without an endpoint, and with one whose receiver's port
refuses connections, so that the whole backlog stays queued.  ``--settle`` seconds after each
logged ``txregistry listening on``, its RSS and peak RSS (``VmHWM``) are read; reported is what
the backlog added, in all and per event.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
AGENT = (
    "docker/27.0.3 go/go1.21.11 git-commit/662f78c kernel/6.1.0 os/linux arch/amd64"
    " UpstreamClient(Docker-Client/27.0.3 \\(linux\\))"
)


def write_backlog(path: Path, count: int) -> int:
    """``count`` pending events in the queue log's format; the file's size."""
    event = {
        "id": "",
        "timestamp": "2026-12-08T00:00:00.000000000Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 528,
            "digest": "sha256:" + "a" * 64,
            "length": 528,
            "repository": "team/app",
            "url": "http://127.0.0.1:5000/v2/team/app/manifests/sha256:" + "a" * 64,
            "tag": "v1",
        },
        "request": {
            "id": str(uuid.uuid4()),
            "addr": "127.0.0.1:40000",
            "host": "127.0.0.1:5000",
            "method": "PUT",
            "useragent": AGENT,
        },
        "actor": {},
        "source": {"addr": "host:5000", "instanceID": str(uuid.uuid4())},
    }
    with open(path, "w") as log:
        for seq in range(1, count + 1):
            event["id"] = str(uuid.UUID(int=seq))
            log.write(f"E {seq} {json.dumps(event, separators=(',', ':'))}\n")
    return path.stat().st_size


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        return int(held.getsockname()[1])


def measure(work: Path, name: str, sections: str, settle: float) -> tuple[int, int]:
    """(RSS, peak RSS) in KiB of a single-process registry configured with ``sections``."""
    config = work / f"{name}.cfg"
    config.write_text(f"[http]\nworkers = 1\nport = tcp:0:interface=127.0.0.1\n{sections}")
    log = work / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    command = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "-l", str(log), "registry", "--config", str(config),
        "--storage", str(work / f"{name}-data"),
    ]  # fmt: skip
    child = subprocess.Popen(command, cwd=work, env=env)
    try:
        deadline = time.monotonic() + 120
        while "txregistry listening on" not in (log.read_text() if log.exists() else ""):
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the registry did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(settle)
        status = Path(f"/proc/{child.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    finally:
        child.terminate()
        child.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--settle", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        queue = work / "queue"
        queue.mkdir()
        size = write_backlog(queue / "ci.log", args.events)
        without = measure(work, "without", "", args.settle)
        endpoint = (
            f"[notifications]\nqueuedir = {queue}\n"
            f"[notifications:ci]\nurl = http://127.0.0.1:{refused_port()}/hook\n"
        )
        with_backlog = measure(work, "with", endpoint, args.settle)
    mib = 1024
    print(f"backlog: {args.events} events, {size / 1024 / 1024:.1f} MiB of queue log")
    print(f"{'':24} {'RSS MiB':>8} {'peak MiB':>9}")
    print(f"{'without an endpoint':24} {without[0] / mib:8.1f} {without[1] / mib:9.1f}")
    print(f"{'backlog read back':24} {with_backlog[0] / mib:8.1f} {with_backlog[1] / mib:9.1f}")
    grown, peak = with_backlog[0] - without[0], with_backlog[1] - without[1]
    print(
        f"the backlog added {grown / mib:.1f} MiB ({grown * 1024 / args.events:.0f} bytes an"
        f" event), at peak {peak / mib:.1f} MiB ({peak * 1024 / args.events:.0f} bytes an event)"
    )


if __name__ == "__main__":
    main()
