"""
Without ``[redis]``: one instance per cache storage, and a second one refused at start-up.

The caches keep their eviction state in memory and clear leftover fills at start, so two
instances on one storage would overwrite each other's state and delete each other's fills.
The instance serving a cache storage therefore keeps a marker in it,
``txregistry/proxy/instance.json`` (its name, host, process id and the time of its last
heartbeat), rewritten every ``HEARTBEAT`` seconds and deleted at a clean stop.  A starting
instance refuses to start while another one's marker is fresh.

A marker is stale, and taken over, when:

- its heartbeat is older than ``STALE_AFTER`` (three heartbeats): the instance stopped
  writing it, so it is gone (killed, its machine lost), whatever host it ran on; or
- it was written on this host by a process that no longer exists (kill -9 then a restart,
  the usual case, is not delayed at all).

So a killed instance delays a restart on another machine by at most ``STALE_AFTER``, and never
forever.  Clocks of the instances' machines are compared: keep them in sync (NTP).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.logger import Logger

from registry.failures import log_failure
from registry.proxy.owners import running
from registry.server.exit import StartupError
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError

log = Logger()

MARKER = f"{layout.OWN}/proxy/instance.json"
# Written by the instances of a fleet (with [redis]), whichever beat last: an instance
# without [redis] is refused on their storage, as a fleet instance is on a solo one's.
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
    claimed: bool = False
    # This instance's name when it is part of a fleet ([redis]); empty for a solo instance.
    fleet: str = ""

    @property
    def path(self) -> str:
        return FLEET_MARKER if self.fleet else MARKER

    def _document(self) -> bytes:
        document = {
            "id": self.ident,
            "host": self.host,
            "pid": self.pid,
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
        pid = other.get("pid")
        if other.get("host") == self.host and isinstance(pid, int) and pid != self.pid:
            return running(pid)
        return True

    async def claim(self) -> None:
        """Write our marker, or raise StartupError naming the instance that holds it."""
        mixed = await self._read(MARKER if self.fleet else FLEET_MARKER)
        if mixed is not None and self._alive(mixed):
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
                "[redis] cannot share it (configure the same [redis]); docs/proxy.md"
            )
        if self.fleet:
            await self.driver.put_content(self.path, self._document())
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
        await self.driver.put_content(self.path, self._document())
        self.claimed = True

    async def beat(self) -> None:
        if not self.claimed:
            return
        if self.fleet:  # the fleet's instances take turns writing it
            await self.driver.put_content(self.path, self._document())
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
        await self.driver.put_content(self.path, self._document())

    async def release(self) -> None:
        if not self.claimed:
            return
        self.claimed = False
        other = await self._read()
        if other is None or other.get("id") == self.ident:
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(self.path)

    def service(self) -> TimerService:
        from twisted.internet.defer import Deferred

        def run() -> Deferred[None]:
            d = Deferred.fromCoroutine(self.beat())
            d.addErrback(lambda f: log_failure(log, f, "writing the cache instance marker failed"))
            return d

        return TimerService(self.heartbeat, run)
