"""
SIGHUP in a registry of one process (``[http] workers = 1``): the certificates and keys of
its ``ssl:`` listeners are read again and serve new connections; connections already open
keep theirs.  Material that cannot serve (a key that does not match its certificate, a file
that is missing) is one error line naming the option and file, and the material loaded
before goes on serving.  Nothing else is read again: other configuration changes need a
restart.  (With ``workers > 1`` the supervisor handles SIGHUP with a rolling restart,
`registry.server.supervisor`.)
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


def reloadable(endpoint: Any) -> Any | None:
    """The context factory of an ``ssl:`` endpoint (what `reload` reads again), or None."""
    options = getattr(endpoint, "options", None)
    return options if callable(getattr(options, "reload", None)) else None


class HupReloader(Service):
    """Installs the SIGHUP handler while running; ``endpoints``: (description, endpoint)."""

    def __init__(self, reactor: Any, endpoints: list[tuple[str, Any]]) -> None:
        self._reactor = reactor
        self._tls = [
            (description, factory)
            for description, endpoint in endpoints
            if (factory := reloadable(endpoint)) is not None
        ]
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()  # type: ignore[no-untyped-call]

    def _signalled(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Read every ``ssl:`` listener's files again; one log line per listener."""
        if not self._tls:
            log.info(
                "SIGHUP: nothing to reload (no ssl: listener); with [http] workers = 1 other "
                "configuration changes need a restart"
            )
            return
        from registry.http.tls import TLSMaterialError

        for description, factory in self._tls:
            try:
                factory.reload()
            except TLSMaterialError as exc:
                log.error(
                    "SIGHUP: kept the certificates loaded before for {description}: {cause}",
                    description=description,
                    cause=str(exc),
                )
            else:
                log.info(
                    "SIGHUP: new connections on {description} use the certificate and key "
                    "read again (other configuration changes need a restart with "
                    "[http] workers = 1)",
                    description=description,
                )
