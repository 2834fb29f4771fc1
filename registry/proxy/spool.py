"""
The local folder fills are spooled to on S3 (`registry.proxy.service.fill_spool`), and what
processes killed with ``kill -9`` left in it.

Each process spools into a folder of its own, named ``<host>-<pid>``: under
``<spooldirectory>/fills/``, or ``txregistry-fills-<host>-<pid>-*`` in the system's temporary
folder.  At start a process removes the folders of processes of the same host that no longer
run (a clean stop removes nothing: the spool files of finished fills are deleted as they end,
and a process that stops mid-fill is one whose fills were interrupted anyway).  Folders of
other hosts (several machines or containers sharing the folder) are left to their own host.

Unless the caches keep no partial fills (``partial_age = 0``), the spool files of a dead
process's fills are first moved into this process's folder, as ``partials/<alg>-<hex>``
(`registry.proxy.partials`): the next fill of that blob here takes them and asks the upstream
only for the rest.  They belong to this process from then on (a live process's folder is never
touched by another), and go with its folder, to the next process, when it dies in turn.
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


PARTIALS = "partials"


def sweep(spooldirectory: str, keep_into: str | None = None) -> list[str]:
    """Remove the spool folders of this host's dead processes; returns what was removed.
    With ``keep_into`` (this process's spool folder), their fills' files are moved to its
    ``partials`` first.  Blocking: run it in a thread."""
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
        if keep_into is not None:
            _keep(path, os.path.join(keep_into, PARTIALS))
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
            removed.append(path)
    if removed:
        log.info("removed the fill spool of stopped processes: {paths}", paths=", ".join(removed))
    return removed


def _keep(folder: str, partials: str) -> None:
    """Move the fill files of a dead process's spool ``folder`` (and the partials it had
    kept itself) into ``partials``, one per digest, the longer of two."""
    from registry.proxy.partials import digest_of_fill, partial_name

    found: list[tuple[str, str]] = []
    for name in _listdir(folder):
        digest = digest_of_fill(name)
        if digest is not None:
            found.append((os.path.join(folder, name), partial_name(digest)))
    kept = os.path.join(folder, PARTIALS)
    found += [(os.path.join(kept, name), name) for name in _listdir(kept)]
    for path, name in found:
        try:
            size = os.stat(path).st_size
            os.makedirs(partials, exist_ok=True)
            target = os.path.join(partials, name)
            try:
                other = os.stat(target).st_size
            except FileNotFoundError:
                other = -1
            if size > other:
                os.replace(path, target)
        except OSError as exc:
            log.info("keeping the spooled fill {path} failed: {error}", path=path, error=exc)


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
