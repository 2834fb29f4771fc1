"""
Request-rate scenarios (manifest GET, blob HEAD, 1,000 and 10,000 connections) with wrk and
hey, and idle connections held open, for bench/run.py.  Both servers get the same small image
pushed first.
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import selectors
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable

import attrs

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@attrs.frozen
class Rate:
    requests_per_second: float
    p99_ms: float
    errors: int
    non_2xx: int
    # wrk's split of ``errors``: "connect 0, read 0, write 0, timeout 12" ("" from hey).  A
    # timeout is an answer slower than wrk's ``--timeout``, not a failed socket: at C
    # connections a server answering R requests per second makes each wait about C / R s
    # (Little's law), so 10,000 connections need 5,000 req/s to stay under 2 s.
    detail: str = ""
    # Of ``errors``, wrk's timeouts.
    timeouts: int = 0


def push_small_image(url: str, repo: str) -> tuple[str, str]:
    """Push config, one layer and a manifest tagged ``latest``; returns (manifest, layer)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                         "diff_ids": []}}).encode()  # fmt: skip
    layer = b"\x1f\x8b" + bytes(range(256)) * 64
    descriptors = []
    for data, media_type in (
        (config, "application/vnd.oci.image.config.v1+json"),
        (layer, "application/vnd.oci.image.layer.v1.tar+gzip"),
    ):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        location = subprocess.run(
            ["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST",
             f"{url}/v2/{repo}/blobs/uploads/"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        path = re.search(r"(?im)^location:\s*(\S+)", location)
        assert path is not None
        target = path.group(1) if path.group(1).startswith("http") else url + path.group(1)
        target += ("&" if "?" in target else "?") + f"digest={digest}"
        subprocess.run(
            ["curl", "-sf", "-o", "/dev/null", "-X", "PUT", "--data-binary", "@-",
             "-H", "Content-Type: application/octet-stream", target],
            input=data, check=True,
        )  # fmt: skip
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    document: dict[str, object] = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE}
    manifest = json.dumps(
        {**document, "config": descriptors[0], "layers": descriptors[1:]}
    ).encode()
    subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", "-X", "PUT", "-H", f"Content-Type: {MANIFEST_TYPE}",
         "--data-binary", "@-", f"{url}/v2/{repo}/manifests/latest"],
        input=manifest, check=True,
    )  # fmt: skip
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), descriptors[1]["digest"]


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"{tool} is not installed (Debian package {tool}; make tools)")
    return path


def wrk_get(
    url: str, connections: int, seconds: int, accept: str = MANIFEST_TYPE, timeout: int = 2
) -> Rate:
    """wrk GETs (a request unanswered after ``timeout`` s is an error); p99 from its report."""
    raise_open_files_limit()  # wrk inherits it: 10,000 connections need as many descriptors
    output = subprocess.run(
        [_require("wrk"), "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "--timeout", f"{timeout}s", "-H", f"Accept: {accept}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    error_count = sum(int(n) for n in errors.groups()) if errors else 0
    detail = errors.group(0).removeprefix("Socket errors: ") if errors else ""
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    timeouts = int(errors.group(4)) if errors else 0
    return Rate(rps, p99_ms, error_count, int(non_2xx.group(1)) if non_2xx else 0, detail, timeouts)


def hey(url: str, connections: int, seconds: int, method: str = "GET") -> Rate:
    """hey (it can do HEAD, wrk cannot); p99 and the error distribution from its report."""
    output = subprocess.run(
        [_require("hey"), "-z", f"{seconds}s", "-c", str(connections), "-m", method,
         "-H", f"Accept: {MANIFEST_TYPE}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%+ in ([\d.]+) secs", output)
    statuses = dict(
        (int(code), int(count))
        for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)
    )
    errors_section = (
        output.split("Error distribution:")[1] if "Error distribution:" in output else ""
    )
    error_count = sum(int(n) for n in re.findall(r"\[(\d+)\]\s", errors_section))
    non_2xx = sum(count for code, count in statuses.items() if code >= 300)
    return Rate(rps, float(p99.group(1)) * 1000 if p99 else float("nan"), error_count, non_2xx)


def raise_open_files_limit() -> None:
    """This process's (and its children's) soft open-files limit up to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@attrs.frozen
class Idle:
    """
    ``held`` idle connections (connected on the client's side; ``server_held`` of them
    accepted by the server): its RSS before and while, and GETs on new connections meanwhile.
    """

    held: int
    server_held: int
    rss_before_mib: float
    rss_held_mib: float
    get_ms: tuple[float, ...]
    get_ok: bool


def hold_idle(
    url: str,
    host: str,
    port: int,
    count: int,
    rss_mib: Callable[[], float],
    sockets_held: Callable[[], int],
    wait: float = 60,
    gets: int = 5,
) -> Idle:
    """
    Open ``count`` connections that send nothing, wait until the server holds them (the
    sockets it has open stop growing, bounded by ``wait`` s), then time ``gets`` ``GET url``,
    each on a new connection.
    """
    raise_open_files_limit()
    before = rss_mib()
    sockets_before = sockets_held()
    sockets: list[socket.socket] = []
    try:
        with selectors.DefaultSelector() as selector:
            for _ in range(count):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex((host, port))
                sockets.append(sock)
                selector.register(sock, selectors.EVENT_WRITE)
            pending, deadline = len(sockets), time.monotonic() + wait
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(1.0):
                    selector.unregister(key.fileobj)
                    pending -= 1
        held = sum(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in sockets)
        # Connected (the kernel's backlog) is not yet accepted by the server: wait until the
        # sockets it holds stop growing.
        last, deadline = -1, time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = sockets_held()
            if now == last:
                break
            last = now
        get_ms, get_ok = [], True
        for _ in range(gets):
            started = time.perf_counter()
            try:
                get_ok = urllib.request.urlopen(url, timeout=10).status == 200 and get_ok
            except OSError:
                get_ok = False
            get_ms.append((time.perf_counter() - started) * 1000)
        server_held = sockets_held() - sockets_before
        return Idle(held, server_held, before, rss_mib(), tuple(get_ms), get_ok)
    finally:
        for sock in sockets:
            sock.close()
