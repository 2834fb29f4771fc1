"""
The uploads a pulling sync has open, marked in storage so that a sync killed mid-blob (``kill
-9``, a crash, a lost machine) does not leave its partial upload behind until ``purge-uploads``
removes it days later.

Before the first byte of a blob is appended, the sync writes a marker
``txregistry/sync/<name>/uploads/<upload id>`` holding the repository name; the marker goes
when the upload is committed or cancelled.  At start, before its first run, the sync cancels
every upload it still has a marker for: those belonged to a run of this sync that never ended
(only one process runs a given sync, so none of them can still be in use).  Uploads that
clients opened have no marker and are never touched.
"""

from __future__ import annotations

import contextlib
import json

import attrs

from registry.api.errors import RegistryError
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageError
from registry.storage.uploads import IUploadStore


@attrs.frozen
class UploadMarks:
    """The markers of one sync (``sync`` is its name)."""

    driver: IStorageDriver
    sync: str

    def _folder(self) -> str:
        return f"{layout.OWN}/sync/{self.sync}/uploads"

    async def opened(self, name: str, upload_id: str) -> None:
        """Mark ``upload_id`` (in repository ``name``) as this sync's, before it is written."""
        body = json.dumps({"name": name}).encode()
        await self.driver.put_content(f"{self._folder()}/{upload_id}", body)

    async def closed(self, upload_id: str) -> None:
        """The upload was committed or cancelled: forget it (best effort: a marker left
        behind only makes the next start try to cancel an upload that is gone)."""
        with contextlib.suppress(StorageError):
            await self.driver.delete(f"{self._folder()}/{upload_id}")

    async def cancel_abandoned(self, uploads: IUploadStore) -> list[str]:
        """Cancel every upload still marked (a run that never ended opened it); the ids."""
        try:
            ids = await self.driver.list(self._folder())
        except PathNotFoundError:
            return []
        cancelled = []
        for upload_id in sorted(ids):
            path = f"{self._folder()}/{upload_id}"
            try:
                name = json.loads(await self.driver.get_content(path))["name"]
            except (StorageError, ValueError, KeyError, TypeError):
                name = None
            if isinstance(name, str):
                with contextlib.suppress(RegistryError, StorageError):
                    await uploads.cancel(name, upload_id)
                    cancelled.append(upload_id)
            await self.closed(upload_id)
        return cancelled
