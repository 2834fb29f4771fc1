"""
``[http] workers = 2``: what the supervisor does with SIGHUP when the configuration is bad,
and with a second SIGINT or a SIGQUIT during a drain.  Real ``twistd -n registry``
supervisors over loopback (the helpers are `tests.server.test_workers`').
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import write_config
from tests.server.proc import child_env, start_registry
from tests.server.test_drain import BLOB_SIZE, SlowDownload, push_blob, wait_refused
from tests.server.test_workers import LOOPBACK, WORKER_SERVING, Tree, start_tree


def _ready(tree: Tree) -> tuple[int, dict[str, Any]]:
    """Readiness's status and its workers check."""
    status, body = tree.scrape("/health/ready")
    return status, json.loads(body)["checks"]["workers"]


REFUSED = re.compile(
    r"#error\] SIGHUP: the new configuration is refused, every worker keeps serving: (?P<cause>.*)"
)


@pytest.fixture
def slow_tree(tmp_path: Path) -> Iterator[Tree]:
    """Two workers that would drain for 300 s: a stop that ends sooner was cut."""
    child = start_tree(tmp_path, draintimeout="300s")
    try:
        yield Tree(child)
    finally:
        child.stop()


@pytest.mark.parametrize(
    ("added", "cause"),
    [
        ("[health]\nbogus = 1\n", "configuration error: [health] bogus: unknown key"),
        (
            "[auth.htpasswd]\npath = {d}/missing\n",
            "configuration error: [auth.htpasswd] path: cannot read {d}/missing: "
            "no such file or directory",
        ),
    ],
)
def test_sighup_with_a_bad_configuration_restarts_no_worker(
    tmp_path: Path, added: str, cause: str
) -> None:
    """
    A SIGHUP used to drain worker 0 first and only then learn, from its replacement, that
    the file was bad: one worker fewer until someone fixed it, retried with back-off.  Now
    the configuration is checked first (the worker's own start-up, in a process of its own):
    one line naming the cause, no worker stopped, readiness as before.  Once the file is
    fixed, a SIGHUP replaces every worker.
    """
    tree = Tree(start_tree(tmp_path))
    try:
        config = tmp_path / "r.cfg"
        good = config.read_text()
        assert _ready(tree) == (200, {"status": "ok"})
        seen = len(tree.child.output)
        config.write_text(good + added.format(d=tmp_path))
        tree.child.process.send_signal(signal.SIGHUP)
        line = tree.child.wait_for(REFUSED)
        assert line["cause"] == cause.format(d=tmp_path)
        assert tree.request("GET", "/v2/").status == 200
        assert set(tree.per_worker()) <= set(tree.pids.values())
        assert _ready(tree) == (200, {"status": "ok"})
        supervisor = [
            text for text in tree.child.output[seen:] if "[registry.server.supervisor#" in text
        ]
        assert len(supervisor) == 1, supervisor
        assert tree.child.process.poll() is None

        config.write_text(good)
        tree.child.process.send_signal(signal.SIGHUP)
        tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
        started = {int(m["pid"]) for m in WORKER_SERVING.finditer("".join(tree.child.output))}
        serving = set(tree.per_worker())
        assert len(serving) == 2 and not serving & set(tree.pids.values()), serving
        assert serving <= started
        log = "".join(tree.child.output)
        assert "Traceback" not in log
    finally:
        tree.child.stop()
    assert "bogus" not in tree.child.stderr()


@pytest.mark.parametrize(
    ("signals", "status"),
    [
        (("SIGTERM", "SIGTERM", "SIGINT"), 130),
        (("SIGINT", "SIGINT"), 130),
        (("SIGTERM", "SIGQUIT"), 131),
        (("SIGQUIT",), 131),
    ],
)
def test_a_second_sigint_or_a_sigquit_cuts_the_drain(
    slow_tree: Tree, signals: tuple[str, ...], status: int
) -> None:
    """
    A second SIGTERM keeps the drain going (service managers may send it again); a second
    SIGINT (Ctrl-C twice) or a SIGQUIT stops at once: the download in flight is cut, one
    line says so, and the exit status is 128 + the signal's number.  A second SIGINT used
    to wait for the whole drain timeout like a second SIGTERM.
    """
    tree = slow_tree
    digest = push_blob(tree.port, os.urandom(BLOB_SIZE))
    download = SlowDownload(tree.port, digest)
    assert download.started.wait(timeout=60) and download.error is None
    first, *rest = signals
    tree.child.process.send_signal(getattr(signal, first))
    if first != "SIGQUIT":
        tree.child.wait_for(re.compile(rf"{first}: draining every worker"))
        wait_refused(tree.port, tree.child)
    for name in rest[:-1]:
        tree.child.process.send_signal(getattr(signal, name))
        tree.child.wait_for(re.compile(rf"{name} again: still draining the workers"))
    assert tree.child.process.poll() is None, "stopped with a download in flight"
    if rest:
        tree.child.process.send_signal(getattr(signal, rest[-1]))
    again = " again" if rest and rest[-1] == "SIGINT" else ""
    tree.child.wait_for(
        re.compile(
            rf"#warn\] {signals[-1]}{again}: stopping now, cutting every connection "
            rf"\(exit status {status}\)"
        )
    )
    assert tree.child.process.wait(timeout=60) == status
    download.finish()
    assert len(download.body) < BLOB_SIZE
    log = "".join(tree.child.output)
    assert "told to stop at once: cutting 1 connection(s) with 1 request(s)" in log
    assert "every worker stopped" in log
    assert "killing it" not in log  # each worker exited once told, none was killed
    assert "Traceback" not in log
    assert tree.child.stderr() == ""


def test_sighup_says_a_changed_worker_count_waits_for_a_restart(tmp_path: Path) -> None:
    """``[http] workers`` changed in the file: the rolling restart goes on with the workers
    that run, and one line says the new number applies at the next restart (it used to be
    ignored without a word)."""
    tree = Tree(start_tree(tmp_path))
    try:
        config = tmp_path / "r.cfg"
        config.write_text(config.read_text().replace("workers = 2", "workers = 3"))
        tree.child.process.send_signal(signal.SIGHUP)
        tree.child.wait_for(
            re.compile(
                r"SIGHUP: the configuration asks for 3 workers; 2 run until the registry is "
                r"restarted \(\[http\] workers changes only then\)"
            )
        )
        tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
        assert len(set(tree.per_worker())) == 2
    finally:
        tree.child.stop()


def test_sighup_refuses_a_configuration_one_process_only_can_serve_under_auto(
    tmp_path: Path,
) -> None:
    """
    ``workers = auto`` runs one process for a configuration that only one can serve (a
    pull-through cache here); a SIGHUP that added such a section to a registry running two
    workers restarted both with it: each ran a cache of its own on the same storage, and the
    second was refused by the first's marker, replaced again and again.  The check now
    refuses it, as it refuses an explicit ``workers = 2``, and the workers keep serving.
    """
    tree = Tree(start_tree(tmp_path, workers="auto"))
    try:
        config = tmp_path / "r.cfg"
        config.write_text(
            config.read_text() + "[proxy:hub]\nremoteurl = http://127.0.0.1:9\nprefix = docker.io\n"
        )
        tree.child.process.send_signal(signal.SIGHUP)
        line = tree.child.wait_for(REFUSED)
        assert line["cause"] == (
            "configuration error: only 1 worker can serve this configuration (a pull-through"
            " cache ([proxy:NAME]) runs one process per instance; for more cores run several"
            " instances as a fleet with [redis] (docs/proxy.md)), and 2 run: stop the registry"
            " and start it again to apply it"
        )
        assert set(tree.per_worker()) <= set(tree.pids.values())
        assert _ready(tree) == (200, {"status": "ok"})
        assert "restarting the 2 workers" not in "".join(tree.child.output)
    finally:
        tree.child.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def _workers(pid: int) -> list[int]:
    """The children of ``pid`` that run a worker (others may be a helper it runs briefly)."""
    found = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        if b"registry.server.worker_twistd" in command:
            found.append(child)
    return found


def test_a_sighup_during_start_up_restarts_the_workers_once_they_serve(tmp_path: Path) -> None:
    """
    A SIGHUP while worker 0 is still starting (held here with SIGSTOP: a slow storage probe)
    used to stop it, which start-up took for a failed start: the registry exited 1 without
    a reason.  Now the restart waits until every worker serves, then replaces them all.
    """
    child = start_tree(tmp_path)
    try:
        deadline = time.monotonic() + 60
        # Children of twistd before it became the supervisor are not workers (a library
        # looking for a shared object runs ldconfig, say: stopped, it held twistd, and the
        # SIGHUP came before the supervisor's handler); only the supervisor's workers are
        # taken (twistd, like them, runs as ``python -c``: their code names them).
        cmdline = Path(f"/proc/{child.process.pid}/cmdline")
        while b"registry.server.supervisor" not in cmdline.read_bytes():
            assert time.monotonic() < deadline and child.process.poll() is None
            time.sleep(0.001)
        while not (workers := _workers(child.process.pid)):
            assert time.monotonic() < deadline and child.process.poll() is None
            time.sleep(0.001)
        (first,) = workers
        os.kill(first, signal.SIGSTOP)
        try:
            child.process.send_signal(signal.SIGHUP)
            child.wait_for(re.compile("SIGHUP during start-up: every worker restarts once all"))
        finally:
            os.kill(first, signal.SIGCONT)
        tree = Tree(child)
        child.wait_for(re.compile("SIGHUP: every worker restarted"))
        started = [int(m["pid"]) for m in WORKER_SERVING.finditer("".join(child.output))]
        assert len(started) == 4 and started[0] == first, started  # two, then their successors
        serving = set(tree.per_worker())
        assert serving == set(started[2:]), (serving, started)
        assert child.process.poll() is None
        assert "Traceback" not in "".join(child.output)
    finally:
        child.stop()


def test_a_sighup_before_the_handlers_are_in_place_is_ignored(tmp_path: Path) -> None:
    """
    From twistd's start to the supervisor's (or a single registry's) SIGHUP handler, a
    SIGHUP (a reload sent as the service starts) ended the process: twistd and the program
    the supervisor runs had the default action.  Once twistd has the registry's service, the
    signal is ignored, and an ignored signal stays ignored across the supervisor's exec.
    """
    script = (
        "import signal, sys\n"
        "from registry.tap import Options, _make_service\n"
        "options = Options()\n"
        "options.parseOptions(sys.argv[1:])\n"
        "_make_service(options, under_twistd=True)\n"
        "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)\n"
    )
    for workers in ("1", "2"):
        config = tmp_path / f"w{workers}.cfg"
        config.write_text(f"[http]\nworkers = {workers}\n")
        done = subprocess.run(
            [sys.executable, "-c", script, "--config", str(config), "--port",
             "tcp:0:interface=127.0.0.1", "--storage", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, env=child_env(), cwd=tmp_path,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr[-2000:]


def _new_worker(pid: int, known: set[int], timeout: float = 60) -> int:
    """The first worker of supervisor ``pid`` not in ``known``, as soon as it runs."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = [worker for worker in _workers(pid) if worker not in known]
        if fresh:
            return fresh[0]
        assert time.monotonic() < deadline, "no new worker"
        time.sleep(0.001)


def test_a_worker_killed_before_it_first_serves_is_named_as_start_up_fails(
    tmp_path: Path,
) -> None:
    """
    Worker 1 killed (the OOM killer, an operator) after worker 0 served but before it served
    itself: the start fails, and the log used to say nothing of why (only a worker that gave
    a reason had a line).  Now one error line names the worker, its pid and how it ended.
    """
    child = start_tree(tmp_path)
    try:
        first = int(child.wait_for(re.compile(r"worker 0 \(pid (?P<pid>\d+)\) serving"))["pid"])
        second = _new_worker(child.process.pid, {first})
        os.kill(second, signal.SIGKILL)
        assert child.process.wait(timeout=60) == 1
        child.stop()
        log = "".join(child.output)
        assert f"worker 1 (pid {second}) serving" not in log, "killed too late"
        errors = [line for line in child.output if "[registry.server.supervisor#error]" in line]
        assert len(errors) == 1, log[-3000:]
        assert errors[0].split("#error] ")[1].strip() == (
            f"start-up failed: worker 1 (pid {second}) exited before serving: killed by "
            "SIGKILL; the registry stops (every worker must serve once for a start to succeed)"
        )
        assert "every worker stopped" in log
    finally:
        child.stop()


def test_sigterm_during_a_rolling_restart_stops_without_an_error(tmp_path: Path) -> None:
    """
    SIGTERM while a rolling restart's new worker starts: that worker, told to stop with the
    others, ends before it serves.  That used to be reported as a failed restart (an error
    line saying the other workers keep serving) although the registry was stopping.
    """
    tree = Tree(start_tree(tmp_path))
    child = tree.child
    try:
        child.process.send_signal(signal.SIGHUP)
        child.wait_for(re.compile(rf"worker 0 \(pid {tree.pids[0]}\) stopped"))
        new = _new_worker(child.process.pid, set(tree.pids.values()))
        os.kill(new, signal.SIGSTOP)  # holds it before it serves
        try:
            assert f"(pid {new}) serving" not in "".join(child.output), "caught too late"
            child.process.send_signal(signal.SIGTERM)
            child.wait_for(re.compile("SIGTERM: draining every worker"))
        finally:
            os.kill(new, signal.SIGCONT)
        assert child.process.wait(timeout=60) == 0
        child.stop()
        log = "".join(child.output)
        assert f"worker 0 (pid {new}) stopped" in log, log[-3000:]
        assert "#error]" not in log, log[-3000:]
        assert "keep serving" not in log
        assert "every worker stopped" in log
    finally:
        child.stop()


def _start_tree_on_its_file(tmp_path: Path) -> Tree:
    """Two workers listening where the file's ``[http] port`` says (no ``--port``)."""
    config = write_config(
        tmp_path / "r.cfg",
        {"http": {"workers": "2", "port": LOOPBACK}, "debug": {"addr": LOOPBACK}},
    )
    return Tree(start_registry(tmp_path, "--config", str(config), "--storage", str(tmp_path / "d")))


@pytest.mark.parametrize(
    ("port", "cause"),
    [
        (
            LOOPBACK + ":bogus=1",
            f"configuration error: {LOOPBACK}:bogus=1: unknown tcp: option 'bogus'; known: "
            "backlog, interface, port",
        ),
        ("tcp:99999", "configuration error: tcp:99999: port 99999 is out of range (0-65535)"),
    ],
)
def test_sighup_refuses_an_http_port_a_start_would_refuse(
    tmp_path: Path, port: str, cause: str
) -> None:
    """
    The check read ``[http] port`` as the supervisor's sockets, not as the file says: a
    value the next start refuses passed, and every worker was restarted.  Now the file's
    value is validated as start-up validates it, and the SIGHUP is refused.
    """
    tree = _start_tree_on_its_file(tmp_path)
    try:
        config = tmp_path / "r.cfg"
        config.write_text(config.read_text().replace(f"port = {LOOPBACK}", f"port = {port}"))
        tree.child.process.send_signal(signal.SIGHUP)
        assert tree.child.wait_for(REFUSED)["cause"] == cause
        assert set(tree.per_worker()) <= set(tree.pids.values())
        assert "restarting the 2 workers" not in "".join(tree.child.output)
    finally:
        tree.child.stop()


def test_sighup_says_changed_listening_addresses_wait_for_a_restart(tmp_path: Path) -> None:
    """
    A changed ``[http] port`` or ``[debug] addr`` was taken without a word, and the new
    workers logged the file's ``[debug] addr`` while they served the socket the supervisor
    bound at start.  Now one warning per address says it applies at the next restart, and
    each new worker names what it serves.
    """
    tree = _start_tree_on_its_file(tmp_path)
    try:
        config = tmp_path / "r.cfg"
        config.write_text(
            "[http]\nworkers = 2\nport = tcp:22050:interface=127.0.0.1\n"
            "[debug]\naddr = tcp:22051:interface=127.0.0.1\n"
        )
        seen = len(tree.child.output)
        tree.child.process.send_signal(signal.SIGHUP)
        tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
        log = tree.child.output[seen:]
        warnings = [line.split("#warn] ")[1].strip() for line in log if "#warn] SIGHUP" in line]
        assert warnings == [
            "SIGHUP: the configuration asks for [http] port = tcp:22050:interface=127.0.0.1; "
            f"the workers keep {LOOPBACK} until the registry is restarted (listening addresses "
            "change only then)",
            "SIGHUP: the configuration asks for [debug] addr = tcp:22051:interface=127.0.0.1; "
            f"the workers keep {LOOPBACK} until the registry is restarted (listening addresses "
            "change only then)",
        ], "".join(log)
        served = [line for line in log if "metrics and health on" in line]
        assert len(served) == 2, "".join(log)
        assert all(line.rstrip().endswith(f"metrics and health on {LOOPBACK}") for line in served)
        assert tree.request("GET", "/v2/").status == 200
        assert len(set(tree.per_worker()) - set(tree.pids.values())) == 2
        assert "Traceback" not in "".join(log)
    finally:
        tree.child.stop()


def test_sighup_says_nothing_of_the_same_addresses_written_another_way(tmp_path: Path) -> None:
    """``tcp:port=0:interface=127.0.0.1`` is the listener ``tcp:0:interface=127.0.0.1``
    already serves: no warning that it waits for a restart."""
    tree = _start_tree_on_its_file(tmp_path)
    try:
        same = "tcp:interface=127.0.0.1:port=0"
        (tmp_path / "r.cfg").write_text(
            f"[http]\nworkers = 2\nport = {same}\n[debug]\naddr = {same}\n"
        )
        seen = len(tree.child.output)
        tree.child.process.send_signal(signal.SIGHUP)
        tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
        log = "".join(tree.child.output[seen:])
        assert "#warn] SIGHUP" not in log, log
        assert "Traceback" not in log
    finally:
        tree.child.stop()
