"""
txregistry against registry:2 (Debian's docker-registry, v2.8), interleaved in one run.

    make bench                 # or: python bench/run.py [--rounds 5] [--big-gib 4] [--quick]
    python bench/run.py --steps push,concurrent,idle --rounds 3    # issue 17's wire targets

Each round runs every scenario on registry:2 and then on txregistry, both on loopback with
their own empty storage, driven by curl (the same client for both).  Reported: median MiB/s
(or req/s), the ratio txregistry / registry:2, each server's peak RSS during the scenario and
the CPU time it used per GiB moved (user + system, all threads); both summed over the server's
process tree (txregistry's supervisor and its ``[http] workers``), and the request steps also
print the tree's peak PSS (`bench.memory`).  These machines are noisy:
compare ratios within one run, not figures across runs.  What keeps the comparison even: an
untimed warm-up round on each server first (``--warmup``), and a ``sync`` before every timed
step, so that neither server pays for writing back the page cache the previous step (often
the other server's) left dirty.

Transfers run in two regimes (``--regimes``), both reported: **warm**, with memory touched and
freed before every step (`warm_free_memory`), so that neither server pays for the virtual
machine taking back idle memory; and **cold**, without, which is what a VM that returns free
memory to its host sees in use.  Besides single transfers: ``--concurrent`` pushes, then
pulls, of distinct ``--concurrent-mib`` blobs at once (aggregate MiB/s); manifest GETs at 64,
1,000 and 10,000 connections (wrk, 2 s timeout); and 10,000 idle connections held open (each
server's RSS, and a GET answered meanwhile).

wrk's "socket errors" are reported apart: connect, read and write errors are failed sockets;
a timeout is an answer that came later than 2 s.  Every connection keeps one request waiting,
so at C connections a server answering R requests per second makes each wait about C / R
seconds: 10,000 connections time out unless the server answers 5,000 per second (and 1,000
unless 500) while sharing the cores with wrk.  wrk, the servers and their workers run with
the open-files limit raised to the hard one (`bench.requests.raise_open_files_limit`,
`registry.fdlimit`).

``--steps`` runs some of the steps (`STEPS`); the run ends with one ``TARGET`` line per issue-17
target it measured (`target_lines`).  Every transfer step also prints its "cores busy": the
server's and curl's CPU seconds over the step's seconds, which tells a step bounded by CPU per
GiB from one that waits.  Each server is restarted on empty storage after its turn in a round
(``--storage`` says where it stores: 5 GiB for the concurrent step).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import itertools
import json
import mmap
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import attrs
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import tree_memory, tree_pids
from bench.reference import Nginx, Registry2, Server, TxRegistry
from bench.requests import Idle, Rate, hey, hold_idle, push_small_image, wrk_get

MiB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results"
# Idle machines here show 0-3% between rounds; more means something else is running.
BUSY_PERCENT = 10.0
# What ``--steps`` chooses from: "push" is a monolithic 1 GiB push and its pull (beside curl
# pulling the same file from nginx, curl's own ceiling); "chunked" the PATCH variants;
# "concurrent" ``--concurrent`` pushes then pulls at once (and the single push, their yardstick);
# "requests" manifest GETs and blob HEADs at 64, 1,000 and 10,000 connections; "idle"
# ``--idle`` connections held open; "big" the ``--big-gib`` push and pull (peak RSS).
STEPS = ("push", "chunked", "concurrent", "requests", "idle", "big")
THROUGHPUT_STEPS = {"push", "chunked", "concurrent", "big"}
CEILING = "nginx"


class PeakRss:
    """
    Samples the memory of a process and its descendants (a supervisor and its workers) every
    50 ms in a thread: ``peak`` is the largest RSS sum, ``peak_pss`` the largest PSS sum, in
    bytes (`bench.memory`: the RSS sum counts shared library pages once per process).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.peak_pss = 0
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        tree = tree_memory(self.pid)
        self.peak = max(self.peak, 1024 * sum(m.rss for m in tree))
        self.peak_pss = max(self.peak_pss, 1024 * sum(m.pss for m in tree))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self._sample()
            except OSError:  # the server exited
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak / MiB

    @property
    def peak_pss_mib(self) -> float:
        return self.peak_pss / MiB


def make_file(path: Path, size: int) -> str:
    """A file of pseudo-random bytes (made once, reused across runs); returns its digest."""
    digest_path = path.with_suffix(".sha256")
    if path.exists() and path.stat().st_size == size and digest_path.exists():
        return digest_path.read_text()
    hasher = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with open(path, "wb") as file:
        for index in range(size // len(block)):
            chunk = index.to_bytes(8, "big") + block[8:]
            hasher.update(chunk)
            file.write(chunk)
    digest = "sha256:" + hasher.hexdigest()
    digest_path.write_text(digest)
    return digest


@attrs.frozen
class Blob:
    """An input file for the concurrent steps (distinct bytes in each)."""

    path: Path
    index: int
    size: int
    digest: str

    @classmethod
    def make(cls, path: Path, index: int, size: int) -> Blob:
        return cls(path, index, size, make_file(path, size))


def curl(*args: str) -> tuple[int, dict[str, str]]:
    result = subprocess.run(
        ["curl", "-s", "-S", "-o", "/dev/null", "-D", "-", *args],
        capture_output=True,
        check=True,
    )
    lines = result.stdout.decode("latin-1").split("\r\n")
    status = 0
    headers: dict[str, str] = {}
    for line in lines:
        if line.startswith("HTTP/"):
            status = int(line.split()[1])
            headers = {}
        elif ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


def absolute(server: Server, location: str) -> str:
    return location if location.startswith("http") else server.url + location


def start_upload(server: Server, repo: str) -> str:
    status, headers = curl("-X", "POST", f"{server.url}/v2/{repo}/blobs/uploads/")
    assert status == 202, status
    return absolute(server, headers["location"])


def with_query(location: str, query: str) -> str:
    return location + ("&" if "?" in location else "?") + query


def push_monolithic(server: Server, repo: str, path: Path, digest: str) -> None:
    location = start_upload(server, repo)
    status, _ = curl(
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "-T",
        str(path),
        with_query(location, f"digest={digest}"),
    )
    assert status == 201, f"{server.name} monolithic push: {status}"


def patch(server: Server, location: str, body: Path, header: str) -> str:
    """One PATCH of ``body`` by curl with ``header``; returns the next location."""
    status, headers = curl(
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/octet-stream",
        "-H",
        header,
        "-T",
        str(body),
        location,
    )
    assert status == 202, f"{server.name} PATCH: {status}"
    return absolute(server, headers["location"])


def push_streamed(server: Server, repo: str, path: Path, digest: str) -> None:
    """
    One PATCH with ``Transfer-Encoding: chunked``, then the commit: how docker, containerd and
    skopeo send a layer (they compress as they send, so the length is not known up front).
    """
    location = patch(server, start_upload(server, repo), path, "Transfer-Encoding: chunked")
    status, _ = curl("-X", "PUT", with_query(location, f"digest={digest}"))
    assert status == 201, f"{server.name} streamed commit: {status}"


def push_chunked(server: Server, repo: str, chunks: list[Path], digest: str) -> None:
    location = start_upload(server, repo)
    offset = 0
    for chunk in chunks:
        size = chunk.stat().st_size
        location = patch(server, location, chunk, f"Content-Range: {offset}-{offset + size - 1}")
        offset += size
    status, _ = curl("-X", "PUT", with_query(location, f"digest={digest}"))
    assert status == 201, f"{server.name} chunked commit: {status}"


class _Slice:
    """``length`` bytes of an open file from where it stands: one PATCH's body."""

    def __init__(self, source: BinaryIO, length: int) -> None:
        self._source = source
        self._left = length

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._source.read(size)
        self._left -= len(data)
        return data


def push_chunked_one_connection(
    server: Server, repo: str, path: Path, chunk_size: int, digest: str
) -> None:
    """
    ``path`` in PATCHes of ``chunk_size`` over one kept-alive connection, as registry clients
    (docker, containerd, skopeo) send requests; 1 MiB reads and sends, as curl does.  Without
    a process start per chunk, this measures the servers rather than the client's start-up.
    """
    location = start_upload(server, repo)
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, blocksize=MiB)
    total = path.stat().st_size
    try:
        with open(path, "rb") as source:
            for offset in range(0, total, chunk_size):
                size = min(chunk_size, total - offset)
                target = urlsplit(absolute(server, location))
                connection.request(
                    "PATCH",
                    target.path + (f"?{target.query}" if target.query else ""),
                    body=_Slice(source, size),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + size - 1}",
                        "Content-Length": str(size),
                    },
                )
                response = connection.getresponse()
                response.read()
                assert response.status == 202, f"{server.name} PATCH: {response.status}"
                location = response.headers["Location"]
    finally:
        connection.close()
    status, _ = curl("-X", "PUT", with_query(absolute(server, location), f"digest={digest}"))
    assert status == 201, f"{server.name} chunked commit: {status}"


def pull_url(url: str) -> None:
    status, _ = curl(url)
    assert status == 200, f"{url}: {status}"


def pull(server: Server, repo: str, digest: str, size: int) -> None:
    status, headers = curl(f"{server.url}/v2/{repo}/blobs/{digest}")
    assert status == 200, f"{server.name} pull: {status}"
    assert int(headers["content-length"]) == size


def warm_free_memory(limit: int = 4096 * MiB) -> None:
    """
    Touch, then free, up to 4 GiB of memory (a quarter of what is available at most).

    On virtual machines that hand free memory back to the host (virtio-balloon free page
    reporting), memory the kernel allocates after a few seconds free costs a host page fault
    per page on first touch.  A push writes 1 GiB into the page cache, so a step that follows
    a few idle seconds pays for it.  Measured here with a loop of 1 MiB ``os.write`` calls,
    kernel time for 1 GiB: 0.21-0.22 s right after another such write, 0.74-1.52 s after 15 s
    idle, 0.93-1.76 s when 2 GiB were touched and freed first, 0.22-0.30 s with 4 GiB.  Done
    before every step of both servers; ``--no-warm-memory`` turns it off.
    """
    size = min(limit, psutil.virtual_memory().available // 4) // MiB * MiB
    if size <= 0:
        return
    block = b"\1" * MiB
    area = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, MiB):
            area[offset : offset + MiB] = block
    finally:
        area.close()


def background_cpu(seconds: float = 1.0) -> float:
    """
    Percent of the machine's CPU busy while both servers and this script sit idle.

    A run on a machine that is doing something else says little: the two servers do not lose
    the same share (txregistry keeps both cores busy, registry:2 one), so the ratio moves.
    Sampled before every round and reported, so such a run can be recognised and set aside.
    """

    def counters() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    total_before, idle_before = counters()
    time.sleep(seconds)
    total_after, idle_after = counters()
    total = total_after - total_before
    return 100.0 * (total - (idle_after - idle_before)) / total if total else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and its descendants (workers), all threads, in seconds."""
    ticks = 0
    for each in tree_pids(pid):
        try:
            with open(f"/proc/{each}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # exited meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(
    server: Server, action: Callable[[], None], warm_memory: bool = True
) -> tuple[float, float, float]:
    """Seconds the action took, the server's peak RSS (MiB) and its CPU seconds meanwhile."""
    # Start every timed step with no dirty pages: otherwise one server's step pays for the
    # kernel writing back what the previous step (often the other server's) left in the
    # page cache, and the order of the scenarios decides the figures.
    os.sync()
    if warm_memory:
        warm_free_memory()
    with PeakRss(server.pid) as rss:
        cpu_before = cpu_seconds(server.pid)
        clients_before = client_cpu_seconds()
        started = time.perf_counter()
        action()
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu_before
        LAST_STEP["cores"] = (cpu + client_cpu_seconds() - clients_before) / elapsed
    return elapsed, rss.peak_mib, cpu


# The last `measure`'s busy cores: server and clients' CPU seconds over the step's seconds.
# A step that keeps every core busy is bounded by the CPU it costs per GiB, not by waiting.
LAST_STEP: dict[str, float] = {}


def client_cpu_seconds() -> float:
    """User + system time of this script's finished children (the curl processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def at_once(actions: list[Callable[[], None]]) -> None:
    """Run ``actions`` in threads at the same time (each a curl child); re-raise a failure."""
    failures: list[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException as exc:  # reported by the caller
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def rss_mib(pid: int) -> float:
    """The RSS sum of ``pid`` and its descendants (its workers)."""
    return sum(m.rss for m in tree_memory(pid)) / 1024


def open_sockets(pid: int) -> int:
    """Sockets open in ``pid`` and its descendants: the connections a server tree holds."""
    count = 0
    for each in tree_pids(pid):
        with contextlib.suppress(FileNotFoundError):
            for fd in os.listdir(f"/proc/{each}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    count += os.readlink(f"/proc/{each}/fd/{fd}").startswith("socket:")
    return count


def run_idle_connections(servers: list[Server], count: int) -> dict[str, Idle]:
    """``count`` idle connections held on each server in turn."""
    held = {}
    for server in servers:
        idle = hold_idle(
            f"{server.url}/v2/",
            "127.0.0.1",
            server.port,
            count,
            lambda s=server: rss_mib(s.pid),
            lambda s=server: open_sockets(s.pid),
        )
        held[server.name] = idle
        print(
            f"{server.name:11} {count} idle connections: {idle.held} connected, "
            f"{idle.server_held} held by the server, RSS {idle.rss_before_mib:.0f} -> "
            f"{idle.rss_held_mib:.0f} MiB, {len(idle.get_ms)} GETs meanwhile "
            f"{'ok' if idle.get_ok else 'FAILED'} in {max(idle.get_ms):.0f} ms at most",
            flush=True,
        )
    return held


def run_request_scenarios(
    servers: list[Server],
    rounds: int,
    seconds: int,
    rates: dict[str, dict[str, list[tuple[Rate, float]]]],
) -> None:
    targets = {}
    for server in servers:
        manifest, layer = push_small_image(server.url, "bench/small")
        targets[server.name] = (manifest, layer)
    for round_index in range(rounds):
        for server in servers:
            _, layer = targets[server.name]
            scenarios: dict[str, Callable[[], Rate]] = {
                "manifest GET, 64 connections": lambda s=server: wrk_get(
                    f"{s.url}/v2/bench/small/manifests/latest", 64, seconds
                ),
                "blob HEAD, 64 connections": lambda s=server, b=layer: hey(
                    f"{s.url}/v2/bench/small/blobs/{b}", 64, seconds, "HEAD"
                ),
                "manifest GET, 1000 connections": lambda s=server: wrk_get(
                    f"{s.url}/v2/bench/small/manifests/latest", 1000, seconds
                ),
                "manifest GET, 10000 connections": lambda s=server: wrk_get(
                    f"{s.url}/v2/bench/small/manifests/latest", 10000, seconds
                ),
            }
            for name, action in scenarios.items():
                with PeakRss(server.pid) as rss:
                    rate = action()
                rates.setdefault(name, {}).setdefault(server.name, []).append((rate, rss.peak_mib))
                print(
                    f"round {round_index + 1} {server.name:11} {name:32} "
                    f"{rate.requests_per_second:8.0f} req/s  p99 {rate.p99_ms:7.1f} ms  "
                    f"errors {rate.errors}{rate.detail and f' ({rate.detail})'} "
                    f"non-2xx {rate.non_2xx}  "
                    f"peak RSS {rss.peak_mib:6.1f} MiB (PSS {rss.peak_pss_mib:6.1f})",
                    flush=True,
                )


def _per_round(
    samples: dict[str, list[tuple[float, float, float]]], top: str, bottom: str
) -> float:
    """The median over rounds of ``top``'s MiB/s over ``bottom``'s in the same round."""
    pairs = zip(samples.get(top, []), samples.get(bottom, []), strict=False)
    return statistics.median([t[0] / b[0] for t, b in pairs] or [float("nan")])


def target_lines(
    results: dict[str, dict[str, list[tuple[float, float, float]]]],
    cores: dict[str, dict[str, list[float]]],
    idle: dict[str, Idle],
    concurrent: int,
    concurrent_mib: int,
) -> list[str]:
    """
    One line per issue-17 target this run measured: ratios are medians of per-round ratios
    (both figures from the same round), which hold up better than absolute figures on a
    loaded machine.  The push lines add the cores busy (server and curl CPU over the step's
    time): concurrent pushes that keep every core busy are bounded by CPU per GiB, and then
    the best ratio is the machine's cores over the single push's busy cores.
    """
    ncpu = os.cpu_count() or 1
    lines = []
    servers = ("txregistry", "registry:2")
    for name, by_server in results.items():
        regime = name.rsplit("(", 1)[1].rstrip(")")
        if name.startswith("push ") and "at once" in name:
            single = results.get(f"push 1 GiB monolithic ({regime})", {})
            ratio = {
                s: _per_round({"all": by_server[s], "one": single.get(s, [])}, "all", "one")
                for s in servers
            }
            busy = {
                s: (
                    statistics.median(cores.get(name, {}).get(s, [float("nan")])),
                    statistics.median(
                        cores.get(f"push 1 GiB monolithic ({regime})", {}).get(s, [float("nan")])
                    ),
                )
                for s in servers
            }
            parts = [
                f"{s} {ratio[s]:.2f}x (aggregate "
                f"{statistics.median(v for v, _, _ in by_server[s]):.0f} MiB/s, "
                f"CPU {statistics.median(c for _, _, c in by_server[s]):.2f} s/GiB, cores busy "
                f"{busy[s][0]:.2f} of {ncpu} against {busy[s][1]:.2f} for one push)"
                for s in servers
            ]
            verdict = "met" if ratio["txregistry"] >= 1.5 else "not met"
            lines.append(
                f"TARGET {concurrent} x {concurrent_mib} MiB pushes at once ({regime}), aggregate "
                f"over a single push in the same round >= 1.5x: {verdict}; " + "; ".join(parts)
            )
        elif name.startswith("pull ") and "at once" in name:
            cpu = {s: statistics.median(c for _, _, c in by_server[s]) for s in servers}
            rate = {s: statistics.median(v for v, _, _ in by_server[s]) for s in servers}
            lines.append(
                f"TARGET {concurrent} x {concurrent_mib} MiB pulls at once ({regime}): "
                + "; ".join(f"{s} {rate[s]:.0f} MiB/s, CPU {cpu[s]:.2f} s/GiB" for s in servers)
            )
        elif name.startswith("pull 1 GiB (") and CEILING in by_server:
            share = {s: _per_round(by_server, s, CEILING) for s in servers}
            cpu = {s: statistics.median(c for _, _, c in by_server[s]) for s in servers}
            ceiling = statistics.median(v for v, _, _ in by_server[CEILING])
            lines.append(
                f"TARGET pull 1 GiB ({regime}) >= 90% of curl's ceiling (nginx static "
                f"{ceiling:.0f} MiB/s): {'met' if share['txregistry'] >= 0.9 else 'not met'}, "
                f"CPU <= 0.15 s/GiB: {'met' if cpu['txregistry'] <= 0.15 else 'not met'}; "
                + "; ".join(f"{s} {100 * share[s]:.0f}%, CPU {cpu[s]:.2f} s/GiB" for s in servers)
                + f"; nginx CPU {statistics.median(c for _, _, c in by_server[CEILING]):.2f}"
            )
    if idle:
        parts = []
        for server in servers:
            held = idle[server]
            grown = held.rss_held_mib - held.rss_before_mib
            parts.append(
                f"{server} held {held.server_held}, RSS {held.rss_before_mib:.0f} -> "
                f"{held.rss_held_mib:.0f} MiB ({grown * 1024 / max(held.server_held, 1):.1f} KiB "
                f"per connection), new GETs meanwhile {'ok' if held.get_ok else 'FAILED'}, "
                f"slowest {max(held.get_ms):.0f} ms"
            )
        lines.append(f"TARGET {idle['txregistry'].held} idle connections: " + "; ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed throughput rounds first (a fresh process and page cache are slower)",
    )
    parser.add_argument("--big-gib", type=int, default=4, help="size of the RSS run (0: skip)")
    parser.add_argument(
        "--big-rounds", type=int, default=3, help="rounds of the RSS run (its MiB/s are medians)"
    )
    parser.add_argument("--workdir", default="/tmp/txregistry-bench")
    parser.add_argument(
        "--storage",
        help="where the servers store what is pushed (default: in --workdir); the concurrent "
        "step needs 5 GiB free there, another filesystem (/dev/shm) when the disk is short",
    )
    parser.add_argument("--quick", action="store_true", help="1 round, no big run")
    parser.add_argument(
        "--only", choices=["throughput", "requests"], help="run one group of scenarios"
    )
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"the steps to run, comma-separated, of {','.join(STEPS)} (see STEPS)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each request run")
    parser.add_argument(
        "--regimes",
        default="warm,cold",
        help="transfers with memory warmed first (warm), without (cold), or both (see above)",
    )
    parser.add_argument("--no-warm-memory", action="store_true", help="the same as --regimes cold")
    parser.add_argument(
        "--concurrent", type=int, default=4, help="pushes, then pulls, at once (0: skip)"
    )
    parser.add_argument(
        "--concurrent-mib", type=int, default=1024, help="size of each concurrent blob"
    )
    parser.add_argument(
        "--idle", type=int, default=10000, help="idle connections to hold (0: skip)"
    )
    args = parser.parse_args()
    # Stopped with SIGTERM (kill, timeout): still stop the servers (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.rounds, args.big_gib, args.warmup = 1, 0, 0
    steps = set(args.steps.split(","))
    if not steps <= set(STEPS):
        raise SystemExit(f"--steps: of {','.join(STEPS)}, not {args.steps!r}")
    if args.only:
        steps &= {"requests", "idle"} if args.only == "requests" else THROUGHPUT_STEPS
    if not args.big_gib:
        steps.discard("big")
    if not args.concurrent:
        steps.discard("concurrent")
    if not args.idle:
        steps.discard("idle")
    regimes = ["cold"] if args.no_warm_memory else args.regimes.split(",")
    if not set(regimes) <= {"warm", "cold"}:
        raise SystemExit(f"--regimes: warm, cold or both, not {args.regimes!r}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    storage = Path(args.storage or args.workdir)

    print("preparing test files ...", flush=True)
    one_gib = work / "blob-1g"
    digest_1g = make_file(one_gib, 1024 * MiB)
    chunks = []
    with open(one_gib, "rb") as source:
        for index in range(16 if "chunked" in steps else 0):
            chunk = work / f"chunk-{index:02d}"
            if not chunk.exists() or chunk.stat().st_size != 64 * MiB:
                chunk.write_bytes(source.read(64 * MiB))
            else:
                source.seek(64 * MiB, 1)
            chunks.append(chunk)
    concurrent = [
        Blob.make(work / f"blob-{args.concurrent_mib}m-{index}", index, args.concurrent_mib * MiB)
        for index in range(args.concurrent if "concurrent" in steps else 0)
    ]

    servers: list[Server] = [
        Registry2("registry:2", storage / "registry2"),
        TxRegistry("txregistry", storage / "txregistry"),
    ]
    # curl's own download ceiling: the same 1 GiB as a static file from nginx.
    ceiling = Nginx(CEILING, work / "nginx", one_gib) if "push" in steps else None
    for server in [*servers, *([ceiling] if ceiling else [])]:
        server.start()
    # scenario -> server -> [(MiB/s, peak RSS MiB, server CPU seconds per GiB)]
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    background: list[float] = []
    rates: dict[str, dict[str, list[tuple[Rate, float]]]] = {}
    idle: dict[str, Idle] = {}
    # scenario -> server -> [cores busy (server and clients)], one a round
    cores: dict[str, dict[str, list[float]]] = {}
    try:
        if "requests" in steps:
            run_request_scenarios(servers, args.rounds, args.seconds, rates)
        if "idle" in steps:
            idle = run_idle_connections(servers, args.idle)
        throughput_rounds = args.rounds if steps & THROUGHPUT_STEPS - {"big"} else 0
        warmups = args.warmup if throughput_rounds else 0
        # Each server starts every round on empty storage (restarted after its turn: the
        # concurrent step alone stores 5 GiB, which two servers' copies would double on a small
        # disk).  The first push of a blob in a round renames the upload into place; a later
        # push of the same bytes (the chunked steps send the same 1 GiB) is received, hashed
        # and written all the same, then dropped (registry:2 and txregistry alike).
        for round_index, regime in itertools.product(range(-warmups, throughput_rounds), regimes):
            warmup = round_index < 0
            if warmup and regime != regimes[0]:
                continue
            busy = background_cpu()
            background.append(round(busy, 1))
            print(f"background CPU before this round: {busy:.1f}% ({regime})", flush=True)
            for server in servers:
                repo = f"bench/w{-round_index}" if warmup else f"bench/r{round_index}{regime}"
                scenarios: dict[str, Callable[[], None]] = {
                    "push 1 GiB monolithic": lambda s=server, r=repo: push_monolithic(
                        s, r + "m", one_gib, digest_1g
                    ),
                    "push 16 x 64 MiB chunked": lambda s=server, r=repo: push_chunked(
                        s, r + "c", chunks, digest_1g
                    ),
                    "push 16 x 64 MiB chunked, one connection": lambda s=server, r=repo: (
                        push_chunked_one_connection(s, r + "k", one_gib, 64 * MiB, digest_1g)
                    ),
                    "push 256 x 4 MiB chunked, one connection": lambda s=server, r=repo: (
                        push_chunked_one_connection(s, r + "s", one_gib, 4 * MiB, digest_1g)
                    ),
                    "push 1 GiB, chunked transfer encoding": lambda s=server, r=repo: push_streamed(
                        s, r + "t", one_gib, digest_1g
                    ),
                    "pull 1 GiB": lambda s=server, r=repo: pull(s, r + "m", digest_1g, 1024 * MiB),
                }
                chosen = {"push 1 GiB monolithic"} if steps & {"push", "concurrent"} else set()
                if "push" in steps:
                    chosen.add("pull 1 GiB")
                if "chunked" in steps:
                    chosen |= {name for name in scenarios if "chunk" in name}
                scenarios = {k: v for k, v in scenarios.items() if k in chosen}
                sizes = dict.fromkeys(scenarios, 1024 * MiB)
                if "concurrent" in steps:
                    label = f"{args.concurrent} x {args.concurrent_mib} MiB"
                    scenarios[f"push {label} at once"] = lambda s=server, r=repo: at_once(
                        [lambda b=blob: push_monolithic(s, f"{r}p{b.index}", b.path, b.digest)
                         for blob in concurrent]
                    )  # fmt: skip
                    scenarios[f"pull {label} at once"] = lambda s=server, r=repo: at_once(
                        [lambda b=blob: pull(s, f"{r}p{b.index}", b.digest, b.size)
                         for blob in concurrent]
                    )  # fmt: skip
                    sizes[f"push {label} at once"] = sizes[f"pull {label} at once"] = sum(
                        blob.size for blob in concurrent
                    )
                for name, action in scenarios.items():
                    size = sizes[name]
                    elapsed, peak, cpu = measure(server, action, regime == "warm")
                    rate, cpu_per_gib = size / MiB / elapsed, cpu * 1024 * MiB / size
                    if not warmup:
                        results.setdefault(f"{name} ({regime})", {}).setdefault(
                            server.name, []
                        ).append((rate, peak, cpu_per_gib))
                        cores.setdefault(f"{name} ({regime})", {}).setdefault(
                            server.name, []
                        ).append(LAST_STEP["cores"])
                    label = "warm-up" if warmup else f"round {round_index + 1}"
                    print(
                        f"{label:7} {regime:4} {server.name:11} {name:40} {rate:8.0f} MiB/s  "
                        f"peak RSS {peak:6.1f} MiB  CPU {cpu_per_gib:5.2f} s/GiB  "
                        f"cores busy {LAST_STEP['cores']:4.2f}",
                        flush=True,
                    )
                server.stop()
                server.start()
            if ceiling is not None:
                url = f"{ceiling.url}/blob"
                elapsed, peak, cpu = measure(ceiling, lambda u=url: pull_url(u), regime == "warm")
                if not warmup:
                    results.setdefault(f"pull 1 GiB ({regime})", {}).setdefault(CEILING, []).append(
                        (1024 / elapsed, peak, cpu)
                    )
                print(
                    f"{'':7} {regime:4} {'nginx':11} {'pull 1 GiB, static file':40} "
                    f"{1024 / elapsed:8.0f} MiB/s  CPU {cpu:5.2f} s/GiB",
                    flush=True,
                )
        if "big" in steps:
            big = work / f"blob-{args.big_gib}g"
            print(f"preparing {args.big_gib} GiB file ...", flush=True)
            digest_big = make_file(big, args.big_gib * 1024 * MiB)
            for _, server in itertools.product(range(args.big_rounds), servers):
                for name, action in {
                    f"push {args.big_gib} GiB (RSS)": lambda s=server: push_monolithic(
                        s, "bench/big", big, digest_big
                    ),
                    f"pull {args.big_gib} GiB (RSS)": lambda s=server: pull(
                        s, "bench/big", digest_big, args.big_gib * 1024 * MiB
                    ),
                }.items():
                    elapsed, peak, cpu = measure(server, action, regimes[0] == "warm")
                    results.setdefault(f"{name} ({regimes[0]})", {}).setdefault(
                        server.name, []
                    ).append((args.big_gib * 1024 / elapsed, peak, cpu / args.big_gib))
                    print(
                        f"{server.name:11} {name:26} {args.big_gib * 1024 / elapsed:8.0f} MiB/s"
                        f"  peak RSS {peak:6.1f} MiB",
                        flush=True,
                    )
                server.stop()  # its copy goes before the other server's turn (disk room)
                server.start()
    finally:
        for server in [*servers, *([ceiling] if ceiling else [])]:
            server.stop()

    print()
    print(
        "| scenario (regime) | registry:2 MiB/s | txregistry MiB/s | ratio | peak RSS (r2 / tx) "
        "| CPU s/GiB (r2 / tx) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    summary: dict[str, object] = {}
    for name, by_server in results.items():
        reference = statistics.median(v for v, _, _ in by_server["registry:2"])
        ours = statistics.median(v for v, _, _ in by_server["txregistry"])
        ref_rss = max(r for _, r, _ in by_server["registry:2"])
        our_rss = max(r for _, r, _ in by_server["txregistry"])
        ref_cpu = statistics.median(c for _, _, c in by_server["registry:2"])
        our_cpu = statistics.median(c for _, _, c in by_server["txregistry"])
        summary[name] = {
            "registry2": reference,
            "txregistry": ours,
            "ratio": ours / reference,
            "registry2_rss_mib": ref_rss,
            "txregistry_rss_mib": our_rss,
            "registry2_cpu_s_per_gib": ref_cpu,
            "txregistry_cpu_s_per_gib": our_cpu,
            "registry2_samples_mib_s": [round(v) for v, _, _ in by_server["registry:2"]],
            "txregistry_samples_mib_s": [round(v) for v, _, _ in by_server["txregistry"]],
        }
        print(
            f"| {name} | {reference:.0f} | {ours:.0f} | {ours / reference:.2f}x | "
            f"{ref_rss:.0f} / {our_rss:.0f} MiB | {ref_cpu:.2f} / {our_cpu:.2f} |"
        )
    if rates:
        print()
        print(
            "| scenario | registry:2 req/s | txregistry req/s | ratio | registry:2 p99 | "
            "txregistry p99 | errors (r2 / tx) | timeouts (r2 / tx) | peak RSS (r2 / tx) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, by_server in rates.items():
            ref = by_server["registry:2"]
            ours = by_server["txregistry"]
            ref_rps = statistics.median(r.requests_per_second for r, _ in ref)
            our_rps = statistics.median(r.requests_per_second for r, _ in ours)
            ref_p99 = statistics.median(r.p99_ms for r, _ in ref)
            our_p99 = statistics.median(r.p99_ms for r, _ in ours)
            # Failed sockets and non-2xx answers apart from answers slower than wrk's timeout.
            ref_err = sum(r.errors - r.timeouts + r.non_2xx for r, _ in ref)
            our_err = sum(r.errors - r.timeouts + r.non_2xx for r, _ in ours)
            ref_slow = sum(r.timeouts for r, _ in ref)
            our_slow = sum(r.timeouts for r, _ in ours)
            ref_rss = max(m for _, m in ref)
            our_rss = max(m for _, m in ours)
            summary[name] = {
                "registry2_rps": ref_rps, "txregistry_rps": our_rps, "ratio": our_rps / ref_rps,
                "registry2_p99_ms": ref_p99, "txregistry_p99_ms": our_p99,
                "registry2_errors": ref_err, "txregistry_errors": our_err,
                "registry2_timeouts": ref_slow, "txregistry_timeouts": our_slow,
                "registry2_rss_mib": ref_rss, "txregistry_rss_mib": our_rss,
            }  # fmt: skip
            print(
                f"| {name} | {ref_rps:.0f} | {our_rps:.0f} | {our_rps / ref_rps:.2f}x | "
                f"{ref_p99:.1f} ms | {our_p99:.1f} ms | {ref_err} / {our_err} | "
                f"{ref_slow} / {our_slow} | "
                f"{ref_rss:.0f} / {our_rss:.0f} MiB |"
            )
    if idle:
        print()
        print(
            "| idle connections | held (r2 / tx) | RSS held (r2 / tx) | RSS ratio | GET meanwhile |"
        )
        print("|---|---:|---:|---:|---:|")
        ref, ours = idle["registry:2"], idle["txregistry"]
        print(
            f"| {args.idle} | {ref.held} / {ours.held} | {ref.rss_held_mib:.0f} / "
            f"{ours.rss_held_mib:.0f} MiB | {ours.rss_held_mib / ref.rss_held_mib:.2f}x | "
            f"{'ok' if ref.get_ok else 'failed'} {max(ref.get_ms):.0f} ms / "
            f"{'ok' if ours.get_ok else 'failed'} {max(ours.get_ms):.0f} ms |"
        )
        summary[f"{args.idle} idle connections"] = {
            name: attrs.asdict(held) for name, held in idle.items()
        }
    print()
    for line in target_lines(results, cores, idle, args.concurrent, args.concurrent_mib):
        print(line)
    summary["targets"] = target_lines(results, cores, idle, args.concurrent, args.concurrent_mib)
    if background and max(background) > BUSY_PERCENT:
        print(
            f"\nwarning: up to {max(background):.0f}% of the CPU was busy with other work "
            "between rounds; push ratios from such a run are low (see docs/performance.md)"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "regimes": regimes,
                "background_cpu_percent": background,
                "results": summary,
            },
            indent=2,
        )
    )
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
