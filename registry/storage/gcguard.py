"""
What keeps a blob that a push refers to from being deleted by a `txregistry gc` running at
the same time (`registry.ops.gc`), however long its sweep takes.

A push that refers to a blob already stored writes nothing the collector would notice: a
manifest naming layers the repository links already, an upload of content that is stored
already (only the link is written), a mount.  The collector marks what manifests refer to
and looks at every repository once more before deleting, but a push can land between that
last look and a blob's delete, and the client would have a 201 for a manifest whose layer
is then gone.  So the two sides follow a protocol on three files:

- ``txregistry/gc/running``: written by a collector before its mark (holding the run's start
  time) and kept fresh while it runs, removed at its end.  A writer that does not see it
  after its own write knows that any collector started after that write, whose mark sees it.
- ``blobs/<alg>/<xx>/<hex>/touched``: written by a writer, while a collector runs, for each
  blob its write refers to, before it checks that the blob is still there.
- ``blobs/<alg>/<xx>/<hex>/doomed``: written by the collector before it looks at
  ``touched`` one last time and deletes the blob's folder.  Only one written by the run now
  going counts (one a killed run left behind is older than the run's start).

A writer: write its link or revision, then (if a collector runs) ``touched``, then check the
blob's data is there and not ``doomed``.  The collector: ``doomed``, then ``touched``, then
delete.  Either the collector sees ``touched`` (and keeps the blob), or the writer's check
comes after ``doomed`` was written and sees it or sees the data gone, and the push fails with
an error the client acts on (``MANIFEST_BLOB_UNKNOWN``: it uploads the blob again) instead of
succeeding with a blob that is about to disappear.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import attrs

from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError

RUNNING = f"{layout.OWN}/gc/running"
TOUCHED = "touched"
DOOMED = "doomed"
# A collector refreshes `RUNNING` this often; one not refreshed for `STALE` seconds was
# killed (kill -9 leaves the file), and writers stop paying for it.
REFRESH = 60.0
STALE = 600.0


def touched_path(digest: Digest) -> str:
    return f"{layout.blob_dir(digest)}/{TOUCHED}"


def doomed_path(digest: Digest) -> str:
    return f"{layout.blob_dir(digest)}/{DOOMED}"


@attrs.frozen
class GcGuard:
    """The writer's side of the protocol, over one storage driver."""

    driver: IStorageDriver

    async def collector_started(self) -> float | None:
        """
        When the collector running now started (its own clock), or None when none runs: a
        fresh look, never cached (see the module).
        """
        try:
            info = await self.driver.stat(RUNNING)
            text = await self.driver.get_content(RUNNING)
        except PathNotFoundError:
            return None
        # Against the local clock: `STALE` is generous enough for a storage server's skew.
        if time.time() - info.modified >= STALE:
            return None
        try:
            return float(text.decode("ascii").strip())
        except ValueError:  # a marker being rewritten, or damaged: any doomed counts
            return 0.0

    async def protect(self, digests: Iterable[Digest]) -> list[Digest]:
        """
        Call after a write that makes ``digests`` referenced.  While a collector runs, mark
        each touched and return those that are gone or being deleted (the write must then
        fail); otherwise return nothing, at the cost of one stat.
        """
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return []
        started = await self.collector_started()
        if started is None:
            return []
        for digest in wanted:
            await self.driver.put_content(touched_path(digest), b"")
        gone = []
        for digest in wanted:
            if not await self._there(digest, started):
                gone.append(digest)
        return gone

    async def _there(self, digest: Digest, started: float) -> bool:
        try:
            doomed = await self.driver.stat(doomed_path(digest))
        except PathNotFoundError:
            pass
        else:
            # A second of slack: the run's start is written in whole seconds.
            if doomed.modified >= started - 1:
                return False
        try:
            await self.driver.stat(layout.blob_data(digest))
        except PathNotFoundError:
            return False
        return True
