"""
``--logfile`` on a disk that fills up (a real tmpfs, a real ``twistd`` with one worker or
two): the registry goes on serving; its log keeps whole lines only, and says once how many
events it could not write.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from registry.server.log_file import WholeLineLogFile
from tests.e2e.harness import LISTENING, twistd_command, write_config
from tests.e2e.test_full_disk import fill, small_disk
from tests.server.proc import Child, child_env

__all__ = ["small_disk"]

LOOPBACK = "tcp:0:interface=127.0.0.1"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"
EVENT = re.compile(rf"{STAMP} \[")
DROPPED = re.compile(
    rf"^{STAMP} \[(?:w(?P<worker>\d) )?registry\.server\.log_file#warn\] log events dropped "
    rf"count=(?P<count>\d+) "
    rf"since={STAMP} error=ENOSPC \(No space left on device\)$"
)
ACCESS = "] access method=GET path=/v2/ status=200 "
BURST = 24  # connections at once: the workers take half each (see test_workers)


def burst(port: int) -> None:
    """``BURST`` connections opened together, then one ``GET /v2/`` answered on each."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(BURST)]
    try:
        for each in sockets:
            each.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
        for each in sockets:
            assert each.recv(65536).startswith(b"HTTP/1.1 200 "), "no answer"
    finally:
        for each in sockets:
            each.close()


def whole_lines(path: Path) -> list[str]:
    """``path``'s lines, each asserted to be one event's (or a continuation of it)."""
    lines = path.read_bytes().decode().splitlines()
    for number, line in enumerate(lines, start=1):
        assert EVENT.match(line) or line[:1].isspace(), f"{path.name}:{number}: {line!r}"
        assert not EVENT.search(line, 1), f"{path.name}:{number}: two events: {line!r}"
    return lines


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_leaves_whole_lines_and_a_count_of_what_was_dropped(
    tmp_path: Path, small_disk: Path, workers: int
) -> None:
    """
    A write the disk takes only part of used to leave that part in the file, the next event
    appended to it (``... access met2026-12-06T11:55:14+0000 [registry.ops.health#info]
    ...``), and no word of the events lost meanwhile.
    """
    log = small_disk / "registry.log"
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": str(workers)}})
    command = twistd_command("--config", str(config), "--port", LOOPBACK, "--storage", "data")
    command.insert(command.index("registry"), f"--logfile={log}")
    child = Child(command, tmp_path, env=child_env())
    try:
        content = child.wait_for_file(log, "txregistry listening on")
        port = int(LISTENING.search(content)["port"])  # type: ignore[index]
        burst(port)
        filler = fill(small_disk)
        for _ in range(10):  # some 20 KiB of access lines per worker: more than any block holds
            burst(port)
        filler.unlink()
        burst(port)  # served, logged: after the count of what was dropped
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(timeout=60) == 0
    finally:
        child.stop()

    files = [log] if workers == 1 else [log.with_name(f"{log.name}.worker{n}") for n in (0, 1)]
    whole_lines(log)  # the supervisor's, with workers
    written = dropped = after = 0
    for number, path in enumerate(files):
        lines = whole_lines(path)
        [(index, count, worker)] = [
            (index, int(match["count"]), match["worker"])
            for index, line in enumerate(lines)
            if (match := DROPPED.match(line))
        ]
        # A worker's line says whose it is, as every other line of its file does.
        assert worker == (None if workers == 1 else str(number)), lines[index]
        accessed = [number for number, line in enumerate(lines) if ACCESS in line]
        written += len(accessed)
        dropped += count
        after += sum(1 for number in accessed if number > index)
    assert dropped > 0 and written + dropped >= 12 * BURST  # every request accounted for
    assert after == BURST  # each request once there was room again


def test_a_part_written_that_cannot_be_taken_back_ends_before_the_next_event(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the part of an event the disk took cannot be cut off the file again, it stays,
    and the next event starts on a line of its own."""

    def refused(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    path = small_disk / "registry.log"
    log_file = WholeLineLogFile.fromFullPath(str(path))
    log_file.write("before\n")
    filler = fill(small_disk)
    monkeypatch.setattr(os, "ftruncate", refused)
    event = "x" * 200 + "\n"
    for _ in range(8192 // len(event)):  # more than the rest of the file's last page
        log_file.write(event)
    filler.unlink()
    log_file.write("after\n")
    log_file.close()
    lines = path.read_text().splitlines()
    first, *whole, fragment, dropped, last = lines
    assert first == "before"
    assert set(whole) <= {event[:-1]}  # those the file's last page still had room for
    assert 0 < len(fragment) < len(event) - 1 and set(fragment) == {"x"}
    match = re.match(rf"{STAMP} \[registry\.server\.log_file#warn\] log events dropped ", dropped)
    assert match, dropped
    assert last == "after"
