"""
Running registries for end-to-end tests, in two forms:

- `start_in_process`: `registry.tap.makeService` inside the test's reactor, listening on a free
  loopback port (fast; most wire tests use it);
- `RegistryProcess`: ``twistd -n registry`` as a child process (restarts, kills, memory); its
  log is scanned for tracebacks at the end of each test (`tests.logwatch`).

Both go through the real option parsing and service wiring.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import psutil
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from registry.tap import Options, makeService
from tests import logwatch

REPO_ROOT = Path(__file__).resolve().parents[2]


def twistd_command(*arguments: str) -> list[str]:
    """``twistd -n registry ARGUMENTS`` with this interpreter (no pid file, foreground)."""
    run_twistd = "from twisted.scripts.twistd import run; run()"
    return [sys.executable, "-c", run_twistd, "-n", "--pidfile=", "registry", *arguments]


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Block until something accepts on 127.0.0.1:``port``; fail if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


# What the registry logs once it serves; the address is the bound one (the real port for 0).
LISTENING = re.compile(r"txregistry listening on .*\((?P<host>[0-9.]+):(?P<port>\d+)\)")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_handed_out: set[int] = set()


def free_port() -> int:
    """
    A port nothing listens on right now.  Only for servers that must be told their port up
    front (registry:2, nginx, a fleet's peer listener, a URL where nothing may answer); ours
    listen on port 0.

    It is taken below the kernel's ephemeral range: a listener on port 0 (or an outgoing
    connection) started between this probe and the server's own bind can then never be given
    the same port.  Ports already handed out by this process are not handed out again.
    """
    low, _high = _ephemeral_range()
    first = 20000 if low > 21000 else 1024
    candidates = random.Random().sample(range(first, low), k=min(200, low - first))
    for port in candidates:  # bounded: at most 200 probes
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in {first}-{low - 1}")


async def sleep(seconds: float) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    await d


# How long an in-process registry may take from bound to serving.
STARTUP_LIMIT = 60.0
# How long an in-process registry may take to stop (its drain is shorter).
STOP_LIMIT = 120.0


def _storage_configured(sections: Mapping[str, Mapping[str, str]] | None) -> bool:
    storage = (sections or {}).get("storage", {})
    return "rootdirectory" in storage or "driver" in storage


@attrs.define
class InProcessRegistry:
    url: str
    service: IService
    options: Options
    stopped: bool = False

    async def stop(self) -> None:
        """Stop it; again is a no-op (a test may stop it before the fixture does)."""
        if self.stopped:
            return
        self.stopped = True
        result = self.service.stopService()
        if isinstance(result, Deferred):
            # A stop that never ends fails this test (its log names the part still stopping,
            # "stopping: still waiting for ..."), not the whole run at the suite's timeout.
            result.addTimeout(STOP_LIMIT, reactor)
            await result


def write_config(path: Path, sections: Mapping[str, Mapping[str, str]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


async def start_in_process(
    tmp_path: Path,
    sections: Mapping[str, Mapping[str, str]] | None = None,
    listen: str = "tcp:{port}:interface=127.0.0.1",
) -> InProcessRegistry:
    """
    ``listen`` is the endpoint description, ``{port}`` replaced by 0: the kernel picks a free
    port, and the registry's listeners say which.
    """
    config = write_config(tmp_path / "registry.cfg", sections or {})
    options = Options()
    arguments = ["--config", str(config), "--port", listen.format(port=0)]
    if not _storage_configured(sections):
        arguments += ["--storage", str(tmp_path / "data")]
    options.parseOptions(arguments)
    service = makeService(options)
    service.startService()
    serving: Any = service  # a RegistryService: its listeners know the bound port
    bound = Deferred.fromCoroutine(serving.listeners.wait_bound())
    bound.addTimeout(STARTUP_LIMIT, reactor)
    await bound
    # Bound is not serving: connections wait in the backlog until the storage probe and the
    # start-up checks pass.  A start-up that fails (or never ends) must fail the test naming
    # the cause, not leave its first request waiting until the suite's timeout.
    ready: Deferred[None] = serving.when_ready()
    ready.addTimeout(STARTUP_LIMIT, reactor)
    try:
        await ready
    except BaseException:
        # Its thread pools would keep the test process from exiting.
        await Deferred.fromCoroutine(InProcessRegistry("", service, options).stop())
        raise
    port = int(serving.listeners.ports[0].getHost().port)
    scheme = "https" if listen.startswith("ssl:") else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    return InProcessRegistry(url, service, options)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children())
    except psutil.Error:
        return []


class RegistryProcess:
    """``twistd -n registry`` in a child process, for restarts, kills and memory checks."""

    def __init__(
        self,
        workdir: Path,
        sections: Mapping[str, Mapping[str, str]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        # Chosen by the kernel at the first start (``tcp:0``), kept across restarts: a restart
        # must come back where clients (and upload Locations they hold) point.
        self.port: int | None = None
        self.sections = sections or {}
        self.config = write_config(workdir / "registry.cfg", self.sections)
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "registry.log"
        self._offset = 0  # where the log of the current start begins
        self._workers: list[psutil.Process] = []  # the child's children when signalled

    @property
    def url(self) -> str:
        assert self.port is not None, "start() first"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.launch()
        self.wait_serving()

    def launch(self) -> None:
        """Start the child without waiting for it: several can then start up side by side
        (`wait_serving` each afterwards)."""
        sections_storage = ["--storage", str(self.workdir / "data")]
        if _storage_configured(self.sections):
            sections_storage = []
        command = twistd_command(
            "--config",
            str(self.config),
            "--port",
            f"tcp:{self.port or 0}:interface=127.0.0.1",
            *sections_storage,
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env)
        # Tracebacks in its log fail the test (tests/logwatch.py), as they would in process.
        logwatch.watch_file(self.log_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        offset = log.tell()
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._offset = offset

    def wait_serving(self) -> None:
        """Block until the child `launch` started announces its port."""
        self.port = self._announced_port(self._offset)

    def _announced_port(self, offset: int, timeout: float = 60) -> int:
        """The port in the start-up line the child logs once it serves (past ``offset``)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                found = LISTENING.search(log.read().decode(errors="replace"))
            if found:
                return int(found["port"])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        # Not serving: a child still starting (or hung) must not outlive the test.
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"registry not serving: {self.log_path.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.send_stop(sig)
        self.wait_stopped()

    def send_stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the child without waiting: several can then shut down side by side
        (`wait_stopped` each afterwards)."""
        if self.process is None:
            return
        # Worker processes ([http] workers) hold the listening socket too: the port is free
        # for a restart once they are gone as well, as a service manager waits for them.
        self._workers = _children(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait_stopped(self) -> None:
        """Block until the child `send_stop` signalled and its workers are gone."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        _, alive = psutil.wait_procs(self._workers, timeout=15)
        for worker in alive:
            worker.kill()
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
