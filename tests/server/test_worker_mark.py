"""`registry.server.log_file.WorkerMark`: the fields a worker's events carry for structured
observers (the text mark is checked on real workers' output in `tests.server.test_workers`)."""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, formatEventAsClassicLogText

from registry.server.log_file import WorkerMark


def test_a_worker_event_carries_its_worker_and_pid() -> None:
    seen: list[dict[str, Any]] = []
    mark = WorkerMark(seen.append, 3, 4242)
    event = {
        "log_format": "access {line}",
        "line": "method=GET",
        "log_namespace": "registry.http.request",
        "log_level": LogLevel.info,
        "log_time": 0.0,
    }
    mark(event)
    legacy = {"log_format": "{x}", "x": "y", "log_system": "-", "system": "-", "log_time": 0.0}
    mark(legacy)
    own = {**event, "worker": 3}  # an event naming the worker itself keeps its value
    mark(own)
    assert [(e["worker"], e["worker_pid"]) for e in seen] == [(3, 4242)] * 3
    assert seen[0]["log_system"] == "w3 registry.http.request#info"
    text = formatEventAsClassicLogText(seen[0]) or ""
    assert text.split(" ", 1)[1] == "[w3 registry.http.request#info] access method=GET\n"
    assert (seen[1]["log_system"], seen[1]["system"]) == ("w3 -", "w3 -")  # syslog reads this
    assert "worker" not in event and "log_system" not in event  # other observers' copy
