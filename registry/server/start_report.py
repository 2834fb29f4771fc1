"""
The top service under twistd: where a daemon's start-up is reported to the command that
daemonized it (`registry.server.daemon_status` says why the registry does that, not twistd).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from twisted.application.service import IService, MultiService

from registry.server import daemon_status


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):  # (our one-line exits said theirs first)
        return f"start-up failed (exit status {exc.code})"
    return f"start-up failed: {type(exc).__name__}: {exc}"


def _stopped_before_serving() -> None:
    daemon_status.failed("stopped before it served (the log says why)")


class StartReported(MultiService):
    """``service``, taking twistd's status pipe over once twistd daemonized (it does so just
    before it starts the services), and reporting a start that raised on it."""

    def __init__(self, service: IService, twistd: MutableMapping[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._twistd = twistd
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        daemon_status.take_over(self._twistd)
        if daemon_status.pending():
            from twisted.internet import reactor

            # Stopped before it served (SIGTERM while the storage probe waited): said once the
            # services have stopped, for twistd then ends the process with that signal, and
            # no exit handler runs.
            reactor.addSystemEventTrigger("after", "shutdown", _stopped_before_serving)
        _reporting(super().privilegedStartService)

    def startService(self) -> None:
        _reporting(super().startService)


def _reporting(start: Callable[[], None]) -> None:
    """Run ``start``; a start that raises is reported on the status pipe, then raised."""
    try:
        start()
    except BaseException as exc:
        daemon_status.failed(_reason(exc))
        raise
