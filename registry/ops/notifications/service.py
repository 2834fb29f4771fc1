"""
The notification service: reads the endpoints' queues back at start, delivers, writes the
queues every ``flush_interval``, and writes them a last time on stop.

It owns a one-thread pool for the queue files, so that the last write at shutdown does not
depend on the order in which other services stop their pools, and the locks of its queue files
(`registry.ops.notifications.lock`), released once that last write is done.

A clean stop lets the POSTs in flight finish (`Endpoint.stop`) before that write, so that the
next start does not send their events again; it waits no longer than the drain's deadline
(``[http] draintimeout`` from the stop, brought forward to the moment of a cut), so that a
slow endpoint does not hold the stop past what the supervisor or the service manager allows.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable
from typing import Any

from treq.client import HTTPClient
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.client import HTTPConnectionPool

from registry.config import Config, ConfigError
from registry.http.bounded_agent import bounded_agent
from registry.http.twisted_internals import quiet_pool
from registry.ops.notifications.config import (
    leftover_queue_directory,
    parse_endpoints,
    queue_directory,
)
from registry.ops.notifications.delivery import Endpoint
from registry.ops.notifications.events import Notifier
from registry.ops.notifications.lock import QueueInUse, QueueLock
from registry.ops.notifications.queue import DurableQueue, read_log
from registry.server.exit import StartupError

log = Logger()

# How often a stop waiting for POSTs in flight looks at the drain's deadline (a cut brings it
# forward while it waits).
DEADLINE_CHECK = 0.1


def source_record(config: Config) -> dict[str, str]:
    """registry:2's ``source``: this host and port, and an id that changes at each start."""
    host = socket.gethostname()
    port = re.match(r"(?:tcp6?|ssl):(\d+)", config.http.port[0]) if config.http.port else None
    return {
        "addr": f"{host}:{port.group(1)}" if port else host,
        "instanceID": str(uuid.uuid4()),
    }


class NotificationService(Service):
    """Starts and stops every endpoint of a `Notifier`, and writes their queues."""

    def __init__(
        self,
        notifier: Notifier,
        reactor: Any,
        pool: ThreadPool,
        flush_interval: float,
        connections: HTTPConnectionPool | None = None,
        locks: list[QueueLock] | None = None,
        time_left: Callable[[], float | None] | None = None,
    ) -> None:
        """``time_left``: the seconds left before the stop's drain deadline, None before a
        stop (`ConnectionTracker.time_left`); without it, the wait for a POST in flight at
        stop is bounded by its endpoint's ``timeout`` only."""
        self.notifier = notifier
        self._reactor = reactor
        self._pool = pool
        self._flush_interval = flush_interval
        self._flusher: LoopingCall | None = None
        self._starting: Deferred[None] | None = None
        self._connections = connections
        self._locks = locks or []
        self._time_left = time_left

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for lock in self._locks:
            lock.claim()  # twistd may have forked into the background since they were taken
        self._pool.start()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(lambda f: log.failure("notifications: start failed", f))

    async def _start(self) -> None:
        for endpoint in self.notifier.endpoints:
            try:
                await endpoint.queue.load()
            except OSError as exc:
                # An unreadable log is left as it is (never overwritten) for someone to look
                # at; this endpoint delivers nothing until then, the others go on.
                log.error(
                    "notifications: cannot read {path}: {reason}; {endpoint} stays stopped",
                    path=endpoint.queue.path,
                    reason=exc.strerror or str(exc),
                    endpoint=endpoint.name,
                )
                continue
            endpoint.start()
        self._flusher = LoopingCall(self._flush_tick)
        self._flusher.clock = self._reactor
        self._flusher.start(self._flush_interval, now=True)

    def _flush_tick(self) -> None:
        for endpoint in self.notifier.endpoints:
            if not endpoint.queue.flushing:
                Deferred.fromCoroutine(endpoint.queue.flush())

    def stopService(self) -> Deferred[Any] | None:
        if not self.running:
            return None  # stopped already: the pool is gone
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            await self._starting
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        await self._stop_endpoints()
        await DeferredList(
            [Deferred.fromCoroutine(e.queue.flush(compact=True)) for e in self.notifier.endpoints]
        )
        self._pool.stop()
        for lock in self._locks:
            lock.release()
        if self._connections is not None:
            await self._connections.closeCachedConnections()

    async def _stop_endpoints(self) -> None:
        """Stop every endpoint, each POST in flight let finish (`Endpoint.stop`) until the
        drain's deadline, when those still running are abandoned."""
        endpoints = self.notifier.endpoints
        stopping = DeferredList([Deferred.fromCoroutine(e.stop()) for e in endpoints])
        if self._time_left is None:
            await stopping
            return
        watch = LoopingCall(self._abandon_past_deadline)
        watch.clock = self._reactor
        watch.start(DEADLINE_CHECK, now=True)
        try:
            await stopping
        finally:
            watch.stop()

    def _abandon_past_deadline(self) -> None:
        assert self._time_left is not None
        left = self._time_left()
        if left is not None and left <= 0:
            for endpoint in self.notifier.endpoints:
                endpoint.abandon()


def queue_file(directory: str, endpoint: str, worker: int = 0) -> str:
    """
    The queue log of ``endpoint`` written by ``worker`` (``[http] workers``): each worker
    appends to and delivers from its own file, since two processes appending to one log
    would interleave and compact it under each other.  Worker 0 (and a single process)
    keeps the plain ``NAME.log``.
    """
    name = f"{endpoint}.log" if worker == 0 else f"{endpoint}.worker{worker}.log"
    return os.path.join(directory, name)


def orphan_queue_files(
    directory: str, endpoint: str, workers: int, others: frozenset[str] = frozenset()
) -> list[str]:
    """
    The queue logs of ``endpoint`` (`queue_file`) whose worker number is ``workers`` or
    more: written before ``[http] workers`` went down (or ``auto`` met fewer cores), no
    process reads them any more, so worker 0 adopts their events.  Worker number order, so
    each worker's events stay in order.  A file that is the plain log of another endpoint in
    ``others`` (an endpoint named ``ci.worker3``) is not one of them.
    """
    pattern = re.compile(re.escape(endpoint) + r"\.worker([1-9][0-9]*)\.log")
    try:
        names = os.listdir(directory)
    except OSError:
        return []  # the queues' own load says what is wrong with the folder
    found = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or name in others:
            continue
        number = int(match.group(1))
        if number >= workers:
            found.append((number, os.path.join(directory, name)))
    return [path for _, path in sorted(found)]


def foreign_queue_files(directory: str, endpoints: list[str]) -> list[tuple[str, int]]:
    """The queue logs in ``directory`` that belong to none of ``endpoints`` (a section that
    was renamed, removed or disabled) and still hold events, with how many: nothing delivers
    them.  (Read at start-up, before the reactor runs.)"""
    known = [re.compile(re.escape(name) + r"(\.worker[1-9][0-9]*)?\.log") for name in endpoints]
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        if not name.endswith(".log") or any(p.fullmatch(name) for p in known):
            continue
        try:
            waiting = len(read_log(os.path.join(directory, name)).pending)
        except OSError:
            continue
        if waiting:
            found.append((name, waiting))
    return found


def _warn_foreign(directory: str, endpoints: list[str]) -> None:
    foreign = foreign_queue_files(directory, endpoints)
    if foreign:
        log.warn(
            "notifications: {files} in {directory} belong to no configured endpoint (a"
            " section renamed, removed or disabled): their events are not delivered",
            files=", ".join(
                f"{name} ({count} event{'' if count == 1 else 's'})" for name, count in foreign
            ),
            directory=directory,
        )


def warn_leftover_queues(config: Config) -> None:
    """With no endpoint configured: name the queues still holding events (the endpoints'
    sections were all removed or disabled)."""
    directory = leftover_queue_directory(config)
    if directory is not None:
        _warn_foreign(directory, [])


def _probe_write(directory: str) -> None:
    """Create and remove a file in ``directory``: the queues must be writable from the start
    (at start-up, before the reactor runs, so blocking here blocks no request)."""
    probe = os.path.join(directory, f".probe-{os.getpid()}")
    with open(probe, "wb"):
        pass
    os.remove(probe)


def _queue_key(config: Config) -> str:
    """The key that names the queue folder, for a start-up error."""
    if config.notifications.queuedir:
        return "[notifications] queuedir"
    return "[storage] rootdirectory (where the notification queues are kept)"


def _lock(queue: str, config: Config) -> QueueLock:
    """`QueueLock.take`, its failures as start-up errors of one line."""
    try:
        return QueueLock.take(queue)
    except QueueInUse as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"{_queue_key(config)}: cannot lock {queue}: {reason}") from None


def _lock_orphans(orphans: list[str], locks: list[QueueLock]) -> tuple[str, ...]:
    """
    The files of ``orphans`` (`orphan_queue_files`) that worker 0 may adopt: those it could
    lock (the locks join ``locks``).  One another live process holds is left to it, with a
    warning: that process (of another instance on this queuedir) still writes it, so adopting
    it would be two processes on one file, the very loss the locks prevent.
    """
    taken = []
    for orphan in orphans:
        try:
            locks.append(QueueLock.take(orphan))
        except QueueInUse as exc:
            log.warn(
                "notifications: {file} (a queue of a worker beyond [http] workers) is not"
                " adopted: it is in use by another process{holder}; give each instance its own"
                " [notifications] queuedir",
                file=orphan,
                holder=exc.holder,
            )
            continue
        except OSError as exc:
            log.warn(
                "notifications: {file} (a queue of a worker beyond [http] workers) is not"
                " adopted: cannot lock it: {reason}",
                file=orphan,
                reason=exc.strerror or str(exc),
            )
            continue
        taken.append(orphan)
    return tuple(taken)


def _lock_queues(
    config: Config, directory: str, names: list[str], worker: int, workers: int
) -> tuple[list[QueueLock], dict[str, tuple[str, ...]]]:
    """
    Lock this process's queue file of each endpoint in ``names``, and in worker 0 the files
    of workers that no longer run, which it adopts: (the locks, the files to adopt by
    endpoint).  Another process holding one of this process's own files is another instance
    on this queuedir: a `StartupError` naming it (see `registry.ops.notifications.lock`).
    """
    locks: list[QueueLock] = []
    adopt: dict[str, tuple[str, ...]] = {}
    try:
        for name in names:
            locks.append(_lock(queue_file(directory, name, worker), config))
    except (StartupError, ConfigError):
        for lock in locks:
            lock.release()
        raise
    if worker == 0:
        plain = frozenset(f"{name}.log" for name in names)
        for name in names:
            orphans = orphan_queue_files(directory, name, workers, plain)
            adopt[name] = _lock_orphans(orphans, locks)
    return locks, adopt


def add_notifications(
    config: Config,
    reactor: Any,
    parent: MultiService,
    worker: int = 0,
    workers: int = 1,
    check: bool = False,
    time_left: Callable[[], float | None] | None = None,
) -> Notifier:
    """
    The `Notifier` for ``RegistryContext.notifier``: with ``[notifications:NAME]`` endpoints,
    their service is added to ``parent``; without, a notifier that does nothing.  ``worker``
    picks this process's queue files (`queue_file`), which it locks; worker 0 also takes over
    the files of worker numbers from ``workers`` on (`orphan_queue_files`).  ``check``: a
    SIGHUP's configuration check (`registry.server.supervisor`), which runs beside the
    workers it checks for and so locks nothing (their files).  ``time_left``: see
    `NotificationService`.
    """
    endpoints = parse_endpoints(config)
    if not endpoints:
        if worker == 0:
            warn_leftover_queues(config)
        return Notifier()
    directory = queue_directory(config)
    locks: list[QueueLock] = []
    adopt: dict[str, tuple[str, ...]] = {}
    if directory is not None:
        try:
            os.makedirs(directory, exist_ok=True)
            _probe_write(directory)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise ConfigError(
                f"{_queue_key(config)}: cannot write in {directory}: {reason}"
            ) from None
        if not check:
            names = [e.name for e in endpoints]
            locks, adopt = _lock_queues(config, directory, names, worker, workers)
        if worker == 0:
            _warn_foreign(directory, [e.name for e in endpoints])
    pool = ThreadPool(minthreads=1, maxthreads=1, name="registry-notifications")
    connections = quiet_pool(HTTPConnectionPool(reactor, persistent=True))
    client = HTTPClient(bounded_agent(reactor, pool=connections))
    single = quiet_pool(HTTPConnectionPool(reactor, persistent=False))
    one_shot = HTTPClient(bounded_agent(reactor, pool=single))
    built = []
    for settings in endpoints:
        path = queue_file(directory, settings.name, worker) if directory else None
        queue = DurableQueue(
            path,
            reactor,
            pool,
            settings.maxevents,
            fsync=config.notifications.fsync,
            adopt=adopt.get(settings.name, ()),
        )
        shown = worker if workers > 1 else None
        built.append(Endpoint(settings, queue, reactor, client, one_shot, shown))
    notifier = Notifier(built, source_record(config), reactor)
    service = NotificationService(
        notifier,
        reactor,
        pool,
        config.notifications.flush_interval,
        connections,
        locks=locks,
        time_left=time_left,
    )
    service.setServiceParent(parent)  # type: ignore[no-untyped-call]
    log.info(
        "notifications to {names}",
        names=", ".join(f"{e.name} ({e.shown_url})" for e in endpoints),
    )
    return notifier
