"""
twistd's ``--logfile`` in whole lines, also while the disk is full.

twistd writes each event to a `twisted.python.logfile.LogFile` with one unbuffered write and
never looks at how much of it went: on a full disk the kernel takes the part that fits in the
file's last block, and the next event written once there is room again is appended to that
fragment (``... agent=- a2026-12-06T11:43:26+0000 [registry.ops.health#info] ...``), while
the events that could not be written leave no trace.  `WholeLineLogFile` writes the rest of a
short write, takes the fragment of an event that failed back out of the file (or, when even
that fails, starts the next event on a new line), and writes one line counting the events
dropped before the first event it can write again.

twistd uses its application's ``ILogObserver`` component, when there is one, in place of the
observer it would make from ``--logfile``.  The service ``makeService`` returns is the only
object of ours that twistd adds to that application (``setServiceParent``), so `whole_lines`
wraps it in one that sets the component there.  (twistd's ``--logger`` option cannot carry
it: twistd imports that option's value by name once the plugin's options are parsed.)
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver, formatTime, textFileLogObserver
from twisted.python import threadable
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from registry.server.exit import exit_now

NAMESPACE = "registry.server.log_file"


class WholeLineLogFile(LogFile):
    """
    twistd's rotating log file (same rotation by size, same SIGUSR1), whose events are whole
    lines or absent (see the module).  One `write` is one event: that is how twistd's file
    observer writes.
    """

    synchronized = ["write"]  # as LogFile's: events from threads (the storage's) write too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._dropped = 0  # events not written since the last one that was
        self._dropped_since = 0.0
        self._error = ""
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _openFile(self) -> None:
        super()._openFile()  # type: ignore[no-untyped-call]
        self._torn = False  # the file ends in the middle of a line

    def write(self, data: str | bytes) -> None:
        if self.shouldRotate():  # type: ignore[no-untyped-call]
            self.flush()  # type: ignore[no-untyped-call]
            self.rotate()  # type: ignore[no-untyped-call]
        if isinstance(data, str):
            data = data.encode("utf-8")
        # Written at once with the event: the count is never left in the file without it.
        out = (b"\n" if self._torn else b"") + self._dropped_line() + data
        written = 0
        try:
            while written < len(out):
                taken = self._file.write(out[written:])
                if not taken:  # never for a file; but no endless loop over one that would
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                written += taken
        except OSError as exc:
            self._failed(out, written, exc)
            return
        self.size += written
        self._torn = not out.endswith(b"\n")
        self._dropped = 0

    def _failed(self, out: bytes, written: int, exc: OSError) -> None:
        if not self._dropped:
            self._dropped_since = time.time()
        self._dropped += 1
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self._error = f"{code} ({exc.strerror})" if exc.strerror else code
        if not written:
            return
        try:  # part of it went in: take that part out again
            end = self._file.tell()
            os.ftruncate(self._file.fileno(), end - written)
            self._file.seek(end - written)
        except OSError:  # it stays: the next event starts on a line of its own
            self.size += written
            self._torn = not out[:written].endswith(b"\n")

    def _dropped_line(self) -> bytes:
        if not self._dropped:
            return b""
        line = (
            f"{formatTime(time.time())} [{NAMESPACE}#warn] log events dropped "
            f"count={self._dropped} since={formatTime(self._dropped_since)} "
            f"error={self._error}\n"
        )
        return line.encode("utf-8")


threadable.synchronize(WholeLineLogFile)


def twistd_log_path(twistd: Mapping[str, Any]) -> str | None:
    """
    The file twistd logs to (``twistd``: its parsed options): ``--logfile``, or twistd.log
    for a daemon; None when it logs elsewhere (standard output, syslog, a ``--logger``).
    """
    if twistd.get("logger") or twistd.get("syslog"):
        return None
    path = twistd.get("logfile") or ""
    if path == "-" or (twistd.get("nodaemon") and not path):
        return None
    return str(path or "twistd.log")


def open_observer(path: str) -> ILogObserver:
    """What twistd's ``--logfile PATH`` makes, on a `WholeLineLogFile`."""
    log_file = WholeLineLogFile.fromFullPath(path)  # type: ignore[no-untyped-call]
    if not signal.getsignal(signal.SIGUSR1):  # twistd's own rotation, unless taken already

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    observer: ILogObserver = textFileLogObserver(log_file)
    return observer


class _LoggingWholeLines(MultiService):
    """The service ``makeService`` made, which gives twistd's application its log observer
    as it is added there (twistd starts logging right after)."""

    def __init__(self, service: IService, path: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._path = path
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):  # twistd's application
            try:
                observer = open_observer(self._path)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                exit_now(f"cannot open the log file {self._path}: {reason}")
            parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]


def whole_lines(service: IService, twistd: Mapping[str, Any]) -> IService:
    """``service``, made to log in whole lines where twistd would log to a file."""
    path = twistd_log_path(twistd)
    if path is None:
        return service
    return _LoggingWholeLines(service, path)
