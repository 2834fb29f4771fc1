"""
The connection pool for S3, with sockets tuned for bulk transfers.

Twisted's TCP transports read 64 KiB per reactor turn and send at most 128 KiB per turn.  Moving
a 1 GiB blob in such steps costs 8-16 reactor turns per MiB (and, on downloads, a pause and a
resume of the S3 socket per 64 KiB read, which py-spy showed as a fifth of the reactor's time
during a pull).  S3 connections therefore read and send up to ``IO_SIZE`` at a time, which
takes a transfer through far fewer reactor turns, and less CPU.  Memory stays bounded: a
transport pauses its producer once ``bufferSize`` bytes wait, so each connection buffers about
``IO_SIZE`` in either direction.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

IO_SIZE = 1024 * 1024


def tune_transport(transport: Any, size: int = IO_SIZE) -> None:
    """Read and send up to ``size`` bytes per reactor turn on the TCP socket below any TLS."""
    while (
        transport is not None
        and hasattr(transport, "transport")
        and not hasattr(transport, "socket")
    ):
        transport = transport.transport
    if transport is not None and hasattr(transport, "socket"):
        transport.bufferSize = size
        transport.SEND_LIMIT = size


class _TunedProtocol(HTTP11ClientProtocol):
    def connectionMade(self) -> None:
        super().connectionMade()
        tune_transport(self.transport)


class _TunedFactory(_HTTP11ClientFactory):
    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        return _TunedProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]


class S3ConnectionPool(HTTPConnectionPool):
    """Persistent connections whose sockets move ``IO_SIZE`` per reactor turn."""

    _factory = _TunedFactory

    def __init__(self, reactor: Any, persistent: bool = True) -> None:
        super().__init__(reactor, persistent)  # type: ignore[no-untyped-call]
