"""
The pull-through cache's remaining targets, one sub-command each:

    python bench/cache_targets.py cold [--layers 4] [--layer-mib 64] [--blob-rate MIBPS]
                                       [--rounds 1] [--storage filesystem|s3] [--code DIR]
    python bench/cache_targets.py names [--count 100000] [--threads 8] [--trace] [--fleet]
                                        [--max-mib 0] [--code DIR]
    python bench/cache_targets.py churn [--max-mib 64] [--layer-mib 4] [--parallel 1]
                                        [--instances 2] [--single] [--code DIR]

- ``cold``: one image pulled (manifest, then its layers one after another, each hashed) straight
  from the fake upstream (``--auth none``), then through a fresh cache (cold), then again
  (warm), ``--rounds`` times (each with a fresh cache); the cache process's CPU time for the
  cold pull; ``--storage s3``: the cache on SeaweedFS.  ``--code DIR``: each round also pulls
  cold through a cache run from another checkout (main's code, compared in the same run).
  Target: cold through the cache within 110% of the straight pull.
- ``names``: ``--count`` distinct repository names, each a manifest GET through one cache in
  front of a tiny upstream (in this process) that answers every name with the same small
  manifest; the cache's RSS after a warm-up, half way and at the end (growth per 10,000 names
  from the two halves).  Target: growth at most 10 MiB.  ``--trace``: the cache process runs
  under ``tracemalloc`` (slower) and the bench prints what grew between the half-way point and
  the end, by the line that allocated it: what still grows per name.  ``--fleet``: the cache
  is a fleet member (the filesystem and a Redis the bench starts) instead of one instance;
  ``--max-mib``: with a ``max_size`` (evictions then run as names are stored);
  ``--code DIR``: the cache runs from another checkout (to compare with main's code).
- ``churn``: a fleet on SeaweedFS + Redis with ``max_size``; three times ``max_size`` of
  distinct layers pulled, alternating instances, ``--parallel`` at a time, while a thread sums the
  bucket's blobs every 100 ms.  Target: never above ``max_size`` plus one layer.  ``--single``:
  one instance on the filesystem without Redis instead (its blobs folder summed every 20 ms,
  and separately with the fills in flight).  ``--code DIR``: run the instances from another
  checkout (to compare with main's code in the same run).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on the path, and its copy.py would hide the
# standard library's copy (which http.server imports): the repository's root instead.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote

import psutil

from bench.fleet import SECRET, fleet_member_sections
from bench.run import MiB
from tests.e2e.harness import REPO_ROOT, RegistryProcess, free_port
from tests.proxy.redisserver import start_redis
from tests.storage.s3server import S3Server, signed_request, start_s3_server

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def start_fake(sizes: list[int], rate: int | None) -> tuple[subprocess.Popen[bytes], Any]:
    command = [sys.executable, "-m", "tests.fakes.upstream", "--auth", "none"]
    for size in sizes:
        command += ["--layer-size", str(size)]
    if rate:
        command += ["--blob-rate", str(rate)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


class Puller:
    """Keep-alive GETs to one origin, following redirects to other origins."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.connections: dict[str, http.client.HTTPConnection] = {}

    def get(self, url: str, accept: str = "") -> tuple[int, bytes | str]:
        """(status, body) for small bodies; blobs are hashed (body is the digest)."""
        for _hop in range(5):
            origin, _, path = url.removeprefix("http://").partition("/")
            connection = self.connections.get(origin)
            if connection is None:
                host, port = origin.split(":")
                connection = self.connections[origin] = http.client.HTTPConnection(
                    host, int(port), timeout=600
                )
            headers = {"Accept": accept} if accept else {}
            connection.request("GET", "/" + path, headers=headers)
            response = connection.getresponse()
            if response.status in (301, 302, 307, 308):
                response.read()
                location = response.getheader("Location") or ""
                url = location if location.startswith("http") else f"http://{origin}{location}"
                continue
            if "/blobs/" in path or response.getheader("Content-Type", "").startswith(
                "application/octet"
            ):
                hasher = hashlib.sha256()
                while chunk := response.read1(1 << 20):
                    hasher.update(chunk)
                response.read()  # b"": marks the response done, the connection reusable
                return response.status, "sha256:" + hasher.hexdigest()
            return response.status, response.read()
        raise RuntimeError(f"too many redirects: {url}")

    def pull(self, name: str, tag: str) -> float:
        began = time.monotonic()
        status, body = self.get(f"{self.base}/v2/{name}/manifests/{tag}", MANIFEST_TYPE)
        assert status == 200 and isinstance(body, bytes), (status, body)
        for layer in json.loads(body)["layers"]:
            status, digest = self.get(f"{self.base}/v2/{name}/blobs/{layer['digest']}")
            assert status == 200 and digest == layer["digest"], (status, digest)
        return time.monotonic() - began


def cache_sections(remoteurl: str, **proxy: str) -> dict[str, dict[str, str]]:
    return {
        "log": {"accesslog": "false"},
        "proxy:hub": {"remoteurl": remoteurl, "prefix": "docker.io", "default": "true", **proxy},
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _timed_pull(puller: Puller, name: str, tag: str, *processes: psutil.Process) -> list[float]:
    """Seconds of the pull, then the CPU seconds of this process (the client) and of each of
    ``processes`` during it."""
    before = [time.process_time()] + [_cpu(p) for p in processes]
    elapsed = puller.pull(name, tag)
    after = [time.process_time()] + [_cpu(p) for p in processes]
    return [elapsed] + [b - a for a, b in zip(before, after, strict=True)]


def cold(args: argparse.Namespace, workdir: Path) -> None:
    sizes = [args.layer_mib * MiB] * args.layers
    fake, info = start_fake(sizes, args.blob_rate * MiB if args.blob_rate else None)
    upstream = psutil.Process(fake.pid)
    name, tag = "library/alpine", "latest"
    rows: list[tuple[list[float], list[float], float]] = []
    reference: list[list[float]] = []
    s3 = start_s3_server(workdir / "s3") if args.storage == "s3" else None

    def cold_cache(folder: Path, env: dict[str, str] | None) -> tuple[list[float], float]:
        """A fresh cache: the cold pull's figures, then the best of three warm pulls."""
        folder.mkdir()
        sections = cache_sections(info["url"])
        if s3 is not None:
            sections["storage"] = s3.storage_section(
                f"/bench/{uuid.uuid4().hex}", spooldirectory=str(folder / "spool")
            )
        cache = RegistryProcess(folder, sections, env=env)
        cache.start()
        try:
            through = Puller(cache.url)
            cold_pull = _timed_pull(through, name, tag, upstream, psutil.Process(cache.pid))
            return cold_pull, min(through.pull(name, tag) for _ in range(3))
        finally:
            cache.stop()

    try:
        for round_ in range(args.rounds):
            straight = _timed_pull(Puller(info["url"]), name, tag, upstream)
            cold_pull, warm_time = cold_cache(workdir / f"cache{round_}", None)
            rows.append((straight, cold_pull, warm_time))
            if args.code:
                env = {"PYTHONPATH": str(Path(args.code).resolve())}
                reference.append(cold_cache(workdir / f"reference{round_}", env)[0])
    finally:
        fake.terminate()
        fake.wait(timeout=10)
        if s3 is not None:
            s3.stop()
    total = sum(sizes) / MiB
    print(
        f"cold: one image, {args.layers} layers of {args.layer_mib} MiB ({total:.0f} MiB), "
        f"{args.storage} storage"
    )
    for index, (straight, cold_pull, warm_time) in enumerate(rows):
        print(
            f"  straight from the upstream: {straight[0]:.2f} s ({total / straight[0]:.0f} MiB/s); "
            f"CPU s: client {straight[1]:.2f}, upstream {straight[2]:.2f}"
        )
        print(
            f"  cold through the cache:     {cold_pull[0]:.2f} s "
            f"({total / cold_pull[0]:.0f} MiB/s), "
            f"{100 * cold_pull[0] / straight[0]:.0f}% of the straight pull; "
            f"CPU s: client {cold_pull[1]:.2f}, upstream {cold_pull[2]:.2f}, "
            f"cache {cold_pull[3]:.2f}"
        )
        print(f"  warm through the cache:     {warm_time:.2f} s ({total / warm_time:.0f} MiB/s)")
        if reference:
            ref = reference[index]
            print(
                f"  cold through {args.code}: {ref[0]:.2f} s, "
                f"{100 * ref[0] / straight[0]:.0f}% of the straight pull; "
                f"CPU s: cache {ref[3]:.2f}"
            )
    if len(rows) > 1:
        ratios = sorted(100 * cold_pull[0] / straight[0] for straight, cold_pull, _w in rows)
        cpus = sorted(cold_pull[3] for _s, cold_pull, _w in rows)
        warm = sorted(100 * warm / straight[0] for straight, _c, warm in rows)
        middle = len(rows) // 2
        print(
            f"  median of {len(rows)} rounds: cold {ratios[middle]:.0f}% of the straight pull, "
            f"warm {warm[middle]:.0f}%, cache CPU {cpus[middle]:.2f} s for the cold pull"
        )
        if reference:
            ref_ratios = sorted(
                100 * ref[0] / row[0][0] for ref, row in zip(reference, rows, strict=True)
            )
            ref_cpus = sorted(ref[3] for ref in reference)
            print(
                f"  median with {args.code}: cold {ref_ratios[middle]:.0f}% of the straight pull, "
                f"cache CPU {ref_cpus[middle]:.2f} s for the cold pull"
            )


class AnyName(http.server.BaseHTTPRequestHandler):
    """Every repository name has tag ``latest``: the same small manifest."""

    protocol_version = "HTTP/1.1"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            },
            "layers": [],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()

    def _answer(self, body: bytes | None) -> None:
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "/manifests/" not in self.path:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", MANIFEST_TYPE)
        self.send_header("Docker-Content-Digest", self.digest)
        self.send_header("Content-Length", str(len(self.manifest)))
        self.end_headers()
        if body is not None:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(self.manifest)

    def do_HEAD(self) -> None:
        self._answer(None)

    def log_message(self, *args: Any) -> None:
        pass


# Loaded by the cache process (``--trace``): tracemalloc started on SIGUSR2 (after the
# warm-up: traced from the start, the start-up outlasts the harness's patience), and a snapshot
# written on SIGUSR1 (to the file named by the environment, after a collection) for the bench
# to compare.  Only what was allocated while tracing is seen: for a table at its cap to show
# as flat rather than growing, its whole content at the first snapshot must have been
# allocated while tracing (so trace at least as many names as the largest cap, 8,192, first).
TRACE_SITE = """
import gc, os, signal, tracemalloc
signal.signal(signal.SIGUSR2, lambda signum, frame: tracemalloc.start(4))
def _dump(signum, frame):
    gc.collect()
    path = os.environ["TXREGISTRY_BENCH_TRACE"] + ".tmp"
    tracemalloc.take_snapshot().dump(path)
    os.rename(path, os.environ["TXREGISTRY_BENCH_TRACE"])
signal.signal(signal.SIGUSR1, _dump)
"""


def trace_snapshot(pid: int, path: Path) -> Any:
    """The cache process's tracemalloc snapshot, taken now (``--trace``)."""
    import os
    import signal
    import tracemalloc

    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    for _attempt in range(600):
        if path.exists():
            return tracemalloc.Snapshot.load(str(path))
        time.sleep(0.1)
    raise RuntimeError("no tracemalloc snapshot from the cache process")


def print_growth(first: Any, second: Any, names: int) -> None:
    """The allocation sites that grew most between two snapshots, per 10,000 names."""
    stats = second.compare_to(first, "traceback")
    print(f"  tracemalloc: what grew over the last {names} names (bytes per 10,000 names):")
    for stat in stats[:12]:
        if stat.size_diff <= 0:
            continue
        frames = [
            f"{Path(f.filename).name}:{f.lineno}"
            for f in stat.traceback
            if "registry" in f.filename or "twisted" in f.filename
        ][-4:]
        per = stat.size_diff * 10_000 / names
        print(f"    {per / 1024:8.1f} KiB {stat.count_diff:+7d} blocks  {' < '.join(frames)}")


def progress(text: str) -> None:
    """A line on stderr while a long step runs (the results go to stdout at the end)."""
    print(f"  ... {text}", file=sys.stderr, flush=True)


def names(args: argparse.Namespace, workdir: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AnyName)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = workdir / "cache"
    folder.mkdir()
    env: dict[str, str] = {}
    trace_file = workdir / "trace.snapshot"
    if args.trace:
        site = workdir / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(TRACE_SITE)
        env["PYTHONPATH"] = f"{site}:{REPO_ROOT}"
        env["TXREGISTRY_BENCH_TRACE"] = str(trace_file)
    if args.code:
        code = str(Path(args.code).resolve())
        env["PYTHONPATH"] = f"{workdir / 'site'}:{code}" if args.trace else code
    proxy = {"max_size": str(args.max_mib * MiB)} if args.max_mib else {}
    sections = cache_sections(f"http://127.0.0.1:{server.server_port}", **proxy)
    redis = None
    if args.fleet:  # on the filesystem: what is measured is the index, not the storage
        (workdir / "redis").mkdir()
        redis = start_redis(workdir / "redis")
        sections["redis"] = {"addr": redis.addr}
        sections["fleet"] = {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "secret": SECRET,
            "instance": "i0",
        }
    cache = RegistryProcess(folder, sections, env=env)
    try:
        cache.start()
        process = psutil.Process(cache.pid)

        def run(start: int, stop: int) -> None:
            puller = Puller(cache.url)
            for n in range(start, stop):
                status, body = puller.get(
                    f"{cache.url}/v2/team{n % 97}/app{n}/manifests/latest", MANIFEST_TYPE
                )
                assert status == 200 and body == AnyName.manifest, (status, body)

        def batch(first: int, count: int) -> None:
            per = count // args.threads
            threads = [
                threading.Thread(target=run, args=(first + i * per, first + (i + 1) * per))
                for i in range(args.threads)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        warmup = 2000
        batch(10**9, warmup)  # first use of every code path and table
        before = process.memory_info().rss
        progress(f"{warmup} warm-up names, RSS {before / MiB:.1f} MiB")
        if args.trace:
            import os
            import signal

            os.kill(cache.pid, signal.SIGUSR2)
        began = time.monotonic()
        half = args.count // 2
        batch(0, half)
        middle = process.memory_info().rss
        progress(
            f"{half} names in {time.monotonic() - began:.0f} s, RSS {middle / MiB:.1f} MiB; "
            f"{args.count - half} to go"
        )
        first = trace_snapshot(cache.pid, trace_file) if args.trace else None
        batch(half, args.count - half)
        elapsed = time.monotonic() - began
        after = process.memory_info().rss
        second = trace_snapshot(cache.pid, trace_file) if args.trace else None
    finally:
        cache.stop()
        server.shutdown()
        if redis is not None:
            redis.stop()
    kind = "a fleet member (filesystem + Redis)" if args.fleet else "one instance, filesystem"
    limit = f", max_size {args.max_mib} MiB" if args.max_mib else ""
    print(
        f"names ({args.code or 'this checkout'}, {kind}{limit}): {args.count} distinct "
        "repository names, one manifest GET each"
    )
    print(f"  {elapsed:.0f} s ({args.count / elapsed:.0f} names/s), {args.threads} clients")
    print(
        f"  RSS {before / MiB:.1f} MiB after {warmup} warm-up names, {middle / MiB:.1f} MiB "
        f"after {half} more, {after / MiB:.1f} MiB after {args.count - half} more: growth "
        f"{(after - before) / MiB:.1f} MiB; second half "
        f"{(after - middle) / MiB * 10_000 / max(1, args.count - half):.2f} MiB per 10,000 names"
    )
    if first is not None and second is not None:
        print_growth(first, second, args.count - half)


def bucket_blob_bytes(s3: S3Server, root: str) -> int:
    prefix = f"{root.strip('/')}/docker/registry/v2/blobs/"
    total, token = 0, ""
    for _page in range(1000):
        query = f"list-type=2&max-keys=1000&prefix={quote(prefix, safe='')}"
        if token:
            query += f"&continuation-token={quote(token, safe='')}"
        status, body = signed_request("GET", f"{s3.endpoint}/{s3.bucket}?{query}")
        assert status == 200, body[:300]
        total += sum(int(size) for size in re.findall(rb"<Size>(\d+)</Size>", body))
        found = re.search(rb"<NextContinuationToken>([^<]+)<", body)
        if not found:
            break
        token = found.group(1).decode()
    return total


def folder_bytes(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(parent, name)).st_size
    return total


def churn(args: argparse.Namespace, workdir: Path) -> None:
    limit = args.max_mib * MiB
    layer = args.layer_mib * MiB
    count = 3 * limit // layer
    single = args.single
    s3 = None if single else start_s3_server(workdir / "s3")
    redis = None
    if not single:
        (workdir / "redis").mkdir()
        redis = start_redis(workdir / "redis")
    fake, info = start_fake([layer] * count, None)
    layers = [entry["digest"] for entry in info["image"]["layers"]]
    instances: list[RegistryProcess] = []
    root = f"/bench/{uuid.uuid4().hex}"
    samples: list[int] = []
    with_fills: list[int] = []
    stop = threading.Event()
    env = {"PYTHONPATH": str(Path(args.code).resolve())} if args.code else None
    try:
        for index in range(1 if single else args.instances):
            folder = workdir / f"instance{index}"
            folder.mkdir()
            sections = cache_sections(info["url"], max_size=str(limit))
            if s3 is not None and redis is not None:
                sections.update(fleet_member_sections(s3, root, folder, redis.addr, index))
            instance = RegistryProcess(folder, sections, env=env)
            instance.start()
            instances.append(instance)
        data = workdir / "instance0/data/docker/registry/v2"

        def sample() -> None:
            while not stop.wait(0.02 if single else 0.1):
                if s3 is not None:
                    samples.append(bucket_blob_bytes(s3, root))
                    continue
                blobs = folder_bytes(data / "blobs")
                samples.append(blobs)
                with_fills.append(blobs + folder_bytes(data / "txregistry"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        errors: list[str] = []

        def pull(which: list[int]) -> None:
            pullers = [Puller(instance.url) for instance in instances]
            for n in which:
                puller = pullers[n % len(instances)]
                base = instances[n % len(instances)].url
                status, digest = puller.get(f"{base}/v2/library/alpine/blobs/{layers[n]}")
                if status != 200 or digest != layers[n]:
                    errors.append(f"{layers[n]}: {status} {digest}")

        began = time.monotonic()
        workers = [
            threading.Thread(target=pull, args=(list(range(k, count, args.parallel)),))
            for k in range(args.parallel)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - began
        time.sleep(3)  # evictions that the last fills scheduled
        stop.set()
        sampler.join()
    finally:
        stop.set()
        for instance in instances:
            instance.stop()
        fake.terminate()
        fake.wait(timeout=10)
        if redis is not None:
            redis.stop()
        if s3 is not None:
            s3.stop()
    worst = max(samples) if samples else 0
    kind = "1 instance, filesystem" if single else f"{args.instances} instances, SeaweedFS + Redis"
    print(
        f"churn ({args.code or 'this checkout'}): {kind}, max_size {args.max_mib} MiB, "
        f"{count} distinct layers of {args.layer_mib} MiB ({count * args.layer_mib} MiB) "
        f"in {elapsed:.0f} s, {args.parallel} at a time"
    )
    print(f"  errors: {len(errors)} {errors[:2]}")
    print(
        f"  stored blobs, {len(samples)} samples: at most {worst / MiB:.1f} MiB "
        f"(bound: max_size + one layer = {(limit + layer) / MiB:.0f} MiB), "
        f"at the end {samples[-1] / MiB if samples else 0:.1f} MiB"
    )
    if with_fills:
        print(f"  with the fills in flight: at most {max(with_fills) / MiB:.1f} MiB")
    if args.verbose:
        print("  samples (MiB):", " ".join(f"{v / MiB:.0f}" for v in samples))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cold")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--layer-mib", type=int, default=64)
    p.add_argument("--blob-rate", type=int, default=0, help="upstream MiB/s (0: unbounded)")
    p.add_argument("--rounds", type=int, default=1, help="straight, cold and warm, repeated")
    p.add_argument("--storage", choices=["filesystem", "s3"], default="filesystem")
    p.add_argument("--code", default="", help="also pull cold through a cache run from here")
    p = sub.add_parser("names")
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--trace", action="store_true", help="tracemalloc in the cache process")
    p.add_argument("--fleet", action="store_true", help="a fleet member on SeaweedFS + Redis")
    p.add_argument("--max-mib", type=int, default=0, help="max_size (0: none)")
    p.add_argument("--code", default="", help="checkout the cache runs from")
    p = sub.add_parser("churn")
    p.add_argument("--max-mib", type=int, default=64)
    p.add_argument("--layer-mib", type=int, default=4)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--parallel", type=int, default=1, help="pulls at a time")
    p.add_argument("--single", action="store_true", help="one instance, filesystem, no Redis")
    p.add_argument("--code", default="", help="checkout the instances run from")
    p.add_argument("--verbose", action="store_true", help="print every sample")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="txregistry-bench-targets-"))
    try:
        {"cold": cold, "names": names, "churn": churn}[args.command](args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
