"""
Logging a failure the way an operator needs it.

A storage failure (a full disk, an S3 outage, refused credentials) comes from the environment,
not from the code: its message says what is wrong, and a traceback would only bury it (and
make a full disk look like a crash).  So it is logged as one error line with its reason;
anything else is a defect and keeps its traceback.

A full storage is a state, not an error of each request: every push a client retries is
refused the same way, and an error line per refusal pages whoever alerts on errors once per
retry (and adds to the disk that is full).  It is one warning per `FULL_EVERY` seconds, which
says how many refusals went by since the last one, and an info line per refusal in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.storage.driver import StorageError, StorageFull

FULL_EVERY = 60.0


class _FullStorageLines:
    """When the last full-storage warning went out, and the refusals logged quietly since."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._warned_at: float | None = None
        self._quiet = 0

    def log(self, log: Logger, text: str, reason: str, fields: dict[str, Any]) -> None:
        now = self.clock()
        if self._warned_at is not None and now - self._warned_at < FULL_EVERY:
            self._quiet += 1
            log.info(text + ": {reason}", reason=reason, **fields)
            return
        quiet, self._quiet, self._warned_at = self._quiet, 0, now
        log.warn(
            text + ": {reason} (the storage is full: writes answer 503 until there is room;"
            " {quiet} refused since the last such line, each at info level)",
            reason=reason,
            quiet=quiet,
            **fields,
        )


_full = _FullStorageLines()


def log_failure(log: Logger, failure: Failure, text: str, **fields: Any) -> None:
    """``log.failure(text, failure, **fields)``, or one error line for a `StorageError`
    (a full storage: see the module)."""
    if failure.check(StorageFull):
        _full.log(log, text, str(failure.value), fields)
    elif failure.check(StorageError):
        log.error(text + ": {reason}", reason=str(failure.value), **fields)
    else:
        log.failure(text, failure, **fields)
