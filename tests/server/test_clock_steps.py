"""
A registry whose system clock is set back keeps its timers' delays.  Twisted's reactor keeps
each timer as the wall-clock moment it is due: set back an hour, every pending timer fired an
hour late (idle connections, upstream timeouts, the cache's heartbeat and flushes).

The registry runs as a real process whose ``time.time`` reads an offset from a file (a
``sitecustomize`` module put first on its path): a step of the wall clock as NTP or an
operator makes one, without touching this machine's clock.  What is watched is the idle
connection timeout (``[http] timeout``): a timer scheduled before the step.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.harness import REPO_ROOT, RegistryProcess

# time.time() plus the seconds in the file next to this module (re-read at most every 50 ms
# of the monotonic clock, which stays as it is).
_SHIFT = """
import os, time
_real, _steady = time.time, time.monotonic
_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "offset")
_state = {"at": -1.0, "offset": 0.0}
def _shifted():
    now = _steady()
    if now - _state["at"] > 0.05:
        _state["at"] = now
        try:
            with open(_file) as f:
                _state["offset"] = float(f.read() or 0)
        except (OSError, ValueError):
            pass
    return _real() + _state["offset"]
time.time = _shifted
"""


def _shifted_registry(tmp_path: Path, timeout: str) -> tuple[RegistryProcess, Path]:
    """A registry (``[http] timeout``) started with its clock shifted by the seconds written
    to the returned file (0 at first)."""
    shift = tmp_path / "shift"
    shift.mkdir()
    (shift / "sitecustomize.py").write_text(_SHIFT)
    offset = shift / "offset"
    offset.write_text("0")
    server = RegistryProcess(
        tmp_path,
        {"http": {"timeout": timeout}, "storage": {"rootdirectory": str(tmp_path / "data")}},
        env={"PYTHONPATH": f"{shift}:{REPO_ROOT}"},
    )
    server.start()
    return server, offset


@pytest.mark.parametrize("step", [-3600, 3600])
@pytest_twisted.ensureDeferred
async def test_an_idle_connection_is_closed_on_time_after_a_clock_step(
    tmp_path: Path, step: int
) -> None:
    server, offset = _shifted_registry(tmp_path, "5s")
    try:
        port = int(server.url.rsplit(":", 1)[1])

        def after_the_step() -> tuple[bool, bool]:
            """(the connection made before the step closed in time, the one made right
            after it was still open a second later): the first's timer is moved, the
            second's, scheduled on the new clock, is not."""
            with socket.create_connection(("127.0.0.1", port), timeout=30) as before:
                time.sleep(0.5)  # connected, its idle timer running
                offset.write_text(str(step))
                time.sleep(0.1)  # the registry reads its file again within 50 ms
                with socket.create_connection(("127.0.0.1", port), timeout=1) as after:
                    try:
                        kept = after.recv(1) != b""
                    except TimeoutError:
                        kept = True
                before.settimeout(20)  # far past the 5 s timeout: the bound, not a measure
                try:
                    closed = before.recv(1) == b""
                except TimeoutError:
                    closed = False
            return closed, kept

        closed, kept = await deferToThread(after_the_step)
        assert closed, "the idle connection was not closed after the clock step"
        assert kept, "a connection made after the step was closed at once"
        said = "went back 3600s" if step < 0 else "jumped forward 3600s"
        for _ in range(200):  # 10 s at most
            if f"the system clock {said}" in server.log_text():
                break
            await deferToThread(time.sleep, 0.05)
        assert f"the system clock {said}" in server.log_text(), server.log_text()[-2000:]
    finally:
        server.stop()
    log = server.log_text()
    assert "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_a_clock_set_back_then_right_leaves_timers_on_time(tmp_path: Path) -> None:
    """Back an hour, then right again: the timers keep their delays through both steps.
    Moved back at the first step and left as they were at the second, every one of them was
    an hour overdue once the clock was right (every idle connection closed at once)."""
    server, offset = _shifted_registry(tmp_path, "8s")
    try:
        port = int(server.url.rsplit(":", 1)[1])

        def round_trip() -> tuple[bool, bool]:
            """(still open a moment after the clock is right, closed by its timeout)."""
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                time.sleep(0.5)
                offset.write_text("-3600")
                time.sleep(1.0)
                offset.write_text("0")
                sock.settimeout(1.5)  # the 8 s timeout is 5 s away: open meanwhile
                try:
                    open_after = sock.recv(1) != b""
                except TimeoutError:
                    open_after = True
                sock.settimeout(20)  # the bound, not a measure
                try:
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    closed = False
            return open_after, closed

        open_after, closed = await deferToThread(round_trip)
        assert open_after, "the idle connection was closed as soon as the clock was right"
        assert closed, "the idle connection was not closed by its timeout"
    finally:
        server.stop()
    log = server.log_text()
    assert "the system clock went back 3600s" in log, log[-2000:]
    assert "the system clock jumped forward 3600s" in log
    assert "Traceback" not in log
