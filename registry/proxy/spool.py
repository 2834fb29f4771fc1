"""
The local folder fills are spooled to on S3 (`registry.proxy.service.fill_spool`), and what
processes killed with ``kill -9`` left in it.

Each process spools into a folder of its own, named ``<host>-<pid>``: under
``<spooldirectory>/fills/``, or ``txregistry-fills-<host>-<pid>-*`` in the system's temporary
folder.  At start a process removes the folders of processes of the same host that no longer
run (a clean stop removes nothing: the spool files of finished fills are deleted as they end,
and a process that stops mid-fill is one whose fills were interrupted anyway).  Folders of
other hosts (several machines or containers sharing the folder) are left to their own host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile

from twisted.logger import Logger

from registry.config import ConfigError
from registry.proxy.owners import left_by_dead_process, owner

log = Logger()

TEMP_PREFIX = "txregistry-fills-"


def spool_folder(spooldirectory: str) -> str:
    """Create this process's spool folder (in blocking code: called at start-up); one that
    cannot be made stops start-up with a line naming it (`ConfigError`)."""
    try:
        if spooldirectory:
            folder = os.path.join(spooldirectory, "fills", owner())
            os.makedirs(folder, exist_ok=True)
            return folder
        return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{owner()}-")
    except OSError as exc:
        where = exc.filename or spooldirectory or tempfile.gettempdir()
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(
            f"[storage] spooldirectory: cannot make the pull-through fill spool {where}: {reason}"
        ) from None


def sweep(spooldirectory: str) -> list[str]:
    """Remove the spool folders of this host's dead processes; returns what was removed.
    Blocking: run it in a thread."""
    host = socket.gethostname()
    if spooldirectory:
        base = os.path.join(spooldirectory, "fills")
        candidates = [
            (name, os.path.join(base, name))
            for name in _listdir(base)
            if left_by_dead_process(name, host)
        ]
    else:
        base = tempfile.gettempdir()
        candidates = [
            (name, os.path.join(base, name))
            for name in _listdir(base)
            if name.startswith(TEMP_PREFIX) and left_by_dead_process(name[len(TEMP_PREFIX) :], host)
        ]
    removed = []
    for _name, path in candidates:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
            removed.append(path)
    if removed:
        log.info("removed the fill spool of stopped processes: {paths}", paths=", ".join(removed))
    return removed


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
