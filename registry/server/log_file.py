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

It also rotates unlike twistd's: at ``[log] rotatesize`` (10 MiB), keeping ``[log]
rotatekeep`` rotated files (10) where twistd keeps every one, at a cost that does not grow with
them, and on SIGUSR1 after logrotate moved the file it only opens a new one
(`registry.server.log_rotation`).

twistd uses its application's ``ILogObserver`` component, when there is one, in place of the
observer it would make from ``--logfile``.  The service ``makeService`` returns is the only
object of ours that twistd adds to that application (``setServiceParent``), so `whole_lines`
wraps it in one that sets the component there.  (twistd's ``--logger`` option cannot carry
it: twistd imports that option's value by name once the plugin's options are parsed.)

A worker of ``[http] workers > 1`` marks each of its events (`WorkerMark`): the workers write
to one standard output (or syslog), and a line must say which worker wrote it.  The mark goes
through the same component, in front of whatever observer twistd would have used (the file,
standard output, syslog).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import (
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    formatTime,
    textFileLogObserver,
)
from twisted.python import threadable
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile
from zope.interface import implementer

from registry.server import log_rotation
from registry.server.exit import exit_now

NAMESPACE = "registry.server.log_file"


class WholeLineLogFile(LogFile):
    """
    twistd's rotating log file (rotation by size, and on SIGUSR1), whose events are whole
    lines or absent (see the module), and whose rotation keeps ``maxRotatedFiles`` files.
    One `write` is one event: that is how twistd's file observer writes.
    """

    # As LogFile's: events from threads (the storage's) write too, and SIGUSR1 rotates.
    synchronized = ["write", "rotate"]

    def __init__(
        self,
        name: str,
        directory: str,
        rotateLength: int = log_rotation.DEFAULT_SIZE,
        defaultMode: int | None = None,
        maxRotatedFiles: int = log_rotation.DEFAULT_KEEP,
    ) -> None:
        self._dropped = 0  # events not written since the last one that was
        self.mark = ""  # what opens the bracket of the lines written here (`open_observer`)
        self._dropped_since = 0.0
        self._error = ""
        self._notice = b""  # a line about the file itself, written before the next event
        super().__init__(  # type: ignore[no-untyped-call]
            name, directory, rotateLength, defaultMode, max(1, maxRotatedFiles)
        )

    def _openFile(self) -> None:
        super()._openFile()  # type: ignore[no-untyped-call]
        self._torn = False  # the file ends in the middle of a line
        self._postponed = 0  # bytes written when a rotation failed: the next waits past them

    def shouldRotate(self) -> bool:
        return bool(self.rotateLength) and self.size >= self.rotateLength + self._postponed

    def rotate(self) -> None:
        """
        FILE becomes FILE.1 (FILE.N becomes FILE.N+1, FILE.KEEP is removed) and a new FILE
        is opened; or only the new FILE when another program moved FILE away already.  On
        failure events go on to the file they went to, with one line saying why, and the
        next rotation by size waits for another ``rotateLength`` bytes.
        """
        held = self._file
        try:
            log_rotation.rotate(self.path, self.maxRotatedFiles, held.fileno())
            self._openFile()
        except OSError as exc:
            if self._file is not held:  # opened, then failed (seeking to its end)
                with contextlib.suppress(OSError):
                    self._file.close()
            self._file = held  # still open: FILE, or FILE.1 when only the new FILE failed
            self._postponed = self.size
            self._notice = (
                f"{formatTime(time.time())} [{NAMESPACE}#warn] log file not rotated: "
                f"{log_rotation.describe(exc)}\n"
            ).encode()
            return
        held.close()

    def write(self, data: str | bytes) -> None:
        if self.shouldRotate():
            self.rotate()
        if isinstance(data, str):
            data = data.encode("utf-8")
        # Written at once with the event: the count is never left in the file without it.
        out = (b"\n" if self._torn else b"") + self._dropped_line() + self._notice + data
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
        self._notice = b""

    def _failed(self, out: bytes, written: int, exc: OSError) -> None:
        if not self._dropped:
            self._dropped_since = time.time()
        self._dropped += 1
        self._error = log_rotation.describe(exc)
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
            f"{formatTime(time.time())} [{self.mark}{NAMESPACE}#warn] log events dropped "
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


def open_observer(
    path: str,
    rotate_size: int = log_rotation.DEFAULT_SIZE,
    rotate_keep: int = log_rotation.DEFAULT_KEEP,
    mark: str = "",
) -> ILogObserver:
    """What twistd's ``--logfile PATH`` makes, on a `WholeLineLogFile` that rotates at
    ``rotate_size`` bytes (0: only on SIGUSR1) and keeps ``rotate_keep`` rotated files;
    ``mark`` (a worker's ``w1``) opens the bracket of the lines the file writes itself, as
    `WorkerMark` opens the others."""
    log_file = WholeLineLogFile.fromFullPath(  # type: ignore[no-untyped-call]
        path, rotateLength=rotate_size, maxRotatedFiles=rotate_keep
    )
    log_file.mark = f"{mark} " if mark else ""
    if not signal.getsignal(signal.SIGUSR1):  # twistd's own rotation, unless taken already

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    observer: ILogObserver = textFileLogObserver(log_file)
    return observer


@implementer(ILogObserver)
class WorkerMark:
    """
    Worker ``worker`` (process ``pid``)'s events, marked before ``observer`` sees them: the
    fields ``worker`` and ``worker_pid`` for structured observers, and ``wN`` at the start of
    the bracketed system of a text line (``[w1 registry.http.request#info] access ...``), so
    that lines of several workers interleaved in one output say whose they are, one line per
    event still.  Each event is copied: other observers of the same event see it unchanged.
    """

    def __init__(self, observer: ILogObserver, worker: int, pid: int) -> None:
        self._observer = observer
        self._worker = worker
        self._pid = pid
        self._mark = f"w{worker}"

    def __call__(self, event: LogEvent) -> None:
        marked = dict(event)
        system = marked.get("log_system")
        if system is None:  # what the text formats show in its place
            level = marked.get("log_level")
            name = level.name if level is not None else "-"
            system = f"{marked.get('log_namespace', '-')}#{name}"
        marked["log_system"] = f"{self._mark} {system}"
        if "system" in marked:  # a legacy event: legacy observers (syslog) read this one
            marked["system"] = marked["log_system"]
        marked.setdefault("worker", self._worker)
        marked.setdefault("worker_pid", self._pid)
        self._observer(marked)


def twistd_default_observer(twistd: Mapping[str, Any]) -> ILogObserver:
    """
    The observer twistd makes for a process that logs to syslog or to standard output (a
    worker: always ``-n``), made here so that a worker's mark can be put in front of it.
    """
    if twistd.get("syslog"):
        from twisted.python import syslog

        emit = syslog.SyslogObserver(twistd.get("prefix") or "twisted").emit
        return LegacyLogObserverWrapper(emit)  # type: ignore[arg-type]  # a legacy observer
    import sys

    observer: ILogObserver = textFileLogObserver(sys.stdout)
    return observer


class _LoggingWholeLines(MultiService):
    """The service ``makeService`` made, which gives twistd's application its log observer
    (``make_observer()``) as it is added there (twistd starts logging right after)."""

    def __init__(
        self, service: IService, path: str | None, make_observer: Callable[[], ILogObserver]
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._path = path
        self._make_observer = make_observer
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):  # twistd's application
            try:
                observer = self._make_observer()
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                exit_now(f"cannot open the log file {self._path}: {reason}")
            parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]


def whole_lines(
    service: IService,
    twistd: Mapping[str, Any],
    rotate_size: int = log_rotation.DEFAULT_SIZE,
    rotate_keep: int = log_rotation.DEFAULT_KEEP,
    worker: int | None = None,
) -> IService:
    """``service``, made to log in whole lines where twistd would log to a file (rotated at
    ``rotate_size`` bytes, ``rotate_keep`` rotated files kept: ``[log]``); in worker
    ``worker`` of a supervisor, with every event marked as that worker's (`WorkerMark`)."""
    path = twistd_log_path(twistd)

    def base() -> ILogObserver:
        if path is None:
            return twistd_default_observer(twistd)
        return open_observer(path, rotate_size, rotate_keep)

    if worker is None or twistd.get("logger"):  # --logger: the operator's own observer
        if path is None:
            return service
        return _LoggingWholeLines(service, path, base)
    pid = os.getpid()

    def marked() -> ILogObserver:
        if path is None:
            return WorkerMark(base(), worker, pid)
        opened = open_observer(path, rotate_size, rotate_keep, mark=f"w{worker}")
        return WorkerMark(opened, worker, pid)

    return _LoggingWholeLines(service, path, marked)
