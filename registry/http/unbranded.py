"""
Answers without twisted.web's ``Server: TwistedWeb/<version>`` header.

twisted.web sets it on every request as it starts processing it.  It names the framework and
its exact version, which security scanners report as a version disclosure, and no registry
client reads it (registry:2 sends no ``Server`` header either).  Every site the registry runs
(the registry's own port, the debug listener, a fleet's peer listener) uses this request class
or a subclass of it.
"""

from __future__ import annotations

from twisted.web import server


class UnbrandedRequest(server.Request):
    """A twisted.web request that never sends a ``Server`` header."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        named = name.decode("latin-1") if isinstance(name, bytes) else name
        if named.lower() == "server":
            return
        super().setHeader(name, value)  # type: ignore[no-untyped-call]
