"""
Webhook notifications under an outage and a restart, and what delivery costs a push.

    python bench/notifications.py [--pushes 10000] [--down 60] [--latency-pushes 1000]
    python bench/notifications.py --skip-durability --fsync
    python bench/notifications.py --skip-durability --skip-latency --backlog 20000

1. Durability: ``--pushes`` small images (a config blob and a manifest: two events each) into
   10 repositories, one client, against ``twistd registry`` with one endpoint, spread over
   ``--spread`` seconds.  A receiver (a child process recording every POST) is down for
   ``--down`` seconds in the middle; halfway through the outage the registry is restarted
   (SIGTERM).  Then every event must arrive: checked and reported are the distinct ids
   (= 2 x pushes), duplicates, and the order of the manifest pushes of each repository.
2. Cost: push latency (blob POST + manifest PUT, one client per registry) against a registry
   without an endpoint and one with an endpoint whose receiver is up, the pushes alternating
   between the two; reported as the median of each round, the median of those, and the ratio.
   With ``--fsync`` the two registries both have the endpoint, one with ``[notifications]
   fsync = false`` (the default) and one with ``fsync = true``, each queue in its registry's
   storage folder (``queuedir``'s default, so on the same disk as the blobs): what fsync costs.
3. ``--backlog PUSHES``: the memory a backlog holds.  A registry with an endpoint whose receiver
   never answers (its port refuses connections) and one without, both given ``PUSHES`` pushes
   (alternating); reported is what each process tree's private memory (USS) grew by, and the
   difference per queued event.

Exits non-zero when an assertion fails.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.memory import tree_memory  # noqa: E402
from bench.run import cpu_seconds  # noqa: E402
from tests.e2e.harness import RegistryProcess, free_port, wait_listening  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
REPOSITORIES = [f"bench/r{i}" for i in range(10)]

# The receiver: a child process so that it takes no CPU from the client's process, and so that
# stopping it refuses connections at once.  One line per POST body, flushed, in ``record``.
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

record = open(sys.argv[2], "ab")

class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        record.write(body.replace(b"\\n", b"") + b"\\n")
        record.flush()
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
"""


class Receiver:
    def __init__(self, record: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.record = record
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self.events: list[dict[str, object]] = []

    def start(self) -> None:
        command = [sys.executable, "-c", RECEIVER, str(self.port), str(self.record)]
        self.process = subprocess.Popen(command)
        wait_listening(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def read(self) -> list[dict[str, object]]:
        """Every event received so far (the record is read incrementally)."""
        if self.record.exists():
            with open(self.record, "rb") as file:
                file.seek(self._offset)
                data = file.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.splitlines():
                self.events.extend(json.loads(line)["events"])
        return self.events


class Pusher:
    """One keep-alive connection pushing small images."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"{method} {path}: {response.status}")

    def push(self, repository: str, tag: str) -> float:
        """Push one image; its latency in seconds."""
        config = json.dumps({"os": "linux", "architecture": "amd64", "tag": tag}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [],
            }
        ).encode()
        started = time.perf_counter()
        self.request("POST", f"/v2/{repository}/blobs/uploads/?digest={config_digest}", config, {})
        self.request(
            "PUT", f"/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST}
        )
        return time.perf_counter() - started

    def close(self) -> None:
        self.connection.close()


def endpoint_sections(receiver: Receiver, fsync: bool = False) -> dict[str, dict[str, str]]:
    return {
        "log": {"accesslog": "false"},
        "notifications": {"fsync": "true" if fsync else "false"},
        "notifications:bench": {
            "url": receiver.url,
            "timeout": "5s",
            "threshold": "3",
            "backoff": "250ms",
            "maxbackoff": "2s",
        },
    }


def durability(workdir: Path, pushes: int, down: float, spread: float) -> dict[str, object]:
    receiver = Receiver(workdir / "received.jsonl")
    receiver.start()
    (workdir / "registry").mkdir()
    server = RegistryProcess(workdir / "registry", endpoint_sections(receiver))
    server.start()
    pusher = Pusher(server.url)
    pushed: dict[str, list[str]] = {name: [] for name in REPOSITORIES}
    # Pushes are spread over ``spread`` seconds (when the client is faster) so that the outage
    # sits in the middle of them: it starts at (spread - down) / 2.
    outage_start = max(0.0, (spread - down) / 2)
    down_since: float | None = None
    restarted = False
    started = time.monotonic()
    try:
        for i in range(pushes):
            ahead = started + i * spread / pushes - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            if down_since is None and time.monotonic() - started >= outage_start:
                receiver.stop()
                down_since = time.monotonic()
                print(f"  receiver stopped after {i} pushes", flush=True)
            if (
                down_since is not None
                and not restarted
                and time.monotonic() - down_since > down / 2
            ):
                server.stop()  # SIGTERM: the queue is written on the way out
                server.start()
                pusher.close()
                pusher = Pusher(server.url)
                restarted = True
                print(f"  registry restarted after {i} pushes", flush=True)
            outage_over = down_since is not None and time.monotonic() - down_since >= down
            if outage_over and receiver.process is None:
                receiver.start()
                print(f"  receiver started again after {i} pushes", flush=True)
            repository = REPOSITORIES[i % len(REPOSITORIES)]
            tag = f"t{i:06d}"
            pusher.push(repository, tag)
            pushed[repository].append(tag)
        push_seconds = time.monotonic() - started
        if receiver.process is None:  # the pushes ended before the outage did
            assert down_since is not None
            if not restarted:
                server.stop()
                server.start()
                restarted = True
            time.sleep(max(0.0, down - (time.monotonic() - down_since)))
            receiver.start()
        expected = 2 * pushes
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            events = receiver.read()
            if len({event["id"] for event in events}) >= expected:  # type: ignore[index]
                break
            time.sleep(0.2)
        drained = time.monotonic() - started
    finally:
        pusher.close()
        server.stop()
        receiver.stop()
    events = receiver.read()
    ids = [event["id"] for event in events]  # type: ignore[index]
    seen: dict[str, list[str]] = {name: [] for name in REPOSITORIES}
    for event in events:
        target = event["target"]
        assert isinstance(target, dict)
        if event["action"] == "push" and "tag" in target:
            tags = seen[target["repository"]]
            if target["tag"] not in tags:
                tags.append(target["tag"])
    in_order = seen == pushed
    result = {
        "pushes": pushes,
        "events_expected": expected,
        "events_received": len(events),
        "distinct_ids": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "order_per_repository": in_order,
        "registry_restarted": restarted,
        "push_seconds": round(push_seconds, 1),
        "all_delivered_after_s": round(drained, 1),
    }
    assert len(set(ids)) == expected, result
    assert in_order, result
    assert restarted, result
    return result


def latency(workdir: Path, pushes: int, rounds: int, fsync: bool) -> dict[str, object]:
    """
    "plain" against "notifying": no endpoint against one, or with ``fsync`` an endpoint with
    ``fsync = false`` against one with ``fsync = true``.
    """
    receiver = Receiver(workdir / "latency-received.jsonl")
    receiver.start()
    (workdir / "plain").mkdir()
    (workdir / "notifying").mkdir()
    plain_sections = endpoint_sections(receiver) if fsync else {"log": {"accesslog": "false"}}
    plain = RegistryProcess(workdir / "plain", plain_sections)
    notifying = RegistryProcess(workdir / "notifying", endpoint_sections(receiver, fsync))
    plain.start()
    notifying.start()
    medians: dict[str, list[float]] = {"plain": [], "notifying": []}
    try:
        clients = {"plain": Pusher(plain.url), "notifying": Pusher(notifying.url)}
        for client in clients.values():  # warm-up, untimed
            for i in range(200):
                client.push(REPOSITORIES[i % 10], f"warm{i}")
        # Pushes alternate between the two registries (in a different order every other
        # push), so both see the same noise from whatever else the machine is doing.
        # The whole process tree: with [http] workers above 1 (the default on 2 cores) the
        # requests are served by the supervisor's children.
        pids = {"plain": plain.pid, "notifying": notifying.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for r in range(rounds):
            times: dict[str, list[float]] = {"plain": [], "notifying": []}
            for i in range(pushes):
                order = ("plain", "notifying") if i % 2 else ("notifying", "plain")
                for name in order:
                    times[name].append(clients[name].push(REPOSITORIES[i % 10], f"r{r}-{i}"))
            for name, values in times.items():
                medians[name].append(statistics.median(values))
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        for client in clients.values():
            client.close()
        deadline = time.monotonic() + 120
        wanted = (4 if fsync else 2) * (200 + rounds * pushes)
        while len(receiver.read()) < wanted and time.monotonic() < deadline:
            time.sleep(0.2)
        delivered = len(receiver.read())
    finally:
        plain.stop()
        notifying.stop()
        receiver.stop()
    plain_ms = statistics.median(medians["plain"]) * 1000
    notifying_ms = statistics.median(medians["notifying"]) * 1000
    base, compared = (
        ("endpoint_fsync_false", "endpoint_fsync_true")
        if fsync
        else ("without_endpoint", "with_endpoint")
    )
    return {
        "pushes_per_round": pushes,
        "rounds": rounds,
        f"median_push_ms_{base}": round(plain_ms, 3),
        f"median_push_ms_{compared}": round(notifying_ms, 3),
        "ratio": round(notifying_ms / plain_ms, 3),
        "server_cpu_ms_per_push": {
            name: round(seconds * 1000 / (rounds * pushes), 3) for name, seconds in cpu.items()
        },
        "round_medians_ms": {k: [round(v * 1000, 3) for v in vs] for k, vs in medians.items()},
        "events_delivered_during_latency_runs": delivered,
    }


def tree_uss_kib(pid: int) -> int:
    return sum(memory.uss for memory in tree_memory(pid))


def backlog(workdir: Path, pushes: int) -> dict[str, object]:
    receiver = Receiver(workdir / "backlog-received.jsonl")  # never started: refused
    (workdir / "backlog-plain").mkdir()
    (workdir / "backlog-queued").mkdir()
    plain = RegistryProcess(workdir / "backlog-plain", {"log": {"accesslog": "false"}})
    queued = RegistryProcess(workdir / "backlog-queued", endpoint_sections(receiver))
    plain.start()
    queued.start()
    try:
        clients = {"plain": Pusher(plain.url), "queued": Pusher(queued.url)}
        for client in clients.values():  # warm-up: every code path loaded, caches filled
            for i in range(500):
                client.push(REPOSITORIES[i % 10], f"warm{i}")
        time.sleep(2)
        pids = {"plain": plain.pid, "queued": queued.pid}
        before = {name: tree_uss_kib(pid) for name, pid in pids.items()}
        for i in range(pushes):
            for client in clients.values():
                client.push(REPOSITORIES[i % 10], f"b{i:06d}")
        for client in clients.values():
            client.close()
        time.sleep(2)  # the last flush_interval's events written
        after = {name: tree_uss_kib(pid) for name, pid in pids.items()}
    finally:
        plain.stop()
        queued.stop()
    grown = {name: after[name] - before[name] for name in pids}
    events = 2 * pushes
    return {
        "pushes": pushes,
        "events_queued": events,
        "uss_kib_before": before,
        "uss_kib_after": after,
        "uss_kib_grown": grown,
        "kib_per_queued_event": round((grown["queued"] - grown["plain"]) / events, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=10_000)
    parser.add_argument("--down", type=float, default=60.0, help="receiver outage, seconds")
    parser.add_argument(
        "--spread", type=float, default=120.0, help="seconds the pushes are spread over (at least)"
    )
    parser.add_argument("--latency-pushes", type=int, default=1000, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-durability", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        metavar="PUSHES",
        help="also measure the memory of a backlog of 2 x PUSHES events (receiver down)",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="latency: an endpoint with fsync = false against one with fsync = true",
    )
    parser.add_argument(
        "--workdir", help="folder for the registries' storage and queues (default: a temporary one)"
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="notify-bench-", dir=arguments.workdir) as folder:
        workdir = Path(folder)
        results: dict[str, object] = {}
        if not arguments.skip_durability:
            print("durability: pushes with the receiver down and a restart", flush=True)
            results["durability"] = durability(
                workdir, arguments.pushes, arguments.down, arguments.spread
            )
            print(json.dumps(results["durability"], indent=2), flush=True)
        if not arguments.skip_latency:
            what = (
                "endpoint fsync = false and true"
                if arguments.fsync
                else "without and with an endpoint"
            )
            print(f"latency: {what}", flush=True)
            results["latency"] = latency(
                workdir, arguments.latency_pushes, arguments.rounds, arguments.fsync
            )
            print(json.dumps(results["latency"], indent=2), flush=True)
        if arguments.backlog:
            print(f"backlog: {arguments.backlog} pushes with the receiver down", flush=True)
            results["backlog"] = backlog(workdir, arguments.backlog)
            print(json.dumps(results["backlog"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
