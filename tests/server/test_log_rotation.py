"""
How ``--logfile`` rotates (`registry.server.log_rotation`): at ``[log] rotatesize``, keeping
``[log] rotatekeep`` rotated files per log file, in a single process, the supervisor and each
worker; SIGUSR1 to the supervisor rotates the workers' files too, and after logrotate moved
the files only opens new ones.  Real ``twistd`` processes, the files on disk looked at.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from pathlib import Path

import pytest

from registry.config import ConfigError, load
from registry.server.log_file import WholeLineLogFile
from tests.e2e.harness import LISTENING, twistd_command, write_config
from tests.server.proc import Child, child_env
from tests.server.test_log_full_disk import ACCESS, BURST, STAMP, burst, whole_lines

LOOPBACK = "tcp:0:interface=127.0.0.1"
ROTATE_SIZE = 4096


def start(tmp_path: Path, workers: int, log: dict[str, str]) -> tuple[Child, int]:
    """``twistd --logfile LOGS/registry.log registry`` with ``workers`` and these ``[log]``
    keys, once it listens: (the child, its port)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": str(workers)}, "log": log})
    command = twistd_command("--config", str(config), "--port", LOOPBACK, "--storage", "data")
    command.insert(command.index("registry"), f"--logfile={logs / 'registry.log'}")
    child = Child(command, tmp_path, env=child_env())
    content = child.wait_for_file(logs / "registry.log", "txregistry listening on")
    return child, int(LISTENING.search(content)["port"])  # type: ignore[index]


def stop(child: Child) -> None:
    child.process.send_signal(signal.SIGTERM)
    assert child.process.wait(timeout=60) == 0


def own_files(workers: int) -> list[str]:
    """The log files written to as the processes run (not rotated ones)."""
    if workers == 1:
        return ["registry.log"]
    return [f"registry.log.worker{n}" for n in range(workers)]


def wait_for(condition: str, check: object, limit: int = 400) -> None:
    """Poll ``check()`` (bounded: ``limit`` times 0.05 s) until it is true."""
    for _ in range(limit):
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {condition}")


@pytest.mark.parametrize("workers", [1, 2])
def test_rotated_files_are_bounded(tmp_path: Path, workers: int) -> None:
    """
    Each log file keeps ``rotatekeep`` rotated files, FILE.1 to FILE.KEEP, the oldest
    removed; twistd's default kept every one (thousands a day under load).  Files with
    higher numbers (left by an earlier version, or a larger ``rotatekeep``) are left alone:
    a rotation never looks past KEEP.
    """
    logs = tmp_path / "logs"
    child, port = start(tmp_path, workers, {"rotatesize": str(ROTATE_SIZE), "rotatekeep": "3"})
    try:
        for name in own_files(workers):
            (logs / f"{name}.50").write_text("left by an older history\n")
        for _ in range(30):  # some 30 KiB of access lines per process: several rotations each
            burst(port)
        stop(child)
    finally:
        child.stop()

    expected = {"registry.log"}
    for name in own_files(workers):
        expected |= {name, f"{name}.1", f"{name}.2", f"{name}.3", f"{name}.50"}
    assert set(os.listdir(logs)) == expected
    for name in own_files(workers):
        assert (logs / f"{name}.50").read_text() == "left by an older history\n"
        for number in (1, 2, 3):
            rotated = logs / f"{name}.{number}"
            lines = whole_lines(rotated)
            assert any(ACCESS in line for line in lines), rotated.name
            # Rotated once past the size: by the one event that crossed it at most.
            assert ROTATE_SIZE <= rotated.stat().st_size < ROTATE_SIZE + 2048, rotated.name


def access_lines(paths: list[Path]) -> int:
    return sum(1 for path in paths if path.exists() for line in whole_lines(path) if ACCESS in line)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_rotates_every_processs_file(tmp_path: Path, workers: int) -> None:
    """
    SIGUSR1 to the process twistd started (the supervisor, with workers) rotates its file and
    each worker's FILE.workerN: the supervisor used to rotate its own only, so a logrotate
    set up for FILE left the workers' files growing.
    """
    logs = tmp_path / "logs"
    names = ["registry.log", *own_files(workers)]
    child, port = start(tmp_path, workers, {"rotatesize": "0"})  # only on SIGUSR1
    try:
        burst(port)
        # Each request is logged once answered: wait for the burst's lines to be written.
        own = [logs / name for name in own_files(workers)]
        wait_for("the burst logged", lambda: access_lines(own) == BURST)
        before = {name: (logs / name).read_text() for name in names}
        child.process.send_signal(signal.SIGUSR1)
        for name, content in before.items():
            rotated = logs / f"{name}.1"
            wait_for(f"{rotated.name} made", rotated.exists)
            assert rotated.read_text() == content
        burst(port)  # logged to the new files
        stop(child)
    finally:
        child.stop()

    assert set(os.listdir(logs)) == {*names, *(f"{name}.1" for name in names)}
    assert access_lines([logs / f"{name}.1" for name in own_files(workers)]) == BURST
    assert access_lines([logs / name for name in own_files(workers)]) == BURST


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_after_logrotate_moved_the_files_opens_new_ones(
    tmp_path: Path, workers: int
) -> None:
    """
    logrotate renames FILE (its ``create`` puts a new, empty FILE in its place, ``nocreate``
    does not), then its ``postrotate`` sends SIGUSR1: each process opens FILE again and logs
    there, and rotates nothing itself (no FILE.1: logrotate numbered the old file).  twistd's
    own rotation found FILE gone and went on writing to the moved file.
    """
    logs = tmp_path / "logs"
    names = ["registry.log", *own_files(workers)]
    own = [logs / name for name in own_files(workers)]
    child, port = start(tmp_path, workers, {"rotatesize": "0"})
    try:
        burst(port)
        wait_for("the burst logged", lambda: access_lines(own) == BURST)
        for name in names:
            os.rename(logs / name, logs / f"{name}-moved")
            if not name.endswith("worker1"):  # logrotate's create; worker 1: nocreate
                (logs / name).write_bytes(b"")
        child.process.send_signal(signal.SIGUSR1)
        # Once a process logs to its new file, it handled the signal.
        for _ in range(50):
            if all(access_lines([path]) for path in own):
                break
            burst(port)
        else:
            raise AssertionError("the processes never logged to their new files")
        moved = {name: (logs / f"{name}-moved").read_text() for name in names}
        burst(port)
        stop(child)
    finally:
        child.stop()

    assert set(os.listdir(logs)) == {*names, *(f"{name}-moved" for name in names)}
    for name in names:  # nothing more went to the moved files
        assert (logs / f"{name}-moved").read_text() == moved[name], name
    if workers > 1:
        assert "every worker stopped" in (logs / "registry.log").read_text()


def test_a_rotation_that_fails_keeps_logging_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that refuses the rename: events go on to FILE, after one line naming the
    error, and the next attempt waits for another ``rotatesize`` bytes."""
    path = tmp_path / "registry.log"
    log_file = WholeLineLogFile.fromFullPath(str(path), rotateLength=1000, maxRotatedFiles=2)
    renames = []

    def refused(source: str, target: str) -> None:
        renames.append(source)
        if not os.path.exists(source):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    event = "x" * 99 + "\n"
    monkeypatch.setattr(os, "rename", refused)
    for _ in range(15):  # 1500 bytes: one attempt at 1000, none before 2000
        log_file.write(event)
    monkeypatch.undo()
    log_file.close()
    assert renames == [f"{path}.1", str(path)]  # one attempt: FILE.1 (absent), then FILE
    lines = path.read_text().splitlines()
    assert len(lines) == 16 and set(lines) - {event[:-1]} == {lines[10]}
    assert re.fullmatch(
        rf"{STAMP} \[registry\.server\.log_file#warn\] log file not rotated: "
        r"EACCES \(Permission denied\)",
        lines[10],
    )
    assert sorted(os.listdir(tmp_path)) == ["registry.log"]


@pytest.mark.parametrize("text", ["0", "1001", "-1", "ten"])
def test_rotatekeep_out_of_range_is_refused(tmp_path: Path, text: str) -> None:
    path = write_config(tmp_path / "r.cfg", {"log": {"rotatekeep": text}})
    with pytest.raises(ConfigError, match="rotatekeep"):
        load(str(path), environ={})
