"""
Start the reference registry (Debian's ``docker-registry`` package: registry:2 v2.8),
txregistry and nginx (a static file: curl's download ceiling) on loopback, each on its own
empty storage folder, for side-by-side measurements.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.harness import free_port, twistd_command, wait_listening  # noqa: E402

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


class Server:
    """A registry child process: ``name`` is how it appears in the results."""

    def __init__(self, name: str, workdir: Path, code_root: Path = REPO_ROOT) -> None:
        self.name = name
        self.workdir = workdir
        # Whose code runs (PYTHONPATH): another checkout measures a before/after pair.
        self.code_root = code_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        env = dict(os.environ, PYTHONPATH=str(self.code_root))
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
        # Gigabytes of pushed blobs: gone with the server (the input files are kept for reuse).
        shutil.rmtree(self.workdir, ignore_errors=True)


class Registry2(Server):
    def command(self) -> list[str]:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise SystemExit("docker-registry (Debian package) is not installed: make tools")
        config = self.workdir / "config.yml"
        config.write_text(REGISTRY2_CONFIG.format(root=self.workdir / "data", port=self.port))
        return [binary, "serve", str(config)]


class TxRegistry(Server):
    def __init__(
        self,
        name: str,
        workdir: Path,
        storage: dict[str, str] | None = None,
        http: dict[str, str] | None = None,
        code_root: Path = REPO_ROOT,
    ) -> None:
        super().__init__(name, workdir, code_root)
        self.storage = storage or {}
        self.http = http or {}

    def command(self) -> list[str]:
        config = self.workdir / "registry.cfg"
        storage = {"delete_enabled": "true", "rootdirectory": str(self.workdir / "data")}
        storage.update(self.storage)
        config.write_text(
            "[log]\naccesslog = false\n[storage]\n"
            + "".join(f"{key} = {value}\n" for key, value in storage.items())
            + "[http]\n"
            + "".join(f"{key} = {value}\n" for key, value in self.http.items())
        )
        return twistd_command(
            "--config", str(config), "--port", f"tcp:{self.port}:interface=127.0.0.1"
        )


NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
error_log {workdir}/error.log;
pid {workdir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class Nginx(Server):
    """nginx serving ``file`` as /blob: one process (no master), sendfile on."""

    def __init__(self, name: str, workdir: Path, file: Path) -> None:
        super().__init__(name, workdir)
        self.file = file

    def command(self) -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        root = self.workdir / "www"
        root.mkdir()
        if _same_device(self.file, root):
            os.link(self.file, root / "blob")
        else:
            shutil.copy(self.file, root / "blob")
        config = self.workdir / "nginx.conf"
        config.write_text(NGINX_CONFIG.format(workdir=self.workdir, port=self.port, root=root))
        return [binary, "-p", str(self.workdir), "-c", str(config)]


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev
