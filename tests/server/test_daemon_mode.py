"""
``twistd registry`` without ``-n`` (twistd's default: it daemonizes): the command's exit status
and its stderr say how the start went, as with ``-n`` (`registry.server.daemon_status`).  A
port in use made the command wait forever, and storage it could not use (found by the storage
probe, or by the workers) exited 0 with the registry gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import REPO_ROOT, free_port, write_config
from tests.server.proc import child_env

RUN_TWISTD = "from twisted.scripts.twistd import run; run()"


def daemon_command(tmp_path: Path, port: int, storage: Path, workers: str) -> list[str]:
    """twistd without ``-n``: it forks, and the command returns once the daemon said how."""
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": workers}})
    return [
        sys.executable, "-c", RUN_TWISTD,
        "--pidfile", str(tmp_path / "x.pid"), "--logfile", str(tmp_path / "registry.log"),
        "registry", "--config", str(config),
        "--port", f"tcp:{port}:interface=127.0.0.1", "--storage", str(storage),
    ]  # fmt: skip


def run(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    env = child_env({"PYTHONPATH": str(REPO_ROOT)})
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False
    )


@contextmanager
def port_in_use() -> Iterator[int]:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        yield held.getsockname()[1]
    finally:
        held.close()


def daemons_of(tmp_path: Path) -> list[psutil.Process]:
    """What is left running with this test's configuration (nothing, after a failure)."""
    mine = str(tmp_path / "r.cfg")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if mine in " ".join(process.info["cmdline"] or ()):
            found.append(process)
    return found


def assert_failed_saying(
    tmp_path: Path, result: subprocess.CompletedProcess[str], reason: str
) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    # The line -n prints, whole; then twistd's waiting process prints what the daemon wrote
    # on its status pipe (at most 98 bytes of it).
    first, twistds, *_ = result.stderr.splitlines()
    assert first == f"txregistry: {reason}", result.stderr
    assert twistds == f"An error has occurred: b'{reason[:98]}'", result.stderr
    assert f"start-up failed: {reason}" in (tmp_path / "registry.log").read_text()
    deadline = time.monotonic() + 15
    while daemons_of(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemons_of(tmp_path) == []
    assert not (tmp_path / "x.pid").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_fails_the_command_naming_it(tmp_path: Path, workers: str) -> None:
    with port_in_use() as port:
        result = run(tmp_path, daemon_command(tmp_path, port, tmp_path / "data", workers))
    reason = f"cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"
    assert_failed_saying(tmp_path, result, reason)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unusable_storage_found_while_serving_fails_the_command(
    tmp_path: Path, workers: str
) -> None:
    """Found by the storage probe, which needs the reactor (one process), or by worker 0 in
    its own process (2 workers): after twistd's own start had succeeded."""
    storage = tmp_path / "a-file"
    storage.write_text("")
    result = run(tmp_path, daemon_command(tmp_path, free_port(), storage, workers))
    assert_failed_saying(tmp_path, result, f"cannot use storage {storage}: not a directory")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_daemon_that_serves_exits_0_once_it_serves(tmp_path: Path, workers: str) -> None:
    port = free_port()
    result = run(tmp_path, daemon_command(tmp_path, port, tmp_path / "data", workers))
    pid = None
    try:
        assert (result.returncode, result.stderr) == (0, "")
        pid = int((tmp_path / "x.pid").read_text())
        # Serving already: the command returned only once the registry (every worker) did.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=10) as answer:
            assert answer.status == 200
        assert "txregistry listening on" in (tmp_path / "registry.log").read_text()
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while daemons_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert daemons_of(tmp_path) == []


@contextmanager
def silent_s3() -> Iterator[int]:
    """A port that accepts connections and never answers: a storage probe that waits."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        for _ in range(3000):  # bounded: 10 minutes at most
            if stop.is_set():
                return
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=10)
        for each in held:
            each.close()
        listener.close()


def wait_for_pid(path: Path, child: subprocess.Popen[str]) -> int:
    for _ in range(60_000):  # bounded: 60 s
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        assert child.poll() is None, child.communicate()
        time.sleep(0.001)
    raise AssertionError("no pid file")


def terminated_once_there(tmp_path: Path, command: list[str]) -> tuple[int, str]:
    """Run the daemonizing ``command``, SIGTERM the daemon as soon as its pid file names it;
    the command's status and stderr."""
    env = child_env({"PYTHONPATH": str(REPO_ROOT)})
    child = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        os.kill(wait_for_pid(tmp_path / "x.pid", child), signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return child.returncode, stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_daemon_stopped_while_it_starts_fails_the_command(tmp_path: Path, workers: str) -> None:
    """
    SIGTERM while the start waits (one process: the storage probe; two workers: the
    supervisor just after its exec, or worker 0's probe): the command exits 1 saying so.  It
    waited for ever: twistd ends its process with the signal (no exit handler runs), and a
    supervisor not yet handling SIGTERM was ended by it without a word.
    """
    with silent_s3() as port:
        config = write_config(
            tmp_path / "r.cfg",
            {
                "http": {"workers": workers},
                "storage": {
                    "driver": "s3", "bucket": "b", "accesskey": "a", "secretkey": "s",
                    "region": "us-east-1", "regionendpoint": f"http://127.0.0.1:{port}",
                },
            },
        )  # fmt: skip
        command = [
            sys.executable, "-c", RUN_TWISTD,
            "--pidfile", str(tmp_path / "x.pid"), "--logfile", str(tmp_path / "registry.log"),
            "registry", "--config", str(config), "--port", f"tcp:{free_port()}:interface=127.0.0.1",
        ]  # fmt: skip
        returncode, stderr = terminated_once_there(tmp_path, command)
        assert returncode == 1, stderr
        assert stderr.splitlines()[0] == "txregistry: stopped before it served (the log says why)"
        deadline = time.monotonic() + 30
        while daemons_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemons_of(tmp_path) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sigterm_as_soon_as_the_daemon_is_there_is_never_lost(
    tmp_path: Path, workers: str
) -> None:
    """
    SIGTERM as soon as the pid file names the daemon: before its reactor runs, twistd has no
    handler for it, and with workers the daemon then execs into a supervisor whose
    interpreter takes a while to install its own; either way the signal's default ended it
    without a word, and the caller waited for ever.  It is held until handled now.
    """
    command = daemon_command(tmp_path, free_port(), tmp_path / "data", workers)
    returncode, stderr = terminated_once_there(tmp_path, command)
    # Stopped before it served, or (the signal handled just after) once it served: either
    # way said, and the signal not lost (nothing left running).
    if returncode == 1:
        assert stderr.splitlines()[0] == (
            "txregistry: stopped before it served (the log says why)"
        ), stderr
    else:
        assert (returncode, stderr) == (0, "")
    deadline = time.monotonic() + 30
    while daemons_of(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemons_of(tmp_path) == []


HOLDING = """
import os, signal, sys, time
from registry.server import daemon_status

daemon_status.keep_terminal({"nodaemon": False})  # what twistd registry does before it forks
child = os.fork()
if child == 0:  # the daemon: a SIGTERM before its reactor runs is held, not its end
    os.kill(os.getpid(), signal.SIGTERM)
    assert daemon_status.held_signal() == signal.SIGTERM
    seen = []
    signal.signal(signal.SIGTERM, lambda *_: seen.append("handled"))  # the reactor's, later
    daemon_status.release_signals()
    time.sleep(0.1)
    os._exit(0 if seen == ["handled"] and daemon_status.held_signal() is None else 3)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
os.kill(os.getpid(), signal.SIGTERM)  # the command itself: ended by it, as always
time.sleep(5)
sys.exit(4)
"""


def test_a_signal_is_held_by_the_daemon_only() -> None:
    """Before twistd forks, the registry sets a handler the daemon inherits: there a SIGTERM
    waits until the reactor handles it.  The command itself is ended by it as before (it was
    blocked there too, and a SIGTERM before the fork was lost: the registry started anyway and
    the command exited 0)."""
    done = subprocess.run(
        [sys.executable, "-c", HOLDING],
        cwd=REPO_ROOT,
        env=child_env({"PYTHONPATH": str(REPO_ROOT)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stderr)
