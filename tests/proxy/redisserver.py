"""
A real Redis (Debian's ``redis-server``) on a free loopback port, in a temporary folder, for
the fleet tests: no persistence, nothing outside the folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.e2e.harness import free_port


@attrs.define
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, *words: str) -> bytes:
        """One command over a raw socket (RESP), the reply's first line and bulk data."""
        request = f"*{len(words)}\r\n".encode()
        for word in words:
            request += f"${len(word.encode())}\r\n{word}\r\n".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            return sock.recv(65536)

    def monitor(self) -> RedisMonitor:
        """Every command Redis runs from now on, as ``MONITOR`` reports it (read by a thread
        until `RedisMonitor.stop`)."""
        return RedisMonitor(socket.create_connection(("127.0.0.1", self.port), timeout=5))

    def restart(self, timeout: float = 20.0) -> None:
        """Kill Redis and start it again on the same port, empty (nothing is persisted)."""
        self.stop()
        self.process = start_redis(self.workdir, timeout, port=self.port).process

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class RedisMonitor:
    """A ``MONITOR`` connection: its lines (``<time> [<db> <client>] "<word>" ...``) are
    collected by a thread, at most ``limit`` bytes of them."""

    def __init__(self, sock: socket.socket, limit: int = 16 * 1024 * 1024) -> None:
        self._sock = sock
        self._limit = limit
        self._data = bytearray()
        sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        sock.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stopping.is_set() and len(self._data) < self._limit:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self._data += chunk

    def lines(self) -> list[str]:
        """The commands seen so far, one line each."""
        return [
            line.decode("utf-8", "replace")
            for line in bytes(self._data).split(b"\r\n")
            if line.startswith(b"+") and line != b"+OK"
        ]

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._sock.close()


def require_redis() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        reason = "redis-server not installed (make tools installs Debian's redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def start_redis(workdir: Path, timeout: float = 20.0, port: int | None = None) -> RedisServer:
    binary = require_redis()
    port = port or free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        str(workdir / "redis.log"),
    ]
    process = subprocess.Popen(command, cwd=workdir, start_new_session=True)
    server = RedisServer(port, process, workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            if server.command("PING").startswith(b"+PONG"):
                return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"redis-server not answering on {port} after {timeout} s")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    workdir = Path(tempfile.mkdtemp(prefix="txregistry-redis-"))
    server = start_redis(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
