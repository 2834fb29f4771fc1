"""
Real container engines for the tests: dockerd, containerd and podman, each with all of its state
(data, run state, sockets, configuration, credentials) in one temporary folder.

They run as root (dockerd and containerd need it; podman keeps to one code path that way), talk
over unix sockets inside that folder, and never touch iptables, bridges or overlay mounts: dockerd
runs with ``--iptables=false --bridge=none --storage-driver=vfs``, containerd with its CRI plugin
disabled and the native snapshotter, podman with vfs.  ``stop`` kills what was started (process
groups first, then any process still naming the folder) and unmounts whatever was mounted under
the folder, so nothing outlives the test session.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from twisted.internet.threads import deferToThread

from tests.e2e.client import sha256
from tests.e2e.tools import require

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def require_root() -> None:
    """Engines need root here: skip with the reason otherwise, but never under CI=true."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the container-engine tests must run as root under CI=true")
        pytest.skip("dockerd, containerd and podman need root (run the suite as root)")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Block until ``condition()`` holds, polling; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout} s")
        time.sleep(0.05)


async def run(command: list[str], env: Mapping[str, str] | None = None, limit: float = 120) -> str:
    """Run a command in a thread (the reactor keeps serving the registry); its stdout.

    Fails with the command's output when it exits non-zero or runs past ``limit`` seconds.
    """

    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=limit,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
        )

    result = await deferToThread(call)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def _pids_naming(folder: Path) -> list[int]:
    """Processes whose command line names a path in ``folder``: only ones these fixtures
    started do (the trailing slash keeps ``dockerd1`` from matching ``dockerd10``)."""
    needle = f"{folder}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def stop_process(process: subprocess.Popen[bytes], folder: Path) -> None:
    """TERM the process group, KILL it if it lingers, then clean up what it left behind."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            pass
    # dockerd's own containerd runs in a process group of its own (and usually dies with
    # dockerd): anything still naming our folder was started by us and goes now.
    for pid in _pids_naming(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _pids_naming(folder), f"processes under {folder} to exit", 10)
    for point in sorted(_mounts_under(folder), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, timeout=30, capture_output=True)
    leftover = _mounts_under(folder)
    if leftover:
        raise RuntimeError(f"still mounted under {folder}: {leftover}")


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session (one process group to kill), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _unix_http_ok(path: Path, request: bytes, expect: bytes) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(request)
            return expect in sock.recv(4096)
    except OSError:
        return False


class Dockerd:
    """dockerd plus the docker CLI pointed at it (client configuration in the folder too).

    Registry mirrors live in a ``daemon.json`` that dockerd re-reads on SIGHUP, so one daemon
    serves every test even though each test's registry listens on a new port.  127.0.0.0/8 is
    an insecure registry by default, so pushes to ``127.0.0.1:PORT`` need no flag.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        self.daemon_json = folder / "daemon.json"
        self.client_config = folder / "cli"
        self.log = folder / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.dockerd = require("dockerd")
        # The CLI of Debian's docker.io (the one CI installs), not another one earlier in PATH.
        cli = shutil.which("docker", path="/usr/bin:" + os.environ.get("PATH", ""))
        self.cli = cli if cli is not None else require("docker")

    def start(self) -> None:
        self.client_config.mkdir(parents=True, exist_ok=True)
        self.daemon_json.write_text("{}")
        command = [
            self.dockerd,
            f"--data-root={self.folder / 'data'}",
            f"--exec-root={self.folder / 'exec'}",
            f"--pidfile={self.folder / 'docker.pid'}",
            f"--host=unix://{self.socket}",
            f"--config-file={self.daemon_json}",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=vfs",
        ]
        self.process = _spawn(command, self.log)
        wait_until(self.ready, f"dockerd answering on {self.socket} (log {self.log})")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited: {self.log.read_text()[-3000:]}")
        return _unix_http_ok(
            self.socket, b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n", b"\r\n\r\nOK"
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, self.folder)
            self.process = None

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_CONFIG=str(self.client_config), DOCKER_HOST="")

    async def docker(self, *args: str, limit: float = 120) -> str:
        return await run([self.cli, f"--host=unix://{self.socket}", *args], self.env, limit)

    async def set_mirror(self, url: str | None) -> None:
        """Make ``url`` dockerd's only Docker Hub mirror (reloaded live with SIGHUP)."""
        mirrors = [url] if url else []
        self.daemon_json.write_text(json.dumps({"registry-mirrors": mirrors}))
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        wanted = [m.rstrip("/") + "/" for m in mirrors]
        for _ in range(200):
            shown = await self.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}")
            if (json.loads(shown) or []) == wanted:
                return
        raise AssertionError(f"dockerd did not take the mirrors {wanted} ({self.log})")

    async def remove_all_images(self) -> None:
        """Forget every image and layer (the next pull fetches everything again)."""
        ids = (await self.docker("images", "--all", "--quiet", "--no-trunc")).split()
        if ids:
            await self.docker("rmi", "--force", *sorted(set(ids)))
        assert (await self.docker("images", "--all", "--quiet")).strip() == ""


CONTAINERD_CONFIG = """\
version = 2
root = "{folder}/root"
state = "{folder}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{folder}/containerd.sock"

[ttrpc]
  address = "{folder}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"""


class Containerd:
    """containerd (no CRI, native snapshotter) and ``ctr`` pointed at it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "containerd.sock"
        self.config = folder / "config.toml"
        self.log = folder / "containerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.containerd = require("containerd")
        self.cli = require("ctr")

    def start(self) -> None:
        self.config.write_text(CONTAINERD_CONFIG.format(folder=self.folder))
        self.process = _spawn([self.containerd, "--config", str(self.config)], self.log)
        wait_until(self.ready, f"containerd answering on {self.socket} (log {self.log})")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"containerd exited: {self.log.read_text()[-3000:]}")
        if not self.socket.exists():
            return False
        probe = subprocess.run(
            [self.cli, "--address", str(self.socket), "version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return probe.returncode == 0

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, self.folder)
            self.process = None

    async def ctr(self, *args: str, limit: float = 120) -> str:
        return await run([self.cli, "--address", str(self.socket), *args], limit=limit)

    async def image_digest(self, reference: str) -> str:
        """The manifest (or index) digest containerd holds for ``reference``."""
        for line in (await self.ctr("images", "ls")).splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == reference:
                return fields[2]
        raise AssertionError(f"containerd has no image {reference}")

    async def pull_through_mirror(self, mirror: str, reference: str) -> tuple[str, str]:
        """
        Pull docker.io ``reference`` through ``mirror`` and check that containerd holds it
        whole; its manifest digest (checked against the bytes) and config digest.
        """
        hosts = self.hosts_dir(mirror)
        await self.ctr("images", "pull", f"--hosts-dir={hosts}", "--snapshotter=native", reference)
        check = await self.ctr("images", "check", f"name=={reference}")
        assert "complete" in check, check
        digest = await self.image_digest(reference)
        manifest = await self.ctr("content", "get", digest)
        assert sha256(manifest.encode()) == digest
        return digest, json.loads(manifest)["config"]["digest"]

    async def remove_all_images(self) -> None:
        """Delete every image and, synchronously, the content and snapshots they held."""
        references = (await self.ctr("images", "ls", "--quiet")).split()
        if references:
            await self.ctr("images", "rm", "--sync", *references)
        assert (await self.ctr("content", "ls", "--quiet")).strip() == ""

    def hosts_dir(self, mirror: str) -> Path:
        """A ``--hosts-dir`` sending docker.io pulls to ``mirror`` (``http://127.0.0.1:PORT``)."""
        folder = self.folder / "hosts" / re.sub(r"\W", "_", mirror) / "docker.io"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts.toml").write_text(
            'server = "https://registry-1.docker.io"\n\n'
            f'[host."{mirror}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        return folder.parent


class Podman:
    """podman (vfs) with its storage, run state, registries.conf and credentials in the folder.

    podman has no daemon: every call is a process with the same flags and environment.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.registries_conf = folder / "registries.conf"
        self.auth_file = folder / "auth.json"
        self.cli = require("podman")
        # podman refuses a run root over 50 characters, which a pytest temporary folder can
        # be (under pytest-xdist, a worker's folders are one level deeper): a short one in /tmp.
        self.runroot = Path(tempfile.mkdtemp(prefix="podman-run-", dir="/tmp"))
        for sub in ("tmp", "net", "volumes"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        self.auth_file.write_text('{"auths": {}}')  # podman refuses a named file that is missing
        self.set_mirror(None)

    def set_mirror(self, location: str | None) -> None:
        """Pull docker.io images through ``location`` (``127.0.0.1:PORT``, plain HTTP)."""
        text = 'unqualified-search-registries = ["docker.io"]\n'
        if location is not None:
            text += (
                '\n[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
                f'\n[[registry.mirror]]\nlocation = "{location}"\ninsecure = true\n'
            )
        self.registries_conf.write_text(text)

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            REGISTRY_AUTH_FILE=str(self.auth_file),
            TMPDIR=str(self.folder / "tmp"),
        )

    async def podman(self, *args: str, limit: float = 120) -> str:
        command = [
            self.cli,
            f"--root={self.folder / 'storage'}",
            f"--runroot={self.runroot}",
            f"--tmpdir={self.folder / 'libpod'}",
            f"--network-config-dir={self.folder / 'net'}",
            f"--volumepath={self.folder / 'volumes'}",
            "--storage-driver=vfs",
            "--cgroup-manager=cgroupfs",
            "--events-backend=none",
            *args,
        ]
        return await run(command, self.env, limit)

    async def remove_all_images(self) -> None:
        await self.podman("rmi", "--all", "--force")
        assert (await self.podman("images", "--all", "--quiet")).strip() == ""

    def stop(self) -> None:
        """Nothing runs between calls; unmount anything a call may have left."""
        for folder in (self.folder, self.runroot):
            for point in sorted(_mounts_under(folder), key=len, reverse=True):
                subprocess.run(
                    ["umount", "-l", point], check=False, timeout=30, capture_output=True
                )
        shutil.rmtree(self.runroot, ignore_errors=True)
