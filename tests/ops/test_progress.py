"""Progress formatting and the once-a-second reporter, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from registry.ops.progress import (
    CountingDriver,
    ProgressReporter,
    format_bytes,
    format_count,
    format_seconds,
)
from registry.storage.driver import IStorageDriver
from registry.storage.memory import MemoryDriver


def test_formats() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"
    assert format_count(1234567) == "1,234,567"
    assert format_seconds(0.42) == "0.4 s"
    assert format_seconds(185) == "3m05s"
    assert format_seconds(7200) == "2h"
    assert format_seconds(5400) == "1h30m"
    assert format_seconds(168 * 3600) == "168h"
    assert format_seconds(3661) == "1h01m01s"


def test_reporter_writes_changes_once_per_interval() -> None:
    clock = Clock()
    state = {"n": 0}
    lines: list[str] = []
    reporter = ProgressReporter(clock, lambda: f"n={state['n']}", lines.append)
    reporter.start()
    assert lines == []  # nothing before the first interval
    state["n"] = 1
    clock.advance(0.5)
    assert lines == []
    clock.advance(0.5)
    assert lines == ["n=1"]
    clock.advance(1)
    assert lines == ["n=1"]  # unchanged: not repeated
    state["n"] = 5
    clock.advance(1)
    assert lines == ["n=1", "n=5"]
    reporter.stop()
    state["n"] = 6
    clock.advance(5)
    assert lines == ["n=1", "n=5"]


def test_counting_driver_provides_the_interface() -> None:
    assert verifyObject(IStorageDriver, CountingDriver(MemoryDriver()))
