"""
New connections spread evenly over the workers.

The workers share each listening socket.  When a connection arrives, every worker waiting in
its reactor is woken and the first to call ``accept`` gets it; and Twisted's own port accepts
every connection waiting in the backlog in one go.  A burst of connections (docker pushing
layers in parallel, a CI job's clients, a load test opening its connections) therefore lands
on whichever worker happened to run first: 23 of 24 connections opened at once went to one of
two workers, and of 4 concurrent 1 GiB pushes 3 shared one core at a third of the speed of the
fourth while the other worker idled.

The remedy is a small board in memory shared by the supervisor and its workers (a ``memfd``
the supervisor creates and every worker maps), one slot per worker holding its number of open
connections and a heartbeat.  A worker accepts while every other live worker has fewer
connections than it by less than `slack` (one in eight, at least one): so no worker gets more
than `slack` ahead of another, and with few connections they take turns.  Past that it takes
its listening socket out of its reactor and leaves the waiting connection to the other worker,
whose reactor was woken for it too.  It looks again when one of its own connections closes,
and every `RECHECK` seconds while it holds back (the others' counts change without telling
it).  So a burst of connections ends up split evenly between the workers, and long transfers
do not pile up on one core; with thousands arriving at once, `slack` lets each worker take
them in batches rather than a couple per `RECHECK`.

Nothing here can stop a registry from accepting: a slot whose heartbeat is older than `STALE`
seconds (a worker stuck, or gone) is ignored, the supervisor clears the slot of a worker that
exits, and a worker that stops listening clears its own.  Two workers reading each other's
counts a moment apart can both hold back; the next recheck ends that.

Only public Twisted API: the listening socket is an ``IReadDescriptor`` of the reactor, and each
accepted socket is handed to ``IReactorSocket.adoptStreamConnection``.
"""

from __future__ import annotations

import mmap
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.server import exhaustion
from registry.server.board import SLOT, STALE

log = Logger()

# How often a worker renews its heartbeat (one older than `STALE` has its slot ignored).
HEARTBEAT = 0.5
# How often a worker that holds back looks at the others' counts again.
RECHECK = 0.005
# Most connections taken per wake-up, so that one burst cannot hold the reactor for long.
ACCEPTS_PER_READ = 64


def slack(connections: int) -> int:
    """How many more connections than another worker a worker may have: one in eight of its
    own, at least one."""
    return max(1, connections // 8)


def holds_back(mine: int, others: Iterable[int]) -> bool:
    """
    Whether a worker with ``mine`` open connections leaves the next one to the others (the
    live ones' counts): when one of them has fewer by `slack` or more.  Taking it would put
    this worker more than `slack` ahead; the one with the fewest never holds back, so some
    worker always accepts.
    """
    floor = mine - slack(mine)
    return any(connections <= floor for connections in others)


class AcceptBoard:
    """One worker's view of the board: writes its own slot, reads the others'."""

    def __init__(self, fd: int, workers: int, slot: int, reactor: Any) -> None:
        self._map = mmap.mmap(fd, workers * SLOT.size)
        os.close(fd)  # the mapping keeps the memory
        self._workers = workers
        self._slot = slot
        self._reactor = reactor
        self._connections = 0
        self._live = False
        self._ports: list[BalancedPort] = []
        self._heartbeat = LoopingCall(self._write)
        self._heartbeat.clock = reactor

    def connections_changed(self, connections: int) -> None:
        """Called by the connection tracker each time a connection opens or closes."""
        fewer = connections < self._connections
        self._connections = connections
        if self._live:
            self._write()
        if fewer:
            for port in self._ports:
                port.recheck()

    def may_accept(self) -> bool:
        """
        True unless `holds_back` says otherwise, given the counts of the live workers (a
        heartbeat younger than `STALE`).  With thousands of connections arriving at once,
        `slack` lets each worker take them in batches instead of one per `RECHECK`.
        """
        now = time.monotonic()
        others = []
        for slot in range(self._workers):
            if slot == self._slot:
                continue
            connections, heartbeat = SLOT.unpack_from(self._map, slot * SLOT.size)
            if now - heartbeat < STALE:
                others.append(connections)
        return not holds_back(self._connections, others)

    def join(self, port: BalancedPort) -> None:
        self._ports.append(port)
        if not self._live:
            self._live = True
            self._write()
            self._heartbeat.start(HEARTBEAT, now=False)

    def leave(self, port: BalancedPort) -> None:
        if port in self._ports:
            self._ports.remove(port)
        if not self._ports and self._live:
            self._live = False
            self._heartbeat.stop()
            SLOT.pack_into(self._map, self._slot * SLOT.size, 0, 0.0)

    def _write(self) -> None:
        SLOT.pack_into(self._map, self._slot * SLOT.size, self._connections, time.monotonic())


@implementer(IListeningPort, IReadDescriptor)
class BalancedPort:
    """A listening socket adopted from the supervisor that accepts in turn with the others."""

    def __init__(
        self,
        reactor: Any,
        fd: int,
        family: int,
        factory: IProtocolFactory,
        board: AcceptBoard,
    ) -> None:
        self._reactor = reactor
        self._socket = socket.socket(fileno=os.dup(fd))
        self._socket.setblocking(False)
        self._family = family
        self._factory = factory
        self._board = board
        self._listening = False
        self._holding = False
        self._recheck = LoopingCall(self.recheck)
        self._recheck.clock = reactor
        self._resume: Any = None

    # IListeningPort

    def startListening(self) -> None:
        """Ready to accept; the reactor reads us once `registry.server.listeners` opens."""
        self._factory.doStart()
        self._listening = True
        self._board.join(self)

    def stopListening(self) -> Deferred[None]:
        if self._listening:
            self._reactor.removeReader(self)
            self._listening = False
            self._stop_holding()
            if self._resume is not None and self._resume.active():
                self._resume.cancel()
            self._board.leave(self)
            self._socket.close()
            self._factory.doStop()
        return succeed(None)

    def getHost(self) -> address.IPv4Address | address.IPv6Address:
        host, port = self._socket.getsockname()[:2]
        if self._family == socket.AF_INET6:
            return address.IPv6Address("TCP", host, port)
        return address.IPv4Address("TCP", host, port)

    # IReadDescriptor

    def fileno(self) -> int:
        return self._socket.fileno() if self._listening else -1

    def logPrefix(self) -> str:
        return "BalancedPort"

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the descriptor (it failed): stop as on `stopListening`."""
        self.stopListening()

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_READ):
            if not self._listening:
                return
            if not self._board.may_accept():
                self._hold()
                return
            try:
                client, _peer = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in exhaustion.EXHAUSTED:
                    self._exhausted(exc.errno)
                    return
                continue  # the peer gave up before we took it (ECONNABORTED, EPERM, ...)
            try:
                self._reactor.adoptStreamConnection(client.fileno(), self._family, self._factory)
            except OSError as exc:
                # Adopting dups the socket: accept may have taken the last descriptor, and that
                # is the same exhaustion as accept's own EMFILE (one warning, then a pause).
                if exc.errno in exhaustion.EXHAUSTED:
                    self._exhausted(exc.errno)
                    return
                # The peer left between accept and adoption (getpeername: ENOTCONN).
                log.debug("connection dropped before it was served: {reason}", reason=exc)
            finally:
                client.close()  # the reactor holds its own copy

    # Holding back

    def recheck(self) -> None:
        """Accept again once no live worker has so many fewer connections (`holds_back`)."""
        if self._holding and self._listening and self._board.may_accept():
            self._stop_holding()
            self._reactor.addReader(self)

    def _hold(self) -> None:
        if self._holding:
            return
        self._holding = True
        self._reactor.removeReader(self)
        self._recheck.start(RECHECK, now=False)

    def _stop_holding(self) -> None:
        if self._holding:
            self._holding = False
            self._recheck.stop()

    def _exhausted(self, code: int) -> None:
        """Out of descriptors (or kernel memory): connections wait in the backlog a moment."""
        exhaustion.episodes.exhausted(exhaustion.reason_of(code))
        self._reactor.removeReader(self)
        self._resume = self._reactor.callLater(exhaustion.PAUSE, self._after_exhausted)

    def _after_exhausted(self) -> None:
        self._resume = None
        if self._listening and not self._holding:
            self._reactor.addReader(self)


def balanced_port_factory(
    board: AcceptBoard,
) -> Callable[[Any, int, int, IProtocolFactory], BalancedPort]:
    """How `registry.server.workers.AdoptedEndpoint` makes a port that uses ``board``."""

    def make(reactor: Any, fd: int, family: int, factory: IProtocolFactory) -> BalancedPort:
        port = BalancedPort(reactor, fd, family, factory, board)
        port.startListening()
        return port

    return make
