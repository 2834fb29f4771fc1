"""
The supervisor's event loop, on the standard library alone (`selectors`, `signal`, `heapq`).

The supervisor of ``[http] workers`` waits for a handful of things: its workers' control
pipes, their exits, signals and a few timers.  A Twisted reactor (or asyncio) does that too,
but costs a process 20-25 MiB resident for modules it never uses there; this loop costs
none.  It is not a general framework: one thread, no sockets of its own, callbacks run in
the loop's thread.

Signals: a handler only records the signal; `signal.set_wakeup_fd` wakes ``select`` and the
callback runs in the loop, between other callbacks, as Twisted's ``callFromThread`` would.

Flows that wait (start-up, a rolling restart, a drain) are generators run by `Loop.run_task`:
a flow yields a `Wait` (an `Event` and an optional timeout) and is resumed with True when the
event fired, False when the timeout came first.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable, Generator
from typing import Any


class Timer:
    """A call scheduled by `Loop.call_later`; `cancel` it before it runs to drop it."""

    __slots__ = ("cancelled", "function", "when")

    def __init__(self, when: float, function: Callable[[], None]) -> None:
        self.when = when
        self.function = function
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Event:
    """Something that happens once (a worker serving, a worker ending), with a value."""

    def __init__(self) -> None:
        self.fired = False
        self.value: Any = None
        self._waiting: list[Callable[[], None]] = []

    def fire(self, value: Any = None) -> None:
        if self.fired:
            return
        self.fired, self.value = True, value
        waiting, self._waiting = self._waiting, []
        for callback in waiting:
            callback()

    def when_fired(self, callback: Callable[[], None]) -> None:
        if self.fired:
            callback()
        else:
            self._waiting.append(callback)


class Wait:
    """What a task yields: resume me when ``event`` fires, or after ``timeout`` seconds."""

    __slots__ = ("event", "timeout")

    def __init__(self, event: Event, timeout: float | None = None) -> None:
        self.event = event
        self.timeout = timeout


Task = Generator[Wait, bool, None]


class Loop:
    """Readers, timers and signals in one thread until `stop`."""

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        # A callback that raises is reported (its traceback) and the loop goes on, as a
        # Twisted reactor does: one bad message must not take the supervisor and, with it,
        # every worker down.
        self._report = report
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._signals: dict[int, Callable[[int], None]] = {}
        self._pending: list[int] = []
        self._running = False
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        self._wake_read, self._wake_write = wake_read, wake_write
        self._selector.register(wake_read, selectors.EVENT_READ, self._drain_wakeup)

    def seconds(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, function: Callable[[], None]) -> Timer:
        timer = Timer(self.seconds() + max(0.0, delay), function)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def add_reader(self, fd: int, function: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, function)

    def add_writer(self, fd: int, function: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_WRITE, function)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (a reader or a writer)."""
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def on_signal(self, signum: int, function: Callable[[int], None]) -> None:
        """Run ``function(signum)`` in the loop whenever the signal arrives."""
        self._signals[signum] = function
        signal.signal(signum, self._record)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    def _record(self, signum: int, frame: Any) -> None:
        self._pending.append(signum)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def run_task(self, task: Task) -> None:
        """Run a generator flow until its first `Wait`; it goes on as described above."""
        self._resume(task, None)

    def _call(self, function: Callable[..., None], *arguments: Any) -> None:
        try:
            function(*arguments)
        except Exception:
            import traceback

            if self._report is None:
                raise
            self._report(traceback.format_exc())

    def _resume(self, task: Task, value: bool | None) -> None:
        try:
            wait = task.send(value) if value is not None else next(task)
        except StopIteration:
            return
        except Exception:
            import traceback

            if self._report is None:
                raise
            self._report(traceback.format_exc())
            return
        done = [False]
        timer: Timer | None = None

        def go_on(result: bool) -> None:
            if done[0]:
                return
            done[0] = True
            if timer is not None:
                timer.cancel()
            self._resume(task, result)

        if wait.timeout is not None:
            timer = self.call_later(wait.timeout, lambda: go_on(False))
        wait.event.when_fired(lambda: go_on(True))

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self._run_signals()
            if not self._running:
                break
            timeout = None
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - self.seconds())
            for key, _ in self._selector.select(timeout):
                self._call(key.data)
            self._run_timers()

    def _run_signals(self) -> None:
        while self._pending:
            signum = self._pending.pop(0)
            function = self._signals.get(signum)
            if function is not None:
                self._call(function, signum)

    def _run_timers(self) -> None:
        now = self.seconds()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                self._call(timer.function)
