"""
Logging a failure the way an operator needs it.

A storage failure (a full disk, an S3 outage, refused credentials) comes from the environment,
not from the code: its message says what is wrong, and a traceback would only bury it (and
make a full disk look like a crash).  So it is logged as one error line with its reason;
anything else is a defect and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.storage.driver import StorageError


def log_failure(log: Logger, failure: Failure, text: str, **fields: Any) -> None:
    """``log.failure(text, failure, **fields)``, or one error line for a `StorageError`."""
    if failure.check(StorageError):
        log.error(text + ": {reason}", reason=str(failure.value), **fields)
    else:
        log.failure(text, failure, **fields)
