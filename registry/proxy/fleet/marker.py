"""
Without ``[redis]``: one instance per cache storage, and a second one refused at start-up.

The caches keep their eviction state in memory and clear leftover fills at start, so two
instances on one storage would overwrite each other's state and delete each other's fills.
The instance serving a cache storage therefore keeps a marker in it,
``txregistry/proxy/instance.json`` (its name, host, process id and the time of its last
heartbeat), rewritten every ``HEARTBEAT`` seconds and deleted at a clean stop.  A fleet's
instances share ``fleet.json``, an entry each (a clean stop takes out only its own: the others
may still serve); each side's heartbeat also looks for the other's marker and says so in the
log.  A starting
instance refuses to start while another one's marker is fresh.

A marker is stale, and taken over, when:

- its heartbeat is older than ``STALE_AFTER`` (three heartbeats): the instance stopped
  writing it, so it is gone (killed, its machine lost), whatever host it ran on; or
- it was written on this host by a process that no longer exists (kill -9 then a restart,
  the usual case, is not delayed at all).

So a killed instance delays a restart on another machine by at most ``STALE_AFTER``, and never
forever.  Clocks of the instances' machines are compared: keep them in sync (NTP).

On a full disk the marker cannot be written.  The cache still serves (what it holds is read,
not written), so a start on a full disk checks the other instances' markers as usual and then
serves without its own, and a running instance goes on serving: the marker is written at the
first heartbeat that finds room, one line said when it cannot be written and one when it is.
Until then a second instance started on this storage is not refused (docs/proxy.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.failures import log_failure
from registry.procinfo import pid_namespace, start_time
from registry.proxy.owners import running
from registry.server.exit import StartupError
from registry.server.probe import describe
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageError, StorageFull

log = Logger()

MARKER = f"{layout.OWN}/proxy/instance.json"
# The instances of a fleet (with [redis]), an entry each: an instance without [redis] is
# refused on their storage while any of them is alive, as a fleet instance is on a solo one's.
FLEET_MARKER = f"{layout.OWN}/proxy/fleet.json"
HEARTBEAT = 10.0
STALE_AFTER = 3 * HEARTBEAT


@attrs.define(eq=False)
class InstanceMarker:
    driver: IStorageDriver
    where: str  # the storage, as the operator named it (for the refusal line)
    clock: Any = time
    heartbeat: float = HEARTBEAT
    ident: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    host: str = attrs.field(factory=socket.gethostname)
    pid: int = attrs.field(factory=os.getpid)
    # The process's start time (`registry.procinfo`): with the pid, what tells this process
    # from an earlier one of the same pid in the same pid namespace.
    started: int | None = attrs.field(factory=lambda: start_time("self"))
    # Pids and start times compare only within one pid namespace (`registry.procinfo`).
    namespace: str | None = attrs.field(factory=pid_namespace)
    claimed: bool = False
    # This instance's name when it is part of a fleet ([redis]); empty for a solo instance.
    fleet: str = ""
    # Our marker could not be written for want of room (see the module docstring): the next
    # heartbeat with room writes it.
    unwritten: bool = False

    @property
    def path(self) -> str:
        return FLEET_MARKER if self.fleet else MARKER

    def _document(self) -> bytes:
        document = {
            "id": self.ident,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "pidns": self.namespace,
            "heartbeat": self.clock.time(),
        }
        if self.fleet:
            document["instance"] = self.fleet
        return json.dumps(document).encode()

    async def _read(self, path: str | None = None) -> dict[str, Any] | None:
        try:
            value = json.loads(await self.driver.get_content(path or self.path))
        except (PathNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _alive(self, other: dict[str, Any]) -> bool:
        age = self.clock.time() - float(other.get("heartbeat", 0))
        if age > self.heartbeat * 3:
            return False
        pid, started = other.get("pid"), other.get("started")
        if other.get("host") != self.host or not isinstance(pid, int):
            return True  # another host's: its heartbeat says
        namespace = other.get("pidns")  # absent from markers of earlier versions
        if namespace is not None and namespace != self.namespace:
            # Another pid namespace (another container sharing the host name, or a restarted
            # one): its pid and start time mean nothing here, its heartbeat says.
            return True
        if started is not None and started != (
            self.started if pid == self.pid else start_time(pid)
        ):
            return False  # an earlier process of that pid (or none now)
        return pid == self.pid or running(pid)

    async def _other_side(self) -> dict[str, Any] | None:
        """A live instance of the other kind on this storage: the solo instance, for a fleet
        instance; any live fleet instance, for a solo one."""
        if self.fleet:
            solo = await self._read(MARKER)
            return solo if solo is not None and self._alive(solo) else None
        return next(iter(self._live_members(await self._read(FLEET_MARKER))), None)

    def _live_members(self, document: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The fleet marker's live instances (each instance has its entry: one leaving
        removes only its own, so the others stay visible)."""
        if document is None:
            return []
        members = document.get("instances")
        entries = list(members.values()) if isinstance(members, dict) else [document]
        return [e for e in entries if isinstance(e, dict) and self._alive(e)]

    async def live_fleet(self) -> list[dict[str, Any]]:
        """The other live instances of the fleet, as the fleet marker lists them."""
        return [
            entry
            for entry in self._live_members(await self._read(FLEET_MARKER))
            if entry.get("id") != self.ident and entry.get("instance") != self.fleet
        ]

    async def _write_membership(self, present: bool) -> None:
        """Our entry in the fleet marker written (``present``) or taken out; dead entries go.
        Instances writing at once may drop each other's entry until their next beat."""
        live = {
            str(entry.get("id")): entry
            for entry in self._live_members(await self._read(FLEET_MARKER))
            if entry.get("id") != self.ident
        }
        if present:
            live[self.ident] = json.loads(self._document())
        if live:
            await self.driver.put_content(FLEET_MARKER, json.dumps({"instances": live}).encode())
        else:
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(FLEET_MARKER)

    async def claim(self) -> None:
        """Write our marker, or raise StartupError naming the instance that holds it."""
        mixed = await self._other_side()
        if mixed is not None:
            age = self.clock.time() - float(mixed.get("heartbeat", 0))
            if self.fleet:
                raise StartupError(
                    f"a txregistry instance without [redis] (host {mixed.get('host')}, pid "
                    f"{mixed.get('pid')}, heartbeat {max(age, 0):.0f}s ago) serves the "
                    f"pull-through cache in {self.where}; a fleet instance cannot share it "
                    "(stop it, or give it the same [redis]); docs/proxy.md"
                )
            raise StartupError(
                f"txregistry fleet instance {mixed.get('instance')} (host {mixed.get('host')}, "
                f"pid {mixed.get('pid')}, heartbeat {max(age, 0):.0f}s ago) serves the "
                f"pull-through cache in {self.where} with [redis]; an instance without "
                "[redis] cannot share it (configure the same [redis]; if that instance is "
                f"gone, start again after {self.heartbeat * 3:.0f}s); docs/proxy.md"
            )
        if self.fleet:
            self._refuse_namesake(await self._read(FLEET_MARKER))
            await self._written(lambda: self._write_membership(True), starting=True)
            self.claimed = True
            return
        other = await self._read()
        if other is not None and other.get("id") != self.ident and self._alive(other):
            age = self.clock.time() - float(other.get("heartbeat", 0))
            raise StartupError(
                f"another txregistry instance (host {other.get('host')}, pid {other.get('pid')}, "
                f"heartbeat {max(age, 0):.0f}s ago) serves the pull-through cache in {self.where}; "
                "instances share a cache only with [redis] (docs/proxy.md); if that instance "
                f"is gone, start again after {self.heartbeat * 3:.0f}s"
            )
        await self._written(lambda: self.driver.put_content(self.path, self._document()), True)
        self.claimed = True

    def _refuse_namesake(self, document: dict[str, Any] | None) -> None:
        """
        StartupError when another live process is this fleet instance already: two of one
        name take each other's fill leases and in-use marks, and one removes the other's fills
        in flight as leftovers (``fills/<instance>``).  The default name, ``<host>-<pid>``,
        is the same for two containers that share a host name (host networking) and are both
        pid 1.
        """
        for entry in self._live_members(document):
            if entry.get("instance") != self.fleet or entry.get("id") == self.ident:
                continue
            age = self.clock.time() - float(entry.get("heartbeat", 0))
            raise StartupError(
                f"fleet instance {self.fleet} already serves the pull-through cache in "
                f"{self.where} (host {entry.get('host')}, pid {entry.get('pid')}, heartbeat "
                f"{max(age, 0):.0f}s ago): give each instance its own [fleet] instance; if "
                f"that process is gone, start again after {self.heartbeat * 3:.0f}s"
            )

    async def _written(self, write: Callable[[], Awaitable[None]], starting: bool = False) -> None:
        """Run ``write`` (our marker, or our entry in the fleet's); a full disk leaves the
        marker `unwritten`, said in one line, and serving goes on (the module docstring)."""
        try:
            await write()
        except StorageFull as exc:
            if self.unwritten:
                return  # said already; the next heartbeat tries again
            self.unwritten = True
            # At a start on a full disk the storage probe's warning said the disk is full.
            (log.info if starting else log.warn)(
                "proxy: cannot write the cache instance marker in {where} ({error}): serving;"
                " it is written once there is room, and until then another instance started"
                " on this storage is not refused",
                where=self.where,
                error=describe(exc),
            )
            return
        if self.unwritten:
            self.unwritten = False
            log.info("proxy: the cache instance marker in {where} is written", where=self.where)

    async def beat(self) -> None:
        if not self.claimed:
            return
        mixed = await self._other_side()
        if mixed is not None:
            log.error(
                "{other} (host {host}, pid {pid}) serves the pull-through cache in {where} too: "
                "a fleet and an instance without [redis] must not share a cache storage",
                other=(
                    "an instance without [redis]"
                    if self.fleet
                    else f"fleet instance {mixed.get('instance')}"
                ),
                host=mixed.get("host"),
                pid=mixed.get("pid"),
                where=self.where,
            )
        if self.fleet:
            await self._written(lambda: self._write_membership(True))
            return
        other = await self._read()
        if other is not None and other.get("id") != self.ident and self._alive(other):
            log.error(
                "another txregistry instance (host {host}, pid {pid}) wrote the cache marker in "
                "{where}: two instances serve one cache without [redis]",
                host=other.get("host"),
                pid=other.get("pid"),
                where=self.where,
            )
            return
        await self._written(lambda: self.driver.put_content(self.path, self._document()))

    async def release(self) -> None:
        if not self.claimed:
            return
        self.claimed = False
        if self.fleet:
            # Only our entry goes: the others may still serve.
            await self._write_membership(False)
            return
        other = await self._read()
        if other is None or other.get("id") == self.ident:
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(self.path)

    def service(self) -> TimerService:
        from twisted.internet.defer import Deferred

        failing = False  # the storage refused the last heartbeat (S3 down, EIO)

        def worked(_: object) -> None:
            nonlocal failing
            if failing:
                failing = False
                log.info(
                    "proxy: the cache instance marker in {where} works again", where=self.where
                )

        def failed(failure: Failure) -> None:
            # A storage outage is one event: one warning, not an error line per heartbeat.
            nonlocal failing
            if not failure.check(StorageError):
                log_failure(log, failure, "writing the cache instance marker failed")
            elif not failing:
                failing = True
                log.warn(
                    "proxy: keeping the cache instance marker in {where} failed: {error} (tried"
                    " again every {heartbeat:g}s; a line says when it works)",
                    where=self.where,
                    error=str(failure.value),
                    heartbeat=self.heartbeat,
                )

        def run() -> Deferred[None]:
            d = Deferred.fromCoroutine(self.beat())
            d.addCallbacks(worked, failed)
            return d

        return TimerService(self.heartbeat, run)
