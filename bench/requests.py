"""
Request-rate scenarios (manifest GET, blob HEAD, 1,000 connections) with wrk and hey, for
bench/run.py.  Both servers get the same small image pushed first.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import attrs

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@attrs.frozen
class Rate:
    requests_per_second: float
    p99_ms: float
    errors: int
    non_2xx: int


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


def wrk_get(url: str, connections: int, seconds: int, accept: str = MANIFEST_TYPE) -> Rate:
    """wrk GETs; p99 from its latency distribution."""
    output = subprocess.run(
        [_require("wrk"), "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Accept: {accept}", url],
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
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Rate(rps, p99_ms, error_count, int(non_2xx.group(1)) if non_2xx else 0)


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
