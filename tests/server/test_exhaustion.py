"""
At the open-files limit (registry.server.exhaustion): a real ``twistd -n registry`` started with
``RLIMIT_NOFILE`` at 200, flooded with connections over loopback.
"""

from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import write_config
from tests.server.proc import Child

LIMIT = 200
# More than two workers can hold under LIMIT, and bounded.
HELD = 2 * LIMIT + 50
EXTRA = 40
WARNING = re.compile(r"cannot accept connections: too many open files")
# What each refused connection used to log (balance.py's debug line, Twisted's EMFILE recovery).
PER_CONNECTION = re.compile(r"connection dropped before it was served|EMFILE|Could not accept")


def start_limited(tmp_path: Path, workers: str) -> Child:
    """``twistd -n registry`` whose soft and hard open-files limits are both `LIMIT`."""
    config = write_config(
        tmp_path / "r.cfg", {"http": {"workers": workers, "timeout": "120s"}}
    )  # fmt: skip
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT}))"
    run = "from twisted.scripts.twistd import run; run()"
    command = [sys.executable, "-c", f"{limit}; {run}", "-n", "--pidfile=", "registry"]
    return Child(
        [*command, "--config", str(config), "--port", "tcp:0:interface=127.0.0.1",
         "--storage", str(tmp_path / "data")],
        tmp_path,
    )  # fmt: skip


def connect(port: int, held: list[socket.socket], count: int) -> None:
    """Up to ``count`` more connections, kept in ``held``; stops after a run of failures."""
    failures = 0
    for _ in range(count):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
            failures = 0
        except OSError:  # the backlog is full while the server pauses
            failures += 1
            if failures >= 5:
                return


def get_v2(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(100)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_connection_flood_at_the_open_files_limit_logs_one_warning(
    tmp_path: Path, workers: str
) -> None:
    child = start_limited(tmp_path, workers)
    held: list[socket.socket] = []
    try:
        port = child.wait_listening()
        connect(port, held, HELD)
        for _ in range(EXTRA):  # refused or left waiting: each used to write log lines
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.settimeout(0.2)
                    s.recv(100)
            except OSError:
                pass
        time.sleep(1)  # the workers' lines reach the supervisor's log
        log = "".join(child.output)
        warnings = WARNING.findall(log)
        # One per process that ran out (each worker has its own descriptors).
        assert 1 <= len(warnings) <= int(workers), log[-3000:]
        assert not PER_CONNECTION.search(log), PER_CONNECTION.findall(log)[:5]
        for each in held:
            each.close()
        held = []
        answer = b""
        for _ in range(50):  # accepting again once descriptors are free
            try:
                answer = get_v2(port)
            except OSError:
                answer = b""
            if answer.startswith(b"HTTP/1.1 200"):
                break
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert "Traceback" not in "".join(child.output)
    finally:
        for each in held:
            each.close()
        child.stop()
