"""
A service that calls a function every few seconds while it runs: what Twisted's
``TimerService`` does, without ``twisted.application.internet``, which imports its
connection-retrying ``ClientService`` and with it ``automat`` (about 0.5 MiB resident in each
worker, for the periodic upload purge alone).  The pull-through cache and the fleet, which
use ``TimerService`` as well, import it where they are configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class PeriodicService(Service):
    """
    Calls ``function`` when started and every ``step`` seconds after; a call that returns a
    Deferred is waited for before the next is scheduled.  Stopping waits for a call in
    progress.  A call that fails is logged and ends the calls, as with ``TimerService``.
    """

    def __init__(self, clock: IReactorTime, step: float, function: Callable[[], Any]) -> None:
        self._clock = clock
        self._step = step
        self._function = function
        self._loop: LoopingCall | None = None
        self._finished: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self._function)
        self._loop.clock = self._clock
        self._finished = self._loop.start(self._step, now=True)
        self._finished.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        assert self._loop is not None
        self._loop.running = False  # so that stopService does not stop it again
        log.failure("periodic call failed", failure)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is None or self._finished is None:
            return None
        if self._loop.running:
            self._loop.stop()
        return self._finished
