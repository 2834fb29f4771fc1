"""
Which request owns an upload's hasher, in this process.

One request at a time writes to an upload (`claim`).  Where this process alone serves the
storage (`UploadStore.state_after_answer`), a request is answered once its bytes are stored
while its hasher may still be catching up; the hasher is then *parked*: settled and its state
recorded in the background.  A next request on the same upload that arrives meanwhile takes the
parked hasher over (`take_over`) instead of waiting for the recording: clients that send many
small chunks over one connection otherwise paid, per chunk, for the hasher to drain.

This class holds only that bookkeeping; the store says how a hasher is settled and how its
state is recorded, so each transition can be tested without storage or threads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.failures import log_failure

log = Logger()

Key = tuple[str, str]  # (repository, upload id)
P = TypeVar("P")  # what is parked: the finished request's appender
S = TypeVar("S")  # what settling gives: the hasher with every byte in it

# A recording that finishes may start no other, but `flush` stays bounded anyway.
_FLUSH_ROUNDS = 100


class HasherHandover(Generic[P, S]):
    """
    Claims, parked hashers and recordings in progress, per upload.

    ``settle`` waits for a parked appender's hasher to catch up; ``record`` saves its state.
    A recording that fails is logged and not raised: the next request re-hashes the stored
    data instead.
    """

    def __init__(
        self, settle: Callable[[P], Awaitable[S]], record: Callable[[P, S], Awaitable[None]]
    ) -> None:
        self._settle = settle
        self._record = record
        self._busy: set[Key] = set()
        # Uploads whose last request was answered while their hash state is being recorded.
        self._recording: dict[Key, Deferred[None]] = {}
        # Of those, the ones whose hasher the next request may still take over.
        self._parked: dict[Key, P] = {}

    def claim(self, key: Key) -> bool:
        """Make the caller the upload's only writer; False when another request is writing."""
        if key in self._busy:
            return False
        self._busy.add(key)
        return True

    def release(self, key: Key) -> None:
        """The writer is done (idempotent)."""
        self._busy.discard(key)

    def is_parked(self, key: Key) -> bool:
        """Whether a previous request's hasher waits to be taken over."""
        return key in self._parked

    def park(self, key: Key, parked: P) -> None:
        """Settle ``parked`` and record its state in the background, unless taken over first."""
        self._parked[key] = parked
        done = Deferred.fromCoroutine(self._settle_and_record(key, parked))

        def finished(result: object) -> None:
            if self._recording.get(key) is done:
                del self._recording[key]
            if isinstance(result, Failure):
                log_failure(
                    log,
                    result,
                    "recording the hash state of upload {upload} ({name}); the next request "
                    "re-hashes the stored data",
                    upload=key[1],
                    name=key[0],
                )

        if not done.called:
            self._recording[key] = done
        done.addBoth(finished)

    async def _settle_and_record(self, key: Key, parked: P) -> None:
        try:
            settled = await self._settle(parked)
        finally:
            taken_over = self._parked.get(key) is not parked
            if not taken_over:
                del self._parked[key]
        if taken_over:
            return  # the next request goes on with this hasher, and records its own state
        await self._record(parked, settled)

    def take_over(self, key: Key) -> P | None:
        """The previous request's parked appender, now owned by the caller (see `park`)."""
        parked = self._parked.pop(key, None)
        if parked is not None:
            # Waiting for this recording would mean waiting for the caller's own hashing.
            self._recording.pop(key, None)
        return parked

    async def recorded(self, key: Key) -> None:
        """Wait until the previous request's hash state is recorded."""
        pending = self._recording.get(key)
        if pending is not None:
            await pending  # never fails: `park`'s `finished` logs the error and returns None

    async def flush(self) -> None:
        """Wait until every parked hasher's state is recorded (before the process stops)."""
        for _ in range(_FLUSH_ROUNDS):
            pending = list(self._recording.values())
            if not pending:
                return
            for recording in pending:
                await recording
