"""
The supervisor of ``[http] workers`` processes (see `registry.server.workers` for the design).

It runs on the standard library alone (`registry.server.loop`): ``twistd registry`` binds the
listeners with Twisted's endpoints (`registry.server.handoff`), then replaces itself with this
program (``exec``: same pid, same pidfile, the bound sockets inherited), which needs neither
Twisted nor the web stack: about 12 MiB resident where a Twisted process idles at 35.

Start: start worker 0 and wait until it serves (it probes the storage: a failure there is its
one line, and the supervisor exits 1 without adding another), then start the others, and log
"listening" once all serve.  Any worker that ends before it first serves fails the start
the same way (`_fail_quietly`: its own reason, or its pid and how it ended).

Supervision: a worker that exits is replaced in the same slot (same worker number, so the
same notification queue), after a pause that doubles with each exit in a row of that slot
(0.5 s up to 30 s) and resets once a replacement serves.  Each exit is one log line.
A serving worker whose heartbeat on the accept board has been silent for longer than ``[http]
worker_timeout`` (its reactor blocked, or the process stopped) is killed with SIGKILL, after
one line naming it and why, and replaced as if it had crashed: it accepts nothing, and the
requests it holds would wait for ever (gunicorn's ``timeout`` does the same).

Signals:

- SIGTERM (or SIGINT): close the supervisor's copies of the listening sockets, send SIGTERM
  to every worker (each drains its requests for up to ``[http] draintimeout``), wait for all
  of them, exit 0.  A worker still running ten seconds past the drain timeout is killed.
- A second SIGINT during that drain (Ctrl-C twice), or SIGQUIT at any time: stop at once.
  Every worker is told over its control pipe to cut its connections (then it exits as after
  its drain); one still running `CUT_GRACE` seconds later is killed.  The exit status is
  128 + the signal's number (130, 131): requests were cut.  A second SIGTERM does not cut:
  service managers and orchestrators send SIGTERM to ask for the graceful stop (some send
  it again, to the whole process group or on a retry) and follow it with SIGKILL after
  their own timeout, so a repeated SIGTERM is no sign that someone wants the drain cut.
- SIGHUP: a rolling restart.  First the configuration is checked as a worker's start-up
  checks it (`_check_config`: the worker's own program, in a process of its own that stops
  before serving): a mistake there would stop every new worker, so the SIGHUP is refused
  with one error line and no worker is touched.  Then one worker at a time is drained and
  replaced by a new process, which reads the configuration file and certificates again; the
  next waits until the new one serves.  The listeners themselves and the number of workers
  stay as they are (the check refuses an ``[http] port`` a start would refuse, and says in
  one warning each that a changed ``[http] port``, ``[debug] addr`` or ``[http] workers``
  waits for a restart; new workers serve, and name, the supervisor's sockets).  A new
  worker that still exits before serving (what the check does not do: the storage probe; or
  the files changed again meanwhile) sends its one-line reason over the control pipe and
  stops the rolling restart with one error line naming it: the workers not replaced yet keep
  serving with what they loaded, and the failed slot is retried with the back-off of a
  crashed worker.  A stop (SIGTERM) during a rolling restart ends it there: its new worker
  stops with the others, without an error.
- SIGUSR1: rotate the supervisor's log file (`registry.server.log_rotation`), and have every
  worker rotate its own: each is sent SIGUSR1 once it serves (before that, twistd in it may not
  have taken the signal over yet, and its default action ends a process).  Only with
  ``--logfile``: a worker logging to syslog or standard output has nothing to rotate.

Accepting in turn: the supervisor creates the board on which the workers post their open
connections (`registry.server.balance`), hands each worker a descriptor of it, and clears a
worker's slot when it exits, so that the others stop leaving new connections to it at once.

Questions the workers ask (over their control pipe): the whole tree's metrics (asked of every
serving worker and merged, `registry.ops.metrics_tree`; a worker that does not answer counts
with its last answer, one that exited with its last counters), how many workers serve and why
each other one does not (readiness: a worker that drains, whose heartbeat on the board is
stale, that exited or is starting, does not), and whether the whole instance stops (SIGTERM to
the supervisor), as opposed to one worker being replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Generator
from functools import partial
from typing import TYPE_CHECKING, Any

from registry.server import board, daemon_status, log_rotation
from registry.server.loop import Event, Loop, Task, Timer, Wait
from registry.server.pipe_channel import PipeChannel, Reply
from registry.server.worker_env import (
    CONTROL_IN,
    CONTROL_OUT,
    FIRST_LISTENER_FD,
    WORKER_ENVIRONMENT,
)

if TYPE_CHECKING:
    from registry.ops.metrics_tree import TreeMemory, WorkerScrape

# The variable ``twistd registry`` hands the supervisor's settings over in.
SPEC_ENVIRONMENT = "TXREGISTRY_SUPERVISOR"
# Signals ``twistd registry`` blocks before its exec into the supervisor, which unblocks them
# once it handles them (`Supervisor.start`): until then their default would end it unheard.
HELD_ACROSS_EXEC = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1})
# The worker's side (WORKER_ENVIRONMENT, CONTROL_IN, ...): registry.server.worker_env.
# Descriptors the supervisor keeps are moved at least this high, out of the way of the
# numbers they get in a worker.
HIGH_FD = 100

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Past the drain timeout, how long a worker may take to exit before it is killed.
STOP_GRACE = 10.0
# How long a started worker may take to serve (imports, storage probe) before a rolling
# restart moves on anyway.
START_TIMEOUT = 120.0
# How long a SIGHUP's configuration check may take (it imports the registry and reads its
# files, about a second) before the SIGHUP is refused.
CHECK_TIMEOUT = 60.0
# After a second SIGINT or a SIGQUIT: how long a worker told to cut its connections may take
# to exit (it still writes its state down) before it is killed.
CUT_GRACE = 5.0
# A worker's own scrape, inside a worker's question (which waits ASK_TIMEOUT = 5 s).
SCRAPE_TIMEOUT = 3.0
# How often the supervisor looks for workers silent past ``[http] worker_timeout`` (at most).
WATCH_EVERY = 1.0
NAMESPACE = "registry.server.supervisor"
EXIT_STARTUP_FAILED = 1


class Log:
    """Lines as twistd writes them (``TIME [registry.server.supervisor#LEVEL] text``), to the
    file, standard output or syslog that ``twistd`` was told to use; a file rotates as the
    workers' do (``[log] rotatesize`` and ``rotatekeep``: ``rotate_size``, ``rotate_keep``)."""

    def __init__(self, target: dict[str, Any]) -> None:
        self._path: str | None = target.get("file")
        self._syslog = "syslog" in target
        self._file: Any = None
        self._rotate_size = int(target.get("rotate_size", log_rotation.DEFAULT_SIZE))
        self._rotate_keep = int(target.get("rotate_keep", log_rotation.DEFAULT_KEEP))
        self._size = 0
        self._postponed = 0  # the size when a rotation failed: the next waits past it
        if self._syslog:
            import syslog

            syslog.openlog(str(target["syslog"]), 0, syslog.LOG_USER)
        elif self._path:
            self._open()
        else:
            self._file = sys.stdout

    @property
    def to_file(self) -> bool:
        """Whether this logs to ``--logfile`` (then so do the workers, to FILE.workerN)."""
        return self._path is not None

    def _open(self) -> None:
        assert self._path is not None
        self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = self._file.tell()
        self._postponed = 0

    def __call__(self, level: str, text: str) -> None:
        if self._syslog:
            import syslog

            priority = {"error": syslog.LOG_ERR, "warn": syslog.LOG_WARNING}
            syslog.syslog(priority.get(level, syslog.LOG_INFO), f"[{NAMESPACE}#{level}] {text}")
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = f"{stamp} [{NAMESPACE}#{level}] {text}\n"
        try:
            self._file.write(line)
            self._file.flush()
        except (OSError, ValueError):
            return  # a closed output or a full disk must not stop the supervisor
        if self._path is not None:
            self._size += len(line.encode("utf-8"))
            if self._rotate_size and self._size >= self._rotate_size + self._postponed:
                self.rotate()

    def rotate(self) -> None:
        """FILE becomes FILE.1 (FILE.N becomes FILE.N+1, FILE.KEEP is removed) and a new FILE
        is opened; or only the new FILE when logrotate moved FILE away already.  A failure
        leaves the lines going where they went, and says why there."""
        if self._path is None or self._file is None:
            return
        held = self._file
        try:
            log_rotation.rotate(self._path, self._rotate_keep, held.fileno())
            self._open()
        except OSError as exc:
            self._file = held
            self._postponed = self._size
            self("warn", f"log file not rotated: {log_rotation.describe(exc)}")
            return
        with contextlib.suppress(OSError):
            held.close()


def _describe_end(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _high(fd: int) -> int:
    """``fd`` moved to a number at least `HIGH_FD`, closed on exec."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    os.close(fd)
    return moved


class Worker:
    """One worker process seen from the supervisor."""

    def __init__(self, slot: int, pid: int, channel: PipeChannel) -> None:
        self.slot = slot
        self.pid = pid
        self.channel = channel
        self.serving = False
        self.stopping = False  # sent SIGTERM by the supervisor: it drains, then exits
        self.failure: str | None = None  # the line it gave for not starting
        self.killed = False  # by the supervisor, for a heartbeat silent too long
        self.rotate_pending = False  # a SIGUSR1 to pass on once it serves
        self.served = Event()  # fires True once it serves, False if it ended first
        self.ended = Event()  # fires with its wait status

    def signal(self, signum: int) -> None:
        if not self.ended.fired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


class Supervisor:
    """Runs ``count`` workers over inherited listening sockets, replaces those that exit."""

    def __init__(self, loop: Loop, spec: dict[str, Any], log: Log) -> None:
        self.loop = loop
        self.log = log
        self.count = int(spec["count"])
        self.drain_timeout = float(spec["drain_timeout"])
        # 0: a worker silent on the board is reported, never killed.
        self.worker_timeout = float(spec.get("worker_timeout", 0.0))
        self._commands: list[list[str]] = spec["commands"]
        self._announce: str = spec["announce"]
        # The listeners are the file's [http] port (no --port): a SIGHUP's check reads it.
        self._ports_from_file = bool(spec.get("ports_from_file", False))
        # (description, our descriptor, family) for the registry's ports, then [debug]'s.
        self._listeners = [
            (item["description"], _high(item["fd"]), item["family"]) for item in spec["listeners"]
        ]
        debug = spec.get("debug")
        self._debug = (debug["description"], _high(debug["fd"]), debug["family"]) if debug else None
        self._environ = {k: v for k, v in os.environ.items() if k != SPEC_ENVIRONMENT}
        self.workers: dict[int, Worker] = {}
        self.restarts = 0
        self.status = 0
        self._failures: dict[int, int] = {}
        # Each slot's last worker to exit, until a new one serves there: (pid, how it ended),
        # for readiness to name it.
        self._exited: dict[int, tuple[int, str]] = {}
        self._respawns: dict[int, Timer] = {}
        self._started = False  # every worker served once: start-up is over
        self._stopping = False
        self._cutting = False  # a second SIGINT or a SIGQUIT: connections cut, no drain
        self._rolling = False
        # A SIGHUP's configuration check running (`_check_config`), a process of its own.
        self._check: Worker | None = None
        self._hup_again = False  # a SIGHUP arrived during the rolling restart running
        self._hup_waiting = False  # a SIGHUP arrived before every worker served once
        self._holding: set[int] = set()  # slots a rolling restart replaces itself
        # Slots a rolling restart started again, until their new worker serves: it must not
        # serve a certificate that has expired (the one it replaces may not have).
        self._renewing: set[int] = set()
        # The accept board (`registry.server.balance`): only where workers share a socket.
        self._board = -1
        if self.count > 1 and board.available():
            self._board = _high(board.create_board(self.count))
        # Each worker's last scrape and the exited workers' counts (registry.ops.metrics_tree),
        # made at the first scrape.
        self._memory: TreeMemory | None = None

    # Start

    def start(self) -> None:
        self.loop.on_signal(signal.SIGCHLD, self._reap)
        self.loop.on_signal(signal.SIGTERM, self._stop_requested)
        self.loop.on_signal(signal.SIGINT, self._stop_requested)
        self.loop.on_signal(signal.SIGQUIT, self._cut)
        self.loop.on_signal(signal.SIGHUP, self._hup)
        self.loop.on_signal(signal.SIGUSR1, self._usr1)
        # Delivered now, if one came while the exec's interpreter started (`HELD_ACROSS_EXEC`).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_ACROSS_EXEC)
        self.loop.run_task(self._start())
        if self._board >= 0 and self.worker_timeout > 0:
            self.loop.call_later(self._watch_every(), self._watch)

    def _usr1(self, signum: int) -> None:
        """Rotate the log files: the supervisor's, and each worker's (FILE.workerN)."""
        self.log.rotate()
        if not self.log.to_file:
            return
        for worker in self.workers.values():
            if worker.serving:
                worker.signal(signal.SIGUSR1)
            else:  # twistd in it may not handle SIGUSR1 yet: its default would end it
                worker.rotate_pending = True

    def _start(self) -> Task:
        first = self._spawn(0)
        yield Wait(first.served)
        if not first.served.value:
            # Worker 0 said why on stderr (storage probe, configuration): one line, exit 1.
            if not self._stopping:
                self._fail_quietly(first)
            return
        if self._stopping:
            return  # (told to stop while worker 0 started: no other worker is started)
        others = [self._spawn(slot) for slot in range(1, self.count)]
        for worker in others:
            yield Wait(worker.served)
            if not worker.served.value:
                if not self._stopping:
                    self._fail_quietly(worker)
                return
        self._started = True
        self.log("info", self._announce)
        daemon_status.started()
        if self._hup_waiting:
            self._hup_waiting = False
            self._hup(signal.SIGHUP)

    def _fail_quietly(self, worker: Worker) -> None:
        """
        Stop with status 1, after one line.  A worker that gave its reason (stderr has it too)
        is that line; one that gave none (killed by a signal: the OOM killer, an operator; a
        crash) is named with its pid and how it ended.  Either way the start failed rather
        than retried: the service manager (or the ``twistd`` command of a daemon) is told at
        once, and its own restart policy applies, as after any start-up failure.
        """
        worker.channel.read_remaining()  # its reason ("failed") may still be in the pipe
        if worker.failure:
            reason = worker.failure
        else:
            _, how = self._exited.get(worker.slot, (worker.pid, "ended"))
            reason = (
                f"worker {worker.slot} (pid {worker.pid}) exited before serving: {how}; "
                "the registry stops (every worker must serve once for a start to succeed)"
            )
        self.log("error", f"start-up failed: {reason}")
        daemon_status.failed(reason)
        self.status = EXIT_STARTUP_FAILED
        self._stop_requested(None)

    def _worker_spec(self, slot: int) -> tuple[str, list[tuple[int, int]]]:
        """The worker's ``TXREGISTRY_WORKER`` value, and (ours, its number) per descriptor."""
        moves = []
        listeners = []
        fd = FIRST_LISTENER_FD
        for description, own, family in self._listeners:
            moves.append((own, fd))
            listeners.append({"description": description, "fd": fd, "family": family})
            fd += 1
        debug = None
        if self._debug is not None:
            description, own, family = self._debug
            moves.append((own, fd))
            debug = {"description": description, "fd": fd, "family": family}
            fd += 1
        board_fd = -1
        if self._board >= 0:
            moves.append((self._board, fd))
            board_fd = fd
        spec = {
            "worker": slot,
            "workers": self.count,
            "listeners": listeners,
            "debug": debug,
            "supervisor": os.getpid(),
            "board": board_fd,
            # Once serving, the supervisor names a worker's start-up failure in its own log
            # line (`_say_ended`, a SIGHUP's error): the worker then does not print it too.
            "failures_logged": self._started,
            "refuse_expired": slot in self._renewing,
        }
        return json.dumps(spec), moves

    def _launch(
        self, argv: list[str], text: str, moves: list[tuple[int, int]]
    ) -> tuple[int, int, int]:
        """Start ``argv`` with ``text`` as its worker spec and ``moves``' descriptors, and its
        control pipe: (pid, our end to read, our end to write)."""
        to_worker_r, to_worker_w = (_high(fd) for fd in os.pipe())
        from_worker_r, from_worker_w = (_high(fd) for fd in os.pipe())
        moves = [*moves, (to_worker_r, CONTROL_IN), (from_worker_w, CONTROL_OUT)]
        env = dict(self._environ)
        env[WORKER_ENVIRONMENT] = text
        try:
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, own, theirs) for own, theirs in moves],
                # Python ignores SIGPIPE for itself; a child starts with the defaults, and
                # with no signal blocked.
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                setsigmask=(),
            )
        except BaseException:
            os.close(from_worker_r)
            os.close(to_worker_w)
            raise
        finally:
            os.close(to_worker_r)
            os.close(from_worker_w)
        return pid, from_worker_r, to_worker_w

    def _spawn(self, slot: int) -> Worker:
        text, moves = self._worker_spec(slot)
        pid, from_worker_r, to_worker_w = self._launch(self._commands[slot], text, moves)
        handlers = {
            "ready": self._worker_ready,
            "tree_metrics": self._tree_metrics,
            "tree_ready": self._tree_ready,
            "failed": self._worker_failed,
            "final_metrics": self._final_metrics,
        }
        worker = Worker(
            slot, pid, PipeChannel(self.loop, from_worker_r, to_worker_w, handlers, self.log)
        )
        self.workers[slot] = worker
        return worker

    # Questions from workers

    def _worker_ready(self, message: dict[str, Any], reply: Reply) -> None:
        worker = self.workers.get(int(message["worker"]))
        if worker is None or worker.pid != int(message["pid"]):
            return
        worker.serving = True
        self._failures.pop(worker.slot, None)
        self._exited.pop(worker.slot, None)
        self._renewing.discard(worker.slot)
        self.log("info", f"worker {worker.slot} (pid {worker.pid}) serving")
        if worker.rotate_pending:
            worker.rotate_pending = False
            worker.signal(signal.SIGUSR1)
        worker.served.fire(True)

    def _worker_failed(self, message: dict[str, Any], reply: Reply) -> None:
        worker = self.workers.get(int(message["worker"]))
        if worker is not None and worker.pid == int(message["pid"]):
            worker.failure = str(message.get("reason", ""))

    def _silent_for(self, worker: Worker) -> float | None:
        """How long ``worker`` has not renewed its heartbeat on the board, past `board.STALE`
        (stopped, or its reactor blocked); None while it does, or without a board."""
        if self._board < 0:
            return None
        return board.silent_for(self._board, worker.slot, time.monotonic())

    def _tree_metrics(self, message: dict[str, Any], reply: Reply) -> None:
        from registry.ops.metrics_tree import TreeMemory, WorkerScrape

        if self._memory is None:
            self._memory = TreeMemory()
        memory = self._memory
        serving = [w for w in self.workers.values() if w.serving]
        answers: list[WorkerScrape] = []
        silent: list[WorkerScrape] = []
        # A worker known stuck is not asked (it would not answer within SCRAPE_TIMEOUT).
        asked = [w for w in serving if self._silent_for(w) is None]
        for worker in serving:
            if worker not in asked:
                last = memory.last(worker.slot, worker.pid)
                if last is not None:
                    silent.append(last)
        left = [len(asked)]

        def finish() -> None:
            answers.sort(key=lambda scrape: scrape.worker)
            reply(memory.text(answers, silent, self.count, self.restarts).decode())

        def answered(worker: Worker, result: Any, error: str | None) -> None:
            if error is None:
                answers.append(WorkerScrape(result["worker"], result["pid"], result["text"]))
            else:
                last = memory.last(worker.slot, worker.pid)
                if last is not None:
                    silent.append(last)
            left[0] -= 1
            if left[0] == 0:
                finish()

        if not asked:
            finish()
        for worker in asked:
            worker.channel.request("metrics", SCRAPE_TIMEOUT, partial(answered, worker))

    def _final_metrics(self, message: dict[str, Any], reply: Reply) -> None:
        """A worker stopping hands over its last counts: they join the totals when it exits
        (`TreeMemory.retire`) instead of those of its last scrape."""
        from registry.ops.metrics_tree import TreeMemory, WorkerScrape

        if self._memory is None:
            self._memory = TreeMemory()
        self._memory.answered(
            WorkerScrape(int(message["worker"]), int(message["pid"]), str(message["text"]))
        )
        reply(True)

    def _draining(self, worker: Worker) -> bool:
        """Whether a serving ``worker`` no longer accepts.  A worker clears its slot on the
        board as it stops listening to drain, whoever told it to stop; the supervisor's own
        SIGTERM counts too, for platforms without a board."""
        if worker.stopping:
            return True
        return self._board >= 0 and board.cleared(self._board, worker.slot)

    def _tree_ready(self, message: dict[str, Any], reply: Reply) -> None:
        ready = 0
        stuck = []
        for slot in range(self.count):
            worker = self.workers.get(slot)
            exited = self._exited.get(slot)
            if worker is None:
                if exited is not None:  # waiting out its back-off, or a rolling restart's
                    pid, how = exited
                    then = "the instance is stopping" if self._stopping else "being replaced"
                    stuck.append(f"worker {slot} (pid {pid}) not serving: exited ({how}), {then}")
                else:
                    stuck.append(f"worker {slot} not serving: not started yet")
                continue
            if not worker.serving:
                replacing = f", replacing pid {exited[0]} ({exited[1]})" if exited else ""
                stuck.append(f"worker {slot} (pid {worker.pid}) not serving: starting{replacing}")
                continue
            if self._draining(worker):
                stuck.append(f"worker {worker.slot} (pid {worker.pid}) not serving: draining")
                continue
            silent = self._silent_for(worker)
            if silent is None:
                ready += 1
            else:
                stuck.append(
                    f"worker {worker.slot} (pid {worker.pid}) not serving: no heartbeat "
                    f"for {silent:.0f} s"
                )
        reply({"ready": ready, "workers": self.count, "stuck": stuck, "stopping": self._stopping})

    # Stuck workers

    def _watch_every(self) -> float:
        return min(WATCH_EVERY, self.worker_timeout / 4)

    def _watch(self) -> None:
        """Kill each serving worker silent on the board past ``[http] worker_timeout``: the
        SIGCHLD that follows replaces it (`_say_ended`).  A worker that drains has cleared
        its slot (never silent here); the drain's own limit ends it (`_ended_within`)."""
        if self._stopping:
            return
        for worker in list(self.workers.values()):
            if not worker.serving or worker.stopping or worker.killed:
                continue
            silent = self._silent_for(worker)
            if silent is None or silent <= self.worker_timeout:
                continue
            worker.killed = True
            self.log(
                "warn",
                f"worker {worker.slot} (pid {worker.pid}) stuck: no heartbeat for "
                f"{silent:.0f} s (over [http] worker_timeout = {self.worker_timeout:g} s); "
                "killing it (SIGKILL) to replace it",
            )
            worker.signal(signal.SIGKILL)
        self.loop.call_later(self._watch_every(), self._watch)

    # Supervision

    def _reap(self, signum: int) -> None:
        self._reap_check()
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid == worker.pid:
                self._ended(worker, status)

    def _ended(self, worker: Worker, status: int) -> None:
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        worker.channel.read_remaining()  # its last words ("failed") may still be in the pipe
        worker.channel.lost()
        if self._board >= 0:
            board.clear_slot(self._board, worker.slot)
        if self._memory is not None:
            self._memory.retire(worker.slot, worker.pid)
        self._say_ended(worker, status)
        # Last: whoever waits for this (a drain, a rolling restart) logs after the line above.
        worker.served.fire(False)
        worker.ended.fire(status)

    def _say_ended(self, worker: Worker, status: int) -> None:
        """Log the exit; replace the worker unless it was asked to stop or never served."""
        how = _describe_end(status)
        if worker.failure:
            how = f"{how} ({worker.failure})"
        elif worker.killed:
            how = f"{how}, stuck past [http] worker_timeout"
        self._exited[worker.slot] = (worker.pid, how)
        if self._stopping or worker.slot in self._holding:
            self.log("info", f"worker {worker.slot} (pid {worker.pid}) stopped: {how}")
            return
        if not self._started and not worker.serving:
            return  # a start-up failure: `_start` ends the process
        failures = self._failures.get(worker.slot, 0)
        self._failures[worker.slot] = failures + 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2**failures)
        self.log(
            "warn",
            f"worker {worker.slot} (pid {worker.pid}) exited: {how}; replacing it in "
            f"{delay:g} s ({failures + 1} exit(s) in a row)",
        )
        self._respawns[worker.slot] = self.loop.call_later(
            delay, lambda: self._respawn(worker.slot)
        )

    def _respawn(self, slot: int) -> None:
        self._respawns.pop(slot, None)
        if self._stopping or slot in self.workers:
            return
        self.restarts += 1
        self._spawn(slot)

    # SIGHUP: rolling restart

    def _hup(self, signum: int) -> None:
        if self._stopping:
            return
        if not self._started:
            # Stopping a worker that has not served yet would read as a failed start-up
            # (exit 1): the restart waits until every worker serves.
            if not self._hup_waiting:
                self.log("info", "SIGHUP during start-up: every worker restarts once all serve")
            self._hup_waiting = True
            return
        if self._rolling:
            # The workers restarted so far in this pass may have read the files before they
            # changed: one more full pass follows, for this SIGHUP and any others meanwhile.
            if not self._hup_again:
                self.log(
                    "info",
                    "SIGHUP: the configuration is being checked; it is checked again once"
                    " that check ends, and every worker restarted if it passes"
                    if self._check is not None
                    else "SIGHUP: a rolling restart is running; every worker will be restarted "
                    "again once it ends",
                )
            self._hup_again = True
            return
        self._rolling = True
        self.loop.run_task(self._rolls())

    def _rolls(self) -> Task:
        """Rolling restarts until no SIGHUP arrived during the last one, each once the
        configuration passed its check."""
        try:
            while True:  # each further pass needs a SIGHUP during the one before
                self._hup_again = False
                refused = yield from self._check_config()
                if self._stopping:
                    return
                if refused is not None:
                    self.log(
                        "error",
                        "SIGHUP: the new configuration is refused, every worker keeps "
                        f"serving: {refused}",
                    )
                else:
                    yield from self._roll()
                if self._stopping or not self._hup_again:
                    return
        finally:
            self._rolling = False

    def _check_config(self) -> Generator[Wait, bool, str | None]:
        """
        Whether the files as they are now would start a worker: None if so, else the cause.

        The check is the worker's own start-up, not a copy of it: worker 0's command line,
        told by its spec (``check``) to stop once the configuration is read and validated
        and the service is built (TLS certificates and keys loaded and matched, an expired
        one refused as a rolling restart's worker refuses it, the htpasswd and other files
        read, folders made), before it would start serving; it sends its one-line reason
        over the control pipe, as a worker that cannot start does.  A process of its own:
        the supervisor's loop goes on meanwhile, and it has none of these libraries.  It
        inherits no listening socket and no board, so it can take no connection.
        """
        text, _ = self._worker_spec(0)
        spec = json.loads(text)
        spec.update(
            check=True,
            board=-1,
            failures_logged=True,
            refuse_expired=True,
            check_ports=self._ports_from_file,
        )
        try:
            pid, read_fd, write_fd = self._launch(self._commands[0], json.dumps(spec), [])
        except OSError as exc:
            return f"cannot start the configuration check: {exc.strerror or exc}"
        holder: list[Worker] = []

        def failed(message: dict[str, Any], reply: Reply) -> None:
            holder[0].failure = str(message.get("reason", ""))

        def checked(message: dict[str, Any], reply: Reply) -> None:
            wanted = message.get("workers")
            if isinstance(wanted, int) and wanted != self.count:
                self.log(
                    "warn",
                    f"SIGHUP: the configuration asks for {wanted} workers; {self.count} "
                    "run until the registry is restarted ([http] workers changes only then)",
                )
            # The sockets are the supervisor's, bound once: new workers serve those.
            for key, asked, kept in message.get("listeners", ()):
                self.log(
                    "warn",
                    f"SIGHUP: the configuration asks for {key} = {asked or '(not set)'}; the "
                    f"workers keep {kept or 'none'} until the registry is restarted (listening "
                    "addresses change only then)",
                )

        handlers = {"failed": failed, "checked": checked}
        check = Worker(-1, pid, PipeChannel(self.loop, read_fd, write_fd, handlers, self.log))
        holder.append(check)
        self._check = check
        self._reap_check()  # it may have ended already (its SIGCHLD came before)
        ended = yield Wait(check.ended, CHECK_TIMEOUT)
        if not ended:
            check.signal(signal.SIGKILL)
            yield Wait(check.ended)
            return f"the configuration check did not finish within {CHECK_TIMEOUT:g} s"
        status = check.ended.value
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return None
        return check.failure or f"the configuration check ended: {_describe_end(status)}"

    def _reap_check(self) -> None:
        check = self._check
        if check is None:
            return
        try:
            pid, status = os.waitpid(check.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = check.pid, 0
        if pid != check.pid:
            return
        self._check = None
        check.channel.read_remaining()  # its reason ("failed") may still be in the pipe
        check.channel.lost()
        check.ended.fire(status)

    def _roll(self) -> Task:
        self.log("info", f"SIGHUP: restarting the {self.count} workers one at a time")
        for slot in range(self.count):
            if self._stopping:
                return
            self._holding.add(slot)
            try:
                old = self.workers.get(slot)
                if old is not None:
                    old.stopping = True
                    old.signal(signal.SIGTERM)
                    yield from self._ended_within(old, self.drain_timeout + STOP_GRACE)
                pending = self._respawns.pop(slot, None)
                if pending is not None:
                    pending.cancel()
                if self._stopping:
                    return
                self.restarts += 1
                self._renewing.add(slot)
                new = self._spawn(slot)
            finally:
                self._holding.discard(slot)
            served = yield Wait(new.served, START_TIMEOUT)
            if self._stopping:
                # The supervisor stops (SIGTERM): the new worker, told to stop with the
                # others, ending before it served is part of that stop, not a failed restart.
                return
            if served and not new.served.value:
                # It exited: what it read (configuration, certificates) cannot serve, and
                # would not in the next slot either.  The workers not replaced yet keep
                # serving with what they loaded; this slot is retried as after a crash.
                kept = self.count - slot - 1
                cause = new.failure or "it exited before serving"
                self.log(
                    "error",
                    f"SIGHUP: worker {slot} did not start: {cause}; rolling restart "
                    f"stopped, {kept} worker(s) keep serving with the configuration and "
                    "certificates they started with (fix the cause and send SIGHUP again)",
                )
                return
            if not served:
                self.log("warn", f"SIGHUP: worker {slot} did not start; going on")
        self.log("info", "SIGHUP: every worker restarted")

    def _ended_within(self, worker: Worker, limit: float, said: float | None = None) -> Task:
        """Wait ``limit`` seconds for ``worker`` to end, then kill it (``said``: the limit the
        log line names, where ``limit`` is what is left of it)."""
        ended = yield Wait(worker.ended, limit)
        if not ended:
            self.log(
                "warn",
                f"worker {worker.slot} (pid {worker.pid}) still running after "
                f"{limit if said is None else said:g} s: killing it",
            )
            worker.signal(signal.SIGKILL)
            yield Wait(worker.ended)

    # Stop

    def _stop_requested(self, signum: int | None) -> None:
        name = signal.Signals(signum).name if signum is not None else None
        if self._stopping:
            if signum == signal.SIGINT:  # Ctrl-C twice: whoever is at the terminal
                self._cut(signum)
            elif name is not None and not self._cutting:
                # A second SIGTERM keeps the drain (see the module: not a sign of haste).
                self.log("info", f"{name} again: still draining the workers")
            return
        if name is not None:
            self.log("info", f"{name}: draining every worker")
        self._stopping = True
        self.loop.run_task(self._stop())

    def _cut(self, signum: int) -> None:
        """Stop at once: every worker cuts its connections and exits (see the module)."""
        if self._cutting:
            return
        self._cutting = True
        # A start-up failure keeps its own status.
        self.status = self.status or 128 + signum
        name = signal.Signals(signum).name
        again = " again" if self._stopping and signum == signal.SIGINT else ""
        self.log(
            "warn",
            f"{name}{again}: stopping now, cutting every connection (exit status {self.status})",
        )
        if not self._stopping:
            self._stopping = True
            self.loop.run_task(self._stop())
        for worker in list(self.workers.values()):
            worker.channel.send("cut")
        self.loop.call_later(CUT_GRACE, self._kill_remaining)

    def _kill_remaining(self) -> None:
        for worker in list(self.workers.values()):
            self.log(
                "warn",
                f"worker {worker.slot} (pid {worker.pid}) still running {CUT_GRACE:g} s "
                "after being told to cut its connections: killing it",
            )
            worker.signal(signal.SIGKILL)

    def _stop(self) -> Task:
        if self._check is not None:  # a SIGHUP's check: nothing to wait for
            self._check.signal(signal.SIGKILL)
        for pending in self._respawns.values():
            pending.cancel()
        self._respawns.clear()
        # The workers keep their own copies of the sockets until they have stopped accepting:
        # closing ours now lets the kernel refuse connections once the last worker closes.
        for _, fd, _ in [*self._listeners, *([self._debug] if self._debug else [])]:
            os.close(fd)
        self._listeners, self._debug = [], None
        workers = list(self.workers.values())
        for worker in workers:
            worker.stopping = True
            worker.signal(signal.SIGTERM)
        # One limit for all of them, counted from now (they drain at the same time).
        deadline = self.loop.seconds() + self.drain_timeout + STOP_GRACE
        for worker in workers:
            limit = max(0.0, deadline - self.loop.seconds())
            yield from self._ended_within(worker, limit, self.drain_timeout + STOP_GRACE)
        self.log("info", "every worker stopped")
        self.loop.stop()


def main() -> None:
    """The supervisor, as ``twistd registry`` execs it (`registry.server.handoff`)."""
    spec = json.loads(os.environ[SPEC_ENVIRONMENT])
    daemon_status.adopt(spec.get("daemon_status"))
    log = Log(spec["log"])
    loop = Loop(report=lambda text: log("error", text))
    supervisor = Supervisor(loop, spec, log)
    supervisor.start()
    try:
        loop.run()
    finally:
        pidfile = spec.get("pidfile")
        if pidfile:
            with contextlib.suppress(OSError):
                os.remove(pidfile)
    sys.exit(supervisor.status)
