"""
Listeners that are bound early and accept late.

Every endpoint is bound when the service starts (in ``privilegedStartService`` under twistd, so
ports below 1024 work with ``--uid``), and a bind failure is a `StartupError` naming the
endpoint and the cause.  The bound ports then stop accepting until `Listeners.open`: start-up
probes the storage first, and a request accepted before that could only fail.  Connections
that arrive meanwhile wait in the kernel's backlog, not refused.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorFDSet,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure

from registry.server.exhaustion import quiet_exhaustion
from registry.server.exit import StartupError, exit_after_reactor, exit_now


def bind_failure_reason(failure: Failure) -> str:
    """``address already in use`` rather than Twisted's exception text."""
    error = failure.value
    if isinstance(error, CannotListenError):
        error = error.socketError
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return " ".join(str(error).split()) or type(error).__name__


class Listeners:
    """The registry's listening ports: bind, open, stop listening."""

    def __init__(
        self,
        reactor: Any,
        endpoints: list[tuple[str, IStreamServerEndpoint]],
        factory: IProtocolFactory,
    ) -> None:
        self._reactor = reactor
        self._endpoints = endpoints
        self._factory = factory
        self.ports: list[IListeningPort] = []
        self._pending: list[Deferred[None]] = []
        self._errors: list[str] = []
        self._bound = False
        self._open = False

    @property
    def descriptions(self) -> list[str]:
        return [description for description, _ in self._endpoints]

    def addresses(self) -> list[str]:
        """What each port is bound to (``127.0.0.1:41234``): the real port where 0 was asked."""
        out = []
        for port in self.ports:
            host = port.getHost()
            if hasattr(host, "port"):
                out.append(f"{getattr(host, 'host', '')}:{host.port}")
            else:  # a UNIX socket: its path, which Twisted keeps as bytes
                name = getattr(host, "name", host)
                out.append(os.fsdecode(name) if isinstance(name, bytes) else str(name))
        return out

    def bind(self) -> None:
        """
        Bind every endpoint; raise `StartupError` for the first that fails at once.  Endpoints
        that bind asynchronously are awaited by `wait_bound`.
        """
        if self._bound:
            return
        self._bound = True
        for description, endpoint in self._endpoints:
            d = endpoint.listen(self._factory)
            done = d.addCallbacks(self._listening, self._refused, errbackArgs=(description,))
            if not done.called:
                self._pending.append(done)
        if self._errors:
            raise StartupError(self._errors[0])

    def bind_or_exit(self) -> None:
        """`bind` where a failure can only end the process (twistd's privileged start, before
        the reactor runs): one line naming the cause, exit status 1."""
        try:
            self.bind()
        except StartupError as exc:
            exit_now(str(exc))

    async def wait_bound(self) -> None:
        """Wait for endpoints still binding; raise `StartupError` if one failed."""
        for d in self._pending:
            await d
        self._pending = []
        if self._errors:
            raise StartupError(self._errors[0])

    def _listening(self, port: IListeningPort) -> None:
        self.ports.append(port)
        quiet_exhaustion(self._reactor, port)  # one line per episode, not three per connection
        if not self._open:
            self._pause(port)

    def _refused(self, failure: Failure, description: str) -> None:
        self._errors.append(f"cannot listen on {description}: {bind_failure_reason(failure)}")

    def _pause(self, port: IListeningPort) -> None:
        # A port that is a readable descriptor accepts when the reactor reads it; taking it out
        # of the reactor keeps it bound without accepting.
        if IReadDescriptor.providedBy(port) and IReactorFDSet.providedBy(self._reactor):
            self._reactor.removeReader(port)

    def open(self) -> None:
        """Start accepting connections."""
        self._open = True
        for port in self.ports:
            if IReadDescriptor.providedBy(port) and IReactorFDSet.providedBy(self._reactor):
                self._reactor.addReader(port)

    async def stop_listening(self) -> None:
        """Close every listening socket: new connections are refused from now on."""
        ports, self.ports = self.ports, []
        for port in ports:
            result = port.stopListening()
            if isinstance(result, Deferred):
                await result


class ListeningService(Service):
    """
    A side port (the ``[debug]`` listener): bound with the registry's own ports, so that a
    port it cannot have stops start-up with one line too, and accepting at once (metrics and
    health checks need no storage probe first).
    """

    def __init__(self, reactor: Any, listeners: Listeners) -> None:
        self._reactor = reactor
        self.listeners = listeners

    def privilegedStartService(self) -> None:
        self.listeners.bind_or_exit()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.listeners.bind()  # done already under twistd
        d = Deferred.fromCoroutine(self.listeners.wait_bound())
        d.addCallbacks(lambda _: self.listeners.open(), self._failed)

    def _failed(self, failure: Failure) -> None:
        exit_after_reactor(self._reactor, str(failure.value))

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self.listeners.stop_listening())
