"""
twistd's pid file at start-up: a file left by a process that is gone does not stop a start.

twistd (``checkPID``) refuses to start while its pid file names any live process, in five
lines.  kill -9, an OOM kill or a power cut leaves the file behind, and the pid in it is often
alive again by the next start: in a container the restarted registry gets the same low pid
(PID 1 after ``docker restart``), so the file names the very process reading it, or another
program was given that pid meanwhile.  Such a file is removed here before twistd looks.  A file
naming a running twistd (or the registry's supervisor) is another registry: refused with one
line and exit status 1 (`registry.server.exit`).
"""

from __future__ import annotations

import contextlib
import os
import sys

from twisted.logger import Logger

from registry.server.exit import exit_now

log = Logger()

# Program names a pid file of ours may name: twistd under any of its launchers, our command.
_PROGRAMS = frozenset({"twistd", "twistd3", "txregistry"})


def _check_writable(path: str) -> None:
    """twistd writes the pid file once the application runs and fails there with a traceback
    of twenty lines: a pid file it could not write is named here, in one line, before."""
    folder = os.path.dirname(os.path.abspath(path))
    why = None
    if not os.path.isdir(folder):
        why = f"no folder {folder}"
    elif os.statvfs(folder).f_flag & os.ST_RDONLY:
        why = f"{folder} is on a read-only file system"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"{folder} is not writable by this user"
    elif os.path.isdir(path):
        why = "a folder is there"
    elif os.path.exists(path) and not os.access(path, os.W_OK):
        why = "it is not writable by this user"
    if why is not None:
        exit_now(
            f"cannot write the pid file {path}: {why} (give --pidfile a path this user may "
            "write, or --pidfile= for none)"
        )


def clear_stale_pidfile(path: str) -> None:
    """
    Remove the pid file ``path`` (twistd's ``--pidfile``; empty: none) when it names this
    process or a live process that is not a twistd, or is empty, or holds no number; leave
    with one line when it names a running twistd.  Anything else (no file, a dead pid) is left
    to twistd, which removes a dead pid's file itself.
    """
    if not path:
        return
    _check_writable(path)
    try:
        with open(path) as file:
            text = file.read()
    except OSError:
        return
    if not text.strip():
        # What a crash (or a full disk) while twistd wrote it leaves: names nobody.
        log.warn("removed the stale pid file {path}: it is empty", path=path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    try:
        pid = int(text)
    except ValueError:
        # Names nobody either (a damaged file): twistd would refuse every start over it.
        log.warn(
            "removed the stale pid file {path}: it holds no process id ({text!r})",
            path=path,
            text=text.strip()[:40],
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    if pid > 0 and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass  # alive, another user's: its command line says what it is
        command = command_line(pid)
        if command is None or runs_twistd(command):
            exit_now(
                f"another twistd server is running, PID {pid} (pid file {path}): stop it, or "
                "give this one a pid file of its own (--pidfile)"
            )
        who = os.path.basename(command[0]) if command else "a process without a command line"
    else:
        who = "this process"
    log.warn(
        "removed the stale pid file {path}: pid {pid} is {who} now, not the twistd that wrote it",
        path=path,
        pid=pid,
        who=who,
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def command_line(pid: int) -> list[str] | None:
    """The arguments of process ``pid`` (Linux's /proc), or None where they cannot be read
    (another system, a /proc that hides other users' processes, the process gone)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return [word.decode(errors="replace") for word in raw.split(b"\0")[:-1]]


def runs_twistd(command: list[str]) -> bool:
    """
    Whether ``command`` is a twistd or the registry: ``twistd``/``txregistry`` run directly or
    by an interpreter, ``python -m twisted``, or ``python -c`` code that starts twistd or the
    supervisor (which replaces twistd in the same process: the pid file names it then).
    """
    head = command[:4]  # the program, an interpreter and its options
    for index, word in enumerate(head):
        if os.path.basename(word) in _PROGRAMS:
            return True
        option = head[index - 1] if index else ""
        if option == "-m" and word in ("twisted", "registry.cli"):
            return True
        if option == "-c" and ("twistd" in word or "registry.server" in word):
            return True
    return False
