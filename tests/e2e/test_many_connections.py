"""
Room for many connections, in a real ``twistd registry`` child: the listen backlog queues
hundreds of connections while the reactor is busy, and the open-files limit is raised.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import twistd_command
from tests.server.proc import Child, child_env

# More than Twisted's default backlog (50), fewer than ours (1,024).
QUEUED = 300


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Child]:
    """A registry started with a soft open-files limit of 256 (the hard limit unchanged)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < QUEUED + 64:
        pytest.skip(f"hard open-files limit {hard} is below what this test opens")
    command = twistd_command("--port", "tcp:0:interface=127.0.0.1", "--storage", str(tmp_path))
    limit = f"--nofile=256:{hard if hard != resource.RLIM_INFINITY else 'unlimited'}"
    # One process: the test stops it with SIGSTOP to make connections wait in the backlog.
    env = child_env({"REGISTRY_HTTP_WORKERS": "1"})
    child = Child(["prlimit", limit, "--", *command], tmp_path, env=env)
    try:
        yield child
    finally:
        if child.process.poll() is None:
            os.kill(child.process.pid, signal.SIGCONT)
        child.stop()


def _soft_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return line.split()[3]
    raise AssertionError("no open files line")


def test_open_files_soft_limit_raised_to_the_hard_one(registry: Child) -> None:
    registry.wait_listening()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert _soft_limit(registry.process.pid) == expected


def _connect_all(port: int, count: int, within: float) -> list[socket.socket]:
    """Non-blocking connects; the sockets whose handshake completed before ``within`` s."""
    pending: dict[socket.socket, None] = {}
    done: list[socket.socket] = []
    with selectors.DefaultSelector() as selector:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            pending[sock] = None
            selector.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + within
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                selector.unregister(sock)
                del pending[sock]
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done.append(sock)
                else:
                    sock.close()
    for sock in pending:
        sock.close()
    return done


def _get(sock: socket.socket) -> bytes:
    sock.setblocking(True)
    sock.settimeout(30)
    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_connections_queue_while_the_reactor_is_stopped(registry: Child) -> None:
    """
    With the process stopped (as a reactor busy with something long would be), the kernel
    completes handshakes only up to the listen backlog; past it, SYNs are dropped and clients
    retry 1 s and 3 s later, which load testers count as timeouts.  All are answered once
    it runs again.
    """
    port = registry.wait_listening()
    os.kill(registry.process.pid, signal.SIGSTOP)
    try:
        # Twisted's default backlog would let about 51 through; a SYN dropped now is only
        # retried after a second, so two seconds tell the backlogs apart.
        connected = _connect_all(port, QUEUED, within=2.0)
        assert len(connected) == QUEUED
    finally:
        os.kill(registry.process.pid, signal.SIGCONT)
    answers = [_get(sock) for sock in connected[:5]]
    for sock in connected:
        sock.close()
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 5
    assert all(a.endswith(b"\r\n\r\n{}") for a in answers)
