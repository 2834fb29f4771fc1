"""
Local files and folders named after the process that made them, ``<host>-<pid>``, so that a
process can remove what processes of its host killed with ``kill -9`` left behind (a clean
stop leaves nothing).  Names of other hosts (several machines or containers sharing a folder)
are left to their own host: their process numbers mean nothing here.
"""

from __future__ import annotations

import os
import socket


def owner() -> str:
    """This process's ``<host>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def left_by_dead_process(name: str, host: str) -> bool:
    """``<host>-<pid>[-suffix]`` of ``host`` whose process no longer runs."""
    if not name.startswith(host + "-"):
        return False
    pid = name[len(host) + 1 :].split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not running(int(pid))
