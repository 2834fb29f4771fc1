"""
Noticing that a configuration file changed, cheaply.

The htpasswd and policy files are edited by hand while the registry runs; re-reading them on
every request would cost a file parse per request, and never re-reading them means a restart
to revoke a password.  A ``stat`` at most once per interval (on an injected clock, so tests can
move time) is the middle ground registry:2 users ask for.
"""

from __future__ import annotations

import os

import attrs
from twisted.internet.interfaces import IReactorTime

# What identifies one version of a file: replacing it (editors rename a temporary file over it),
# rewriting it in place, or touching it all change at least one of these; so does a chmod
# (ctime, mode), which is how a file that could not be read becomes readable again.
_Signature = tuple[int, int, int, int, int, int]


def _signature(path: str) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        # Missing, a folder on the way that is now a file, no permission, ...: the reader's
        # open() meets the same error and fails closed, naming it.  Stat-ing must not raise
        # into a request (a 500), and must not stop the next change from being noticed.
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_size)


@attrs.define
class FileWatcher:
    """Answers "has ``path`` changed since I last said so?", stat-ing at most every ``interval``."""

    path: str
    clock: IReactorTime
    interval: float = 1.0
    _last_check: float | None = attrs.field(default=None, init=False)
    _seen: _Signature | None = attrs.field(default=None, init=False)
    _first: bool = attrs.field(default=True, init=False)

    def changed(self) -> bool:
        """True the first time, then whenever the file's identity, mtime or size moved."""
        now = self.clock.seconds()
        recent = self._last_check is not None and now - self._last_check < self.interval
        if not self._first and recent:
            return False
        self._last_check = now
        sig = _signature(self.path)
        if self._first or sig != self._seen:
            self._first = False
            self._seen = sig
            return True
        return False

    def exists(self) -> bool:
        return self._seen is not None
