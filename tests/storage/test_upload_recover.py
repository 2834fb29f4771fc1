"""
A commit killed between the move of the upload's data and the removal of its folder, through
an `UploadStore` over `MemoryDriver`: the retried commit (`UploadStore.recover`) needs the hash
state at the upload's last offset, also where the final ``PUT`` took the hasher over from the
last ``PATCH`` before that request's state was recorded.
"""

from __future__ import annotations

import hashlib

import pytest
from twisted.internet.defer import Deferred

from registry.api.digests import Digest, DigestingHasher
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.memory import MemoryDriver
from registry.storage.uploads import INLINE_ALGORITHM, CommittedUpload, UploadStore
from tests.synchronous import run_now

NAME = "repo"


class Killed(Exception):
    """The process dies here: nothing after this step runs."""


class _KilledAfterMove(MemoryDriver):
    """Storage whose process is killed right after a commit moved an upload's data."""

    async def move(self, source: str, dest: str) -> None:
        await super().move(source, dest)
        if source.endswith("/data") and "/_uploads/" in source:
            raise Killed(source)


class _SlowHasher:
    """An offloaded hasher that catches up when the test says so (a hash thread behind)."""

    def __init__(self, hasher: DigestingHasher) -> None:
        self.hasher = hasher
        self.caught_up: Deferred[None] = Deferred()

    def update(self, data: bytes) -> None:
        self.hasher.update(data)

    async def settle(self) -> DigestingHasher:
        if not self.caught_up.called:
            await self.caught_up
        return self.hasher


def sha256(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def test_a_put_that_took_the_hasher_over_leaves_the_state_a_retry_needs() -> None:
    driver = _KilledAfterMove()
    store = UploadStore(driver, BlobStore(driver), state_after_answer=True)
    run_now(_took_over_then_killed(store, driver))


async def _took_over_then_killed(store: UploadStore, driver: MemoryDriver) -> None:
    data = b"a" * 1000 + b"b" * 500
    upload = await store.start(NAME)
    patch = await store.open(NAME, upload)
    slow = _SlowHasher(patch.hasher)
    patch.offload = slow  # type: ignore[assignment]
    patch.write(data)
    await patch.close()  # answered; the state follows once the hasher has caught up
    put = await store.open(NAME, upload, start=len(data))  # takes the hasher over
    assert put.hasher is patch.hasher
    slow.caught_up.callback(None)
    with pytest.raises(Killed):
        await store.commit(put, sha256(data))
    states = layout.upload_hashstates(NAME, upload, INLINE_ALGORITHM)
    assert await driver.list(states) == [str(len(data))]

    # The restarted process answers the retried PUT as the commit, and removes the folder.
    again = UploadStore(driver, BlobStore(driver))
    committed = await again.recover(NAME, upload, sha256(data))
    assert committed == CommittedUpload(NAME, upload, sha256(data), len(data))
    assert await again.recover(NAME, upload, sha256(data + b"c")) is None
    assert await again.commit(committed, sha256(data)) == len(data)
    assert not await again.exists(NAME, upload)
    assert await driver.get_content(layout.blob_data(sha256(data))) == data
