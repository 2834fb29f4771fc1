"""
The start-up storage probe: write, read back and delete a small object through the driver.

A storage root that is a regular file, a folder the process may not write, a bucket that does
not exist or credentials that are refused all look healthy until the first push; probing at
start-up turns them into a refusal to start, naming the cause.  The probe goes through the
configured `IStorageDriver`, so it checks what pushes will use (S3 included).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections import deque

from registry.config import StorageConfig
from registry.procinfo import boot_id, pid_namespace, start_time
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError

PROBE_DIR = f"{layout.OWN}/probes"


def storage_description(storage: StorageConfig) -> str:
    """How the operator named the storage: a folder, an S3 location, or ``inmemory``."""
    if storage.driver == "filesystem":
        return os.path.abspath(storage.rootdirectory)
    if storage.driver == "s3":
        prefix = storage.rootdirectory.strip("/")
        if storage.rootdirectory == StorageConfig().rootdirectory:
            prefix = ""
        return f"s3://{storage.bucket}/{prefix}".rstrip("/")
    return storage.driver


def describe(exc: BaseException) -> str:
    """An error as one short phrase: ``Not a directory``, ``Permission denied``, ...

    Drivers raise `StorageError` from the system's `OSError`: the operator needs the system's
    reason, not the probe's own path inside the storage."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def probe_payload(target: str) -> bytes:
    """
    What a probe writes: unique each time (the read-back must find this write), and naming
    its writer as the project's other records do (host, pid, its start time and pid
    namespace, `registry.procinfo`): a probe file that a killed process kept is removed by a
    later one of its host (`registry.ops.health.sweep_probe_files`).
    """
    pid = os.getpid()
    record = {
        "probe": target,
        "id": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": pid,
        "started": start_time(pid),
        "pidns": pid_namespace(),
        "boot": boot_id(),
    }
    return json.dumps(record).encode()


class ReadsBackDifferently(Exception):
    """The probe read back other bytes than it wrote: the storage loses or mixes writes."""


async def probe_storage(
    driver: IStorageDriver,
    readonly: bool = False,
    path: str | None = None,
    earlier: deque[bytes] | None = None,
) -> None:
    """
    Raise if the storage cannot be written, read and deleted (only read with ``readonly``:
    a read-only registry may sit on read-only storage).  With ``path`` (a probe repeated by
    the health checks) that one file is written over and kept rather than deleted each time.

    ``earlier``: what the previous probes of ``path`` wrote (this probe's payload is added).
    A probe that timed out is not called back (an S3 PUT sent is sent): once a hung storage
    answers again, its late write may land after a newer probe's and be what that one reads
    back, which is the storage keeping the last write it got, not losing one.
    """
    if readonly:
        with contextlib.suppress(PathNotFoundError):
            await driver.stat(layout.ROOT)
        return
    target = path or f"{PROBE_DIR}/{uuid.uuid4().hex}"
    payload = probe_payload(target)
    if earlier is not None:
        earlier.append(payload)
    await driver.put_content(target, payload)
    try:
        found = await driver.get_content(target)
        if found != payload and (earlier is None or found not in earlier):
            raise ReadsBackDifferently("what was written reads back differently")
    finally:
        if path is None:
            await driver.delete(target)
