"""
What /proc says of a process: whether it exited (a zombie), when it started, and which pid
namespace this process is in.

A pid alone does not name a process for long: a restarted container's registry is pid 1 again,
as its killed predecessor was, and any pid is given to another process sooner or later.  With
its start time (clock ticks since boot, the 22nd field of ``/proc/<pid>/stat``) it names one
process for as long as the host runs.  Without /proc (not Linux) these know nothing: None and
False, and callers keep to the pid.

Pids and start times compare only within one pid namespace: two containers sharing a host name
(host networking) are both pid 1, each in a namespace of its own, and neither sees the other's
processes.  A record made in another namespace (`pid_namespace` differs) says nothing this
process can check: only its age can tell it is stale.
"""

from __future__ import annotations

import os


def stat_fields(pid: int | str) -> list[bytes]:
    """``/proc/<pid>/stat`` from its third field (the state) on; empty when not readable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()
    except OSError:  # gone meanwhile, or no /proc
        return []


def start_time(pid: int | str) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when not known."""
    fields = stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits for its parent to reap it."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] == b"Z"


def pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[4026531836]``); None when not known."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def boot_id() -> str | None:
    """This boot of this machine's kernel (random at each boot, so two machines differ even
    where their host names and root pid namespaces are the same); None when not known."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip() or None
    except OSError:
        return None


def gone(pid: int, started: int | None, namespace: str | None) -> bool:
    """
    Whether a record written on this host by process ``pid`` (with its `start_time` and
    `pid_namespace`, None in records of versions that did not write them) names a process
    that no longer runs: none with its pid, a zombie, or one started at another time (the pid
    since given to another process, this one included).  A record of another pid namespace
    is never judged gone: its pid means nothing here.
    """
    if namespace is not None and namespace != pid_namespace():
        return False
    now = start_time(pid) if started is not None else None
    if now is not None and now != started:
        # (This pid started at another time: an earlier process of this very pid, a
        # container's pid 1 before its restart, included.  None: gone, or hidden by /proc's
        # hidepid: asked below.)
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, as another user
        return False
    return is_zombie(pid)
