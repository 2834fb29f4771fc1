"""
What keeps a blob that a push refers to from being deleted by a `txregistry gc` running at
the same time (`registry.ops.gc`), however long its sweep takes.

A push that refers to a blob already stored writes nothing the collector would notice: a
manifest naming layers the repository links already, an upload of content that is stored
already (only the link is written), a mount.  The collector marks what manifests refer to
and looks at every repository once more before deleting, but a push can land between that
last look and a blob's delete, and the client would have a 201 for a manifest whose layer
is then gone.  So the two sides follow a protocol on three files:

- ``txregistry/gc/running``: written by a collector before its mark (naming the run: its
  start time, id, host and pid) and kept fresh while it runs, removed at its end.  A writer
  that does not see it after its own write knows that any collector started after that
  write, whose mark sees it.  One collector at a time (`RunMarker`): the marker is created
  only where there is none and only ever replaced or removed by the run that wrote it, so
  it stays while any run sweeps (two runs each removing "the" marker at their end left the
  other's sweep unannounced, and pushes unprotected).
- ``blobs/<alg>/<xx>/<hex>/touched``: written by a writer, while a collector runs, for each
  blob its write refers to, before it checks that the blob is still there.
- ``blobs/<alg>/<xx>/<hex>/doomed``: written by the collector before it looks at
  ``touched`` one last time and deletes the blob's folder.  Only one written by the run now
  going counts (one a killed run left behind is older than the run's start).

With ``--delete-untagged`` a revision folder a collector deletes gets the same handshake:
its ``doomed`` (``_manifests/revisions/<alg>/<hex>/doomed``), then a last look at its link's
age and at the manifest blob's ``touched``, then the delete.  A manifest put (by tag or
digest) rewrites that link, an index put touches its children's blobs, and both then check
the revisions' ``doomed``: without it, a put re-linking an untagged manifest right after
the collector's look was acknowledged, its tag moved, and the folder went.

A writer: write its link or revision, then (if a collector runs) ``touched``, then check the
blob's data is there and not ``doomed``.  The collector: ``doomed``, then ``touched``, then
delete.  Either the collector sees ``touched`` (and keeps the blob), or the writer's check
comes after ``doomed`` was written and sees it or sees the data gone, and the push fails with
an error the client acts on (``MANIFEST_BLOB_UNKNOWN``: it uploads the blob again) instead of
succeeding with a blob that is about to disappear.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.logger import Logger

from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.driver import (
    IConditionalWrites,
    IStorageDriver,
    NotAFileError,
    PathNotFoundError,
    VersionChangedError,
)

log = Logger()

RUNNING = f"{layout.OWN}/gc/running"
TOUCHED = "touched"
DOOMED = "doomed"
# A collector refreshes `RUNNING` this often; one not refreshed for `STALE` seconds was
# killed (kill -9 leaves the file): writers stop paying for it, and the next run takes it over.
REFRESH = 60.0
STALE = 600.0


def touched_path(digest: Digest) -> str:
    return f"{layout.blob_dir(digest)}/{TOUCHED}"


def doomed_path(digest: Digest) -> str:
    return f"{layout.blob_dir(digest)}/{DOOMED}"


def revision_doomed_path(name: str, digest: Digest) -> str:
    """Written by the collector in a revision's folder before its last look and delete."""
    return f"{layout.revision_dir(name, digest)}/{DOOMED}"


@attrs.frozen
class GcGuard:
    """The writer's side of the protocol, over one storage driver."""

    driver: IStorageDriver

    async def collector_started(self) -> float | None:
        """
        When the collector running now started (its own clock), or None when none runs: a
        fresh look, never cached (see the module).  A marker not renewed for `STALE` seconds,
        or naming a process of this host that is gone, names no collector, as for
        `RunMarker`: the ``doomed`` files of that run count for nothing.
        """
        try:
            info = await self.driver.stat(RUNNING)
            text = await self.driver.get_content(RUNNING)
        except PathNotFoundError:
            return None
        except NotAFileError:  # a folder in its place: as a damaged marker, any doomed counts
            return 0.0
        # Against the local clock: `STALE` is generous enough for a storage server's skew.
        if time.time() - info.modified >= STALE:
            return None
        holder = _holder(text)
        if holder is None:  # a damaged marker: any doomed counts
            return 0.0
        if holder.is_gone():  # killed on this host: as the next run takes it over at once
            return None
        return holder.started

    async def protect(self, digests: Iterable[Digest]) -> list[Digest]:
        """
        Call after a write that makes ``digests`` referenced.  While a collector runs, mark
        each touched and return those that are gone or being deleted (the write must then
        fail); otherwise return nothing, at the cost of one stat.
        """
        return (await self.protect_manifest("", digests, ()))[0]

    async def protect_manifest(
        self, name: str, digests: Iterable[Digest], revisions: Iterable[Digest]
    ) -> tuple[list[Digest], list[Digest]]:
        """
        `protect` for a manifest put in repository ``name``, called after its revision link
        is written: also the revisions it needs there (its own, an index's children) that
        the collector is deleting (`revision_doomed_path`).  The collector deletes a revision
        folder only after its ``doomed`` and one last look at the link's age and the
        manifest blob's ``touched``: a put whose link or touch came before that look keeps
        the revision, one after it sees ``doomed`` here and fails.  Returns (blobs gone,
        revisions being deleted).
        """
        wanted = list(dict.fromkeys(digests))
        needed = list(dict.fromkeys(revisions))
        if not wanted and not needed:
            return [], []
        started = await self.collector_started()
        if started is None:
            return [], []
        for digest in wanted:
            await self.driver.put_content(touched_path(digest), b"")
        gone = []
        for digest in wanted:
            if not await self._there(digest, started):
                gone.append(digest)
        deleting = []
        for digest in needed:
            # Doomed now, or deleted already: its ``doomed`` goes with the folder, so a
            # revision the caller saw before the collector's delete is looked for again.
            if await self._doomed(
                revision_doomed_path(name, digest), started
            ) or not await self._revision_there(name, digest):
                deleting.append(digest)
        return gone, deleting

    async def _revision_there(self, name: str, digest: Digest) -> bool:
        try:
            await self.driver.stat(layout.revision_link(name, digest))
        except PathNotFoundError:
            return False
        return True

    async def _doomed(self, path: str, started: float) -> bool:
        """Whether ``path`` is a ``doomed`` of the run going on (not one a killed run left)."""
        try:
            doomed = await self.driver.stat(path)
        except PathNotFoundError:
            return False
        # A second of slack: the run's start is written in whole seconds.
        return doomed.modified >= started - 1

    async def _there(self, digest: Digest, started: float) -> bool:
        if await self._doomed(doomed_path(digest), started):
            return False
        try:
            await self.driver.stat(layout.blob_data(digest))
        except PathNotFoundError:
            return False
        return True


@attrs.frozen
class Holder:
    """The run a `RUNNING` marker names."""

    started: float
    run: str = "?"
    host: str = "?"
    pid: int = 0

    def describe(self) -> str:
        begun = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        if self.pid <= 0:  # a bare start time: an earlier version's marker
            return f"an unknown run, started {begun}"
        return f"run {self.run} on {self.host}, pid {self.pid}, started {begun}"

    def is_gone(self) -> bool:
        """A process of this host that no longer runs (a gc killed with kill -9)."""
        if self.host != socket.gethostname() or self.pid <= 0 or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # it runs, as another user
            return False
        return False


def _holder(text: bytes) -> Holder | None:
    """The marker's run; a bare start time is a marker of an earlier version."""
    try:
        found: Any = json.loads(text.decode("ascii"))
        if isinstance(found, (int, float)):
            return Holder(float(found))
        return Holder(
            float(found["started"]), str(found["run"]), str(found["host"]), int(found["pid"])
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


class CollectorBusy(Exception):
    """Another collector runs: this one must not start (its message says which)."""


class MarkerLost(Exception):
    """This run's marker was taken over (it was not renewed in time) or removed."""


@attrs.define
class RunMarker:
    """
    The collector's side of `RUNNING`: `claim` before the mark, `renew` while running,
    `release` at the end.  With a driver that offers conditional writes (`IConditionalWrites`:
    the filesystem's, S3's ``If-None-Match``/``If-Match``, memory) only one run holds it at
    a time, and a run only ever replaces or removes its own.  A marker not renewed for
    `STALE` seconds, or naming a process of this host that is gone, is taken over: a gc killed
    with kill -9 does not block gc, and writers stop counting on it at that same age.
    """

    driver: IStorageDriver
    started: float
    run: str = attrs.field(factory=lambda: uuid.uuid4().hex[:12])
    _version: str | None = attrs.field(default=None, init=False)
    _renewals: int = attrs.field(default=0, init=False)

    def _body(self) -> bytes:
        self._renewals += 1
        body = {
            "started": int(self.started),
            "run": self.run,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "renewed": time.time(),
            "renewal": self._renewals,  # each write's bytes differ: the filesystem's version
        }
        return json.dumps(body).encode("ascii") + b"\n"

    @property
    def held(self) -> bool:
        return self._version is not None

    async def claim(self) -> None:
        """Hold the marker, or `CollectorBusy` while another live run holds it."""
        conditional = IConditionalWrites(self.driver, None)
        if conditional is None:
            # A driver without conditional writes: a look, then a write (not atomic).
            await self._claim_plainly()
            return
        for _ in range(3):  # created; or a dead run's taken over (racing another claimant)
            try:
                self._version = await conditional.create(RUNNING, self._body())
                return
            except VersionChangedError:
                pass
            try:
                text, version = await conditional.read_versioned(RUNNING)
                info = await self.driver.stat(RUNNING)
            except PathNotFoundError:
                continue  # its run ended meanwhile
            holder = self._live(text, info.modified)
            if holder is not None:
                raise CollectorBusy(holder)
            try:
                self._version = await conditional.replace_version(RUNNING, self._body(), version)
            except VersionChangedError:
                continue
            self._took_over(text)
            return
        raise CollectorBusy("another gc run started at the same moment")

    async def _claim_plainly(self) -> None:
        try:
            text = await self.driver.get_content(RUNNING)
            info = await self.driver.stat(RUNNING)
        except PathNotFoundError:
            text = b""
        else:
            holder = self._live(text, info.modified)
            if holder is not None:
                raise CollectorBusy(holder)
        body = self._body()
        await self.driver.put_content(RUNNING, body)
        self._version = body.decode("ascii")
        if text:
            self._took_over(text)

    def _live(self, text: bytes, renewed: float) -> str | None:
        """Why the marker's run is to be left alone, or None when it stopped."""
        holder = _holder(text)
        age = time.time() - renewed
        if age >= STALE or (holder is not None and holder.is_gone()):
            return None
        who = holder.describe() if holder is not None else "an unreadable marker"
        return (
            f"another gc run is in progress ({who}, renewed {age:.0f}s ago; {RUNNING}): not started"
        )

    def _took_over(self, text: bytes) -> None:
        holder = _holder(text)
        log.warn(
            "gc: took over the marker of a gc run that stopped ({who})",
            who=holder.describe() if holder is not None else "unreadable marker",
        )

    async def renew(self) -> None:
        """Keep the marker fresh; `MarkerLost` when it is not this run's any more."""
        if self._version is None:
            raise MarkerLost("this gc run's marker is not held")
        conditional = IConditionalWrites(self.driver, None)
        if conditional is None:
            body = self._body()
            await self.driver.put_content(RUNNING, body)
            self._version = body.decode("ascii")
            return
        try:
            self._version = await conditional.replace_version(RUNNING, self._body(), self._version)
        except VersionChangedError:
            self._version = None
            raise MarkerLost(
                f"this gc run's marker ({RUNNING}) was taken over or removed: another run "
                "took it for stopped; stopped before deleting more"
            ) from None

    async def release(self) -> None:
        """Remove the marker if it is still this run's (never another run's)."""
        version, self._version = self._version, None
        if version is None:
            return
        conditional = IConditionalWrites(self.driver, None)
        try:
            if conditional is None:
                if (await self.driver.get_content(RUNNING)).decode("ascii", "replace") == version:
                    await self.driver.delete(RUNNING)
            else:
                await conditional.delete_version(RUNNING, version)
        except (PathNotFoundError, VersionChangedError):
            pass  # taken over by another run: its marker now
