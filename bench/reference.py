"""
Start the reference registry (Debian's ``docker-registry`` package: registry:2 v2.8) and
txregistry on loopback, each on its own empty storage folder, for side-by-side measurements.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

REGISTRY2_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


class Server:
    """A registry child process: ``name`` is how it appears in the results."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_listening(self.port, self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Registry2(Server):
    def command(self) -> list[str]:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise SystemExit("docker-registry (Debian package) is not installed: make tools")
        config = self.workdir / "config.yml"
        config.write_text(REGISTRY2_CONFIG.format(root=self.workdir / "data", port=self.port))
        return [binary, "serve", str(config)]


class TxRegistry(Server):
    def __init__(self, name: str, workdir: Path, storage: dict[str, str] | None = None) -> None:
        super().__init__(name, workdir)
        self.storage = storage or {}

    def command(self) -> list[str]:
        config = self.workdir / "registry.cfg"
        storage = {"delete_enabled": "true", "rootdirectory": str(self.workdir / "data")}
        storage.update(self.storage)
        config.write_text(
            "[log]\naccesslog = false\n[storage]\n"
            + "".join(f"{key} = {value}\n" for key, value in storage.items())
        )
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "registry",
            "--config",
            str(config),
            "--port",
            f"tcp:{self.port}:interface=127.0.0.1",
        ]
