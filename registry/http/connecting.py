"""
Connection attempts whose cancellation is always reported as one.

Twisted's `HostnameEndpoint` turns a cancel that arrives while the host name is still being
resolved into a ``DNSLookupError`` ("Couldn't find the hostname"): to a caller that gave up
(a client that left, a time limit, `Deferred.cancel` on a client call) it looks like a name
that does not exist, and code that retries network failures sends the request again after
all.  `cancelled_as_cancelled` wraps an endpoint so that a cancelled attempt fails with
``ConnectingCancelledError`` at every stage, as it does once addresses are known.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import HostnameAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IStreamClientEndpoint)
class _CancelledAsCancelled:
    def __init__(self, endpoint: IStreamClientEndpoint, address: HostnameAddress) -> None:
        self._endpoint = endpoint
        self._address = address

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._endpoint.connect(protocolFactory)
        cancelled = False

        def cancel(_: Deferred[IProtocol]) -> None:
            nonlocal cancelled
            cancelled = True
            connecting.cancel()

        out: Deferred[IProtocol] = Deferred(cancel)

        def settle(result: IProtocol | Failure) -> None:
            if out.called:
                # Connected after the cancel was answered (an endpoint that cannot stop in
                # time): nobody will use this connection.
                if not isinstance(result, Failure):
                    transport: Any = getattr(result, "transport", None)
                    if transport is not None:
                        transport.abortConnection()
                return
            if isinstance(result, Failure):
                if cancelled and not result.check(ConnectingCancelledError):
                    result = Failure(ConnectingCancelledError(self._address))
                out.errback(result)
            else:
                out.callback(result)

        connecting.addBoth(settle)
        return out


def cancelled_as_cancelled(
    endpoint: IStreamClientEndpoint, host: bytes, port: int
) -> IStreamClientEndpoint:
    """``endpoint`` (to ``host:port``), its cancelled attempts failing with
    ``ConnectingCancelledError`` whatever stage they were cancelled at."""
    return _CancelledAsCancelled(endpoint, HostnameAddress(host, port))
