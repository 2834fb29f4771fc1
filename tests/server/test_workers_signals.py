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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_drain import BLOB_SIZE, SlowDownload, push_blob, wait_refused
from tests.server.test_workers import WORKER_SERVING, Tree, start_tree


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
