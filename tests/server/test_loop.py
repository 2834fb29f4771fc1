"""The supervisor's standard-library event loop (`registry.server.loop`)."""

from __future__ import annotations

import os
import signal

from registry.server.loop import Event, Loop, Task, Wait


def test_timers_run_in_order_and_cancelled_ones_do_not() -> None:
    loop = Loop()
    ran: list[str] = []
    loop.call_later(0.02, lambda: ran.append("second"))
    loop.call_later(0.0, lambda: ran.append("first"))
    loop.call_later(0.01, lambda: ran.append("never")).cancel()
    loop.call_later(0.03, loop.stop)
    loop.run()
    assert ran == ["first", "second"]


def test_a_task_resumes_when_its_event_fires_or_its_timeout_comes() -> None:
    loop = Loop()
    fired, never = Event(), Event()
    seen: list[object] = []

    def task() -> Task:
        seen.append((yield Wait(fired, 30)))
        seen.append(fired.value)
        seen.append((yield Wait(never, 0.01)))
        loop.stop()

    loop.run_task(task())
    loop.call_later(0.0, lambda: fired.fire("value"))
    loop.run()
    assert seen == [True, "value", False]


def test_a_failing_callback_is_reported_and_the_loop_goes_on() -> None:
    reports: list[str] = []
    loop = Loop(report=reports.append)

    def fail() -> None:
        raise RuntimeError("boom")

    loop.call_later(0.0, fail)
    loop.call_later(0.01, loop.stop)
    loop.run()
    assert len(reports) == 1 and "RuntimeError: boom" in reports[0]


def test_a_signal_runs_its_callback_in_the_loop() -> None:
    loop = Loop()
    got: list[int] = []
    previous = signal.getsignal(signal.SIGUSR2)
    # The test process's own wakeup descriptor (a running Twisted reactor's) is put back.
    previous_wakeup = signal.set_wakeup_fd(-1)
    try:
        loop.on_signal(signal.SIGUSR2, lambda signum: (got.append(signum), loop.stop()))
        loop.call_later(0.0, lambda: os.kill(os.getpid(), signal.SIGUSR2))
        loop.call_later(30, loop.stop)  # bound: fails below rather than hanging
        loop.run()
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.set_wakeup_fd(previous_wakeup)
    assert got == [signal.SIGUSR2]
