"""
Every core: ``[http] workers = N`` serving processes behind one set of listening sockets.

One Twisted reactor runs on one core.  With ``workers`` above 1, the process twistd starts
becomes a supervisor: it binds every listener itself (`registry.server.handoff`), then
replaces itself with a standard-library program (`registry.server.supervisor`) that starts
N worker processes (``twistd -n registry`` again, told by the ``TXREGISTRY_WORKER``
variable which worker they are and which inherited descriptors are their listeners).  Each
worker adopts the sockets (``reactor.adoptStreamPort``) and serves them with its own reactor;
each new connection goes to one of the workers waiting on it, the least loaded one
(`registry.server.balance`).

Why the supervisor binds and passes descriptors, rather than every worker binding its own
``SO_REUSEPORT`` socket:

- endpoint strings keep working unchanged (``tcp:``, ``tcp6:``, ``ssl:`` with its TLS
  options: a worker puts the same TLS layer in front of the adopted port), where SO_REUSEPORT
  needs every bind to agree on it and cannot wrap what Twisted's endpoints bind;
- a port that cannot be had fails once, in the supervisor, before any worker starts, with the
  same one line (`registry.server.listeners`) as a single process;
- ports below 1024 are bound before twistd drops privileges (``--uid``), and workers started
  later need none;
- a worker that dies loses nothing: the socket stays bound in the supervisor, connections wait
  in the backlog, its replacement adopts the same socket.  With SO_REUSEPORT the kernel keeps
  hashing new connections to a dead worker's socket until it is gone, and a port 0 would be a
  different port for each worker.

The price: one accept queue shared by every worker, from which whichever worker runs first
takes every waiting connection, unless the workers take turns (`registry.server.balance`).
SO_REUSEPORT spreads connections by a hash of their addresses instead, blind to how loaded
each worker is, so a burst can land unevenly there too.

`resolve` decides how many workers a configuration gets: one per core by default; one where
workers would not share state (the ``inmemory`` driver; a ``[proxy:NAME]`` cache, whose fills,
leases and fleet peer listener belong to one process: a fleet of instances scales it) or where
a worker stopping would break the others (a ``unix:`` listener, whose file Twisted removes when
a port stops listening), refusing an explicit number above 1 there with one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.config import Config, ConfigError
from registry.http.tls import connection_factory
from registry.server.control import Channel, ChannelClosed
from registry.server.worker_env import (
    CONTROL_IN,
    CONTROL_OUT,
    WORKER_ENVIRONMENT,
)

log = Logger()

# The worker's end of its control pipe (it reads the supervisor on CONTROL_IN, writes on
# CONTROL_OUT), and listening sockets from FIRST_LISTENER_FD on: the supervisor's numbers.
ENVIRONMENT = WORKER_ENVIRONMENT
# How long a question over the control pipe may wait (a scrape, a readiness check).
ASK_TIMEOUT = 5.0


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# More workers than this per core add no throughput (each worker's reactor runs on one core),
# only memory and processes: a larger number is a typo, refused before anything is started.
WORKERS_PER_CORE = 4


def resolve(config: Config) -> int:
    """
    How many worker processes ``config`` runs; `ConfigError` for an explicit number that
    would be wrong (state the workers cannot share).
    """
    wanted = config.http.workers
    most = WORKERS_PER_CORE * cores()
    if wanted > most:
        raise ConfigError(
            f"[http] workers = {wanted}: at most {most} here ({WORKERS_PER_CORE} per core: "
            "a worker is one reactor on one core, more only cost memory)"
        )
    reasons = single_process_reasons(config)
    if reasons:
        if wanted > 1:
            raise ConfigError(
                f"[http] workers = {wanted}: only 1 worker can serve this configuration: "
                + "; ".join(reasons)
            )
        return 1
    return wanted or cores()


def single_process_reasons(config: Config) -> list[str]:
    """Why ``config`` can run in one process only (none: in any number of workers)."""
    reasons = []
    if config.storage.driver == "inmemory":
        reasons.append("the inmemory driver keeps everything in one process's memory")
    if any(section.startswith("proxy:") for section in config.extra):
        # A cache instance's fills, fill leases and fleet peer listener ([fleet] listen) belong
        # to one process; more cores for a cache come from more instances sharing [redis].
        reasons.append(
            "a pull-through cache ([proxy:NAME]) runs one process per instance; for more "
            "cores run several instances as a fleet with [redis] (docs/proxy.md)"
        )
    listeners = [*config.http.port, config.debug.addr]
    if any(description.strip().startswith("unix:") for description in listeners):
        # Twisted removes a UNIX socket's file when a port on it stops listening, which a
        # worker's port does at each restart: the socket would vanish under the others.
        reasons.append("a unix: listener's socket file would be removed by a worker stopping")
    return reasons


def failures_per_worker(max_failures: int, workers: int) -> int:
    """
    ``[auth] max_failures`` for one worker: each worker counts the failed logins it sees, so
    each gets its share (rounded up) and an address is refused after at most about
    ``max_failures`` failures in total, wherever they land.
    """
    if max_failures <= 0 or workers <= 1:
        return max_failures
    return max(1, math.ceil(max_failures / workers))


@attrs.frozen
class Inherited:
    """A listening socket the supervisor bound, as a worker inherits it."""

    description: str
    fd: int
    family: int


@attrs.frozen
class WorkerSpec:
    """What the supervisor tells a worker (in the ``TXREGISTRY_WORKER`` variable)."""

    worker: int
    workers: int
    listeners: tuple[Inherited, ...]
    debug: Inherited | None = None
    supervisor: int = 0  # its pid
    # The descriptor of the board the workers share to take turns accepting
    # (`registry.server.balance`); -1 when there is none (one worker, or no memfd).
    board: int = -1
    # Started by a rolling restart (SIGHUP): an ssl: listener's expired certificate stops it
    # rather than replace the one the worker before it served.
    refuse_expired: bool = False
    # Not a worker: a SIGHUP's check of the configuration (`registry.server.supervisor`),
    # which stops once the service is built, before serving, and exits 0 if it could be.
    check: bool = False
    # A check whose supervisor listens on the configuration's ``[http] port`` (not on
    # ``--port``): the file's value is validated as start-up validates it, and compared.
    check_ports: bool = False

    def to_environ(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSpec | None:
        text = environ.get(ENVIRONMENT)
        if not text:
            return None
        data = json.loads(text)
        debug = data.get("debug")
        return cls(
            worker=int(data["worker"]),
            workers=int(data["workers"]),
            listeners=tuple(Inherited(**item) for item in data["listeners"]),
            debug=Inherited(**debug) if debug else None,
            supervisor=int(data.get("supervisor", 0)),
            board=int(data.get("board", -1)),
            refuse_expired=bool(data.get("refuse_expired", False)),
            check=bool(data.get("check", False)),
            check_ports=bool(data.get("check_ports", False)),
        )


PR_SET_PDEATHSIG = 1


def die_with_supervisor(spec: WorkerSpec) -> None:
    """
    Make the kernel kill this worker when its supervisor dies (Linux): a supervisor killed by
    SIGKILL then takes its workers, and their copies of the listening sockets, with it at
    once, as a single process would, so the port is free for the next start.  Elsewhere the
    control pipe's end stops the worker (`WorkerLink.supervisor_gone`), a moment later.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if spec.supervisor and os.getppid() != spec.supervisor:
        os._exit(0)  # it died before the line above: nothing left to serve for


def leave_interrupts_to_supervisor() -> None:
    """
    Ignore SIGINT in a worker, before the reactor runs (Twisted then installs no handler of
    its own for it).  Ctrl-C in a terminal sends SIGINT to the whole process group, workers
    included: the supervisor, which gets it too, drains them (SIGTERM), and at a second one
    tells them to cut their connections.  A worker acting on its own SIGINT as well would
    stop its reactor a second time (a traceback) and exit killed by the signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@implementer(IStreamServerEndpoint)
@attrs.define
class AdoptedEndpoint:
    """
    A socket the supervisor bound, served as ``endpoint`` (its TLS layer, if any) would
    serve its own: what ``listen`` gives is an ordinary listening port of this reactor.
    """

    reactor: Any
    inherited: Inherited
    endpoint: IStreamServerEndpoint
    # Makes the port (reactor, descriptor, family, factory) where the workers take turns
    # accepting (`registry.server.balance`); None: Twisted's own port.
    make_port: Callable[[Any, int, int, IProtocolFactory], Any] | None = None

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        factory = connection_factory(self.endpoint, protocolFactory)
        fd, family = self.inherited.fd, self.inherited.family
        if self.make_port is not None:
            port = self.make_port(self.reactor, fd, family, factory)
        else:
            port = self.reactor.adoptStreamPort(fd, family, factory)
        os.close(self.inherited.fd)  # the port listens on its own duplicate
        return succeed(port)


def family_of(fd: int) -> int:
    """The address family of the socket at ``fd`` (without taking it over)."""
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return int(probe.family)
    finally:
        probe.close()


class _ControlProtocol(Protocol):
    def __init__(self, link: WorkerLink) -> None:
        self._link = link

    def dataReceived(self, data: bytes) -> None:
        self._link.channel.data_received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._link.supervisor_gone()


class WorkerLink(Service):
    """
    A worker's side of its control pipe: answers the supervisor's questions (its own
    metrics), asks it about the tree (every worker's metrics, how many are ready), and stops
    this worker when the supervisor is gone (its pipe closes when it exits, even by SIGKILL).
    """

    def __init__(self, reactor: Any, spec: WorkerSpec) -> None:
        self._reactor = reactor
        self.spec = spec
        self.local_metrics: Any = None  # async () -> bytes, set by the worker's wiring
        # () -> None, set by the worker's wiring: stop at once, cutting every connection.
        self.cut: Callable[[], None] | None = None
        self.channel = Channel(self._write, {"metrics": self._metrics, "cut": self._cut}, reactor)
        self._stdio: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        from twisted.internet import stdio

        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor's business
        # POSIX's StandardIO takes the descriptors (mypy reads the Windows one's signature).
        self._stdio = stdio.StandardIO(  # type: ignore[call-arg]
            _ControlProtocol(self), stdin=CONTROL_IN, stdout=CONTROL_OUT, reactor=self._reactor
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._last_counts())

    async def _last_counts(self) -> None:
        """
        Hand this worker's counts to the supervisor as it stops (after its drain: the root's
        parts stop once the connections are done), so that a rolling restart does not drop
        what it counted since the last scrape from the registry's totals.  A supervisor that
        does not take them within `ASK_TIMEOUT` (gone, stuck) does not hold the stop.
        """
        if self.local_metrics is None or self.channel.closed:
            return
        try:
            text: bytes = await self.local_metrics()
            await self.channel.request(
                "final_metrics",
                ASK_TIMEOUT,
                worker=self.spec.worker,
                pid=os.getpid(),
                text=text.decode(),
            )
        except Exception as exc:  # (best effort: the counts of a crash are lost too)
            log.debug(
                "worker {worker}: last counts not handed over: {error!r}",
                worker=self.spec.worker,
                error=exc,
            )

    def _write(self, data: bytes) -> None:
        if self._stdio is not None:
            self._stdio.write(data)

    def _cut(self, message: dict[str, Any]) -> None:
        """The supervisor stops at once (a second SIGINT, SIGQUIT): no drain."""
        if self.cut is not None:
            self.cut()

    async def _metrics(self, message: dict[str, Any]) -> dict[str, Any]:
        text: bytes = await self.local_metrics()
        return {"worker": self.spec.worker, "pid": os.getpid(), "text": text.decode()}

    def ready(self) -> None:
        """Tell the supervisor that this worker accepts connections."""
        self.channel.send("ready", worker=self.spec.worker, pid=os.getpid())

    async def tree_metrics(self) -> bytes:
        """Every worker's metrics, merged by the supervisor; `SupervisorUnavailable` when it
        does not answer."""
        try:
            text: str = await self.channel.request("tree_metrics", ASK_TIMEOUT)
        except ChannelClosed:
            raise SupervisorUnavailable("the supervisor is gone") from None
        except CancelledError:
            raise SupervisorUnavailable(
                f"the supervisor gave no answer within {ASK_TIMEOUT:g}s"
            ) from None
        return text.encode()

    async def tree_ready(self) -> TreeReady:
        """How many workers serve, and why each other one does not, as the supervisor sees
        them; whether the whole instance stops."""
        answer: dict[str, Any] = await self.channel.request("tree_ready", ASK_TIMEOUT)
        return TreeReady(
            ready=int(answer["ready"]),
            total=int(answer["workers"]),
            stuck=tuple(answer.get("stuck", ())),
            stopping=bool(answer.get("stopping", False)),
        )

    async def instance_stopping(self) -> bool:
        """
        Whether the whole instance stops (the supervisor was sent SIGTERM), asked as this
        worker drains: otherwise only this worker is being replaced (a rolling restart, or
        it alone was sent SIGTERM) while the others serve.  A supervisor that does not answer
        counts as stopping.
        """
        try:
            return (await self.tree_ready()).stopping
        except Exception:
            return True

    def supervisor_gone(self) -> None:
        self.channel.lost()
        if self.running and self._reactor.running:
            log.warn("worker {worker}: the supervisor is gone; stopping", worker=self.spec.worker)
            with contextlib.suppress(ReactorNotRunning):  # stopping already
                self._reactor.stop()


@attrs.frozen
class TreeReady:
    """The supervisor's answer to a readiness question."""

    ready: int  # workers serving: started, accepting, renewing their heartbeat on the board
    total: int  # workers configured
    stuck: tuple[str, ...]  # why each other worker does not serve, one phrase each
    stopping: bool  # the supervisor was told to stop: every worker drains


class SupervisorUnavailable(Exception):
    """The supervisor did not answer a worker's question (stopped, stuck, or gone)."""


def workers_probe(link: WorkerLink) -> Any:
    """
    Readiness of the tree.  Degraded while some workers do not serve (one being replaced
    after a crash or in a rolling restart, one stuck): the others take every connection,
    and taking the instance out of a load balancer for it would stop them too.  Failing when
    none serves, or when the instance stops (the load balancer must drain it).
    """
    from registry.ops.health import CheckFailed, Degraded

    async def probe() -> None:
        try:
            tree = await link.tree_ready()
        except CancelledError:
            # The health check's time limit: say whose answer it waited for.
            raise CancelledError("waiting for the supervisor's answer") from None
        if tree.stopping:
            raise CheckFailed("; ".join(["the instance is stopping", *tree.stuck]))
        if tree.ready < tree.total:
            text = "; ".join([f"{tree.ready} of {tree.total} workers serving", *tree.stuck])
            raise CheckFailed(text) if tree.ready == 0 else Degraded(text)

    return probe
