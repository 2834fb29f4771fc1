"""
Room for many connections: the soft limit on open files raised to the hard limit at start-up.

Each connection holds a file descriptor, and many systems start services with a soft limit of
1,024 while the hard limit is far higher (systemd: 1,024 soft, 524,288 hard).  Past the soft
limit ``accept`` fails and clients wait; raising it is what nginx's
``worker_rlimit_nofile`` and Go's runtime (since 1.19) do.  The hard limit is left alone: only
the administrator may raise it (``LimitNOFILE=`` in a systemd unit, ``ulimit -Hn``).
"""

from __future__ import annotations

import resource


def raise_open_files_limit() -> tuple[int, int]:
    """Set the soft RLIMIT_NOFILE to the hard one; ``(before, after)`` (equal: nothing done)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a sandbox refusing it: keep what we have
        return soft, soft
    return soft, hard
