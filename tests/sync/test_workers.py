"""
A sync in a tree of ``[http] workers = 2`` (a real ``twistd -n registry`` supervisor): only
worker 0 runs it, and the other answers ``/sync/status`` from its saved state.  Whichever
worker answers, the status is the same (``next_run`` included), and ``/metrics`` reports the
sync's own values once (not once per worker, not a timestamp summed into the 2080s), also after
worker 0 is killed and replaced.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from tests.client.conftest import ClientFactory
from tests.e2e.harness import write_config
from tests.e2e.tools import Registry2Process
from tests.server.proc import start_registry
from tests.server.test_workers import LOOPBACK, WORKER_SERVING, Tree
from tests.sync.helpers import push_image

# Bounds on the connections opened until each worker has answered, and on the polls.
MAX_CONNECTIONS = 200
MAX_POLLS = 600


def _answer(connection: socket.socket, path: str) -> bytes:
    """One keep-alive GET on ``connection``, its body (the debug site answers small JSON)."""
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: registry\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += connection.recv(65536)
    return body


def _owner(tree: Tree, connection: socket.socket) -> int | None:
    """The worker holding the server side of ``connection`` on the debug listener."""
    port = connection.getsockname()[1]
    for pid in tree.pids.values():
        for held in psutil.Process(pid).net_connections(kind="tcp"):
            if held.laddr.port == tree.debug and held.raddr and held.raddr.port == port:
                return pid
    return None


def status_from_each_worker(tree: Tree, name: str) -> dict[int, dict[str, Any]]:
    """``/sync/status/NAME`` as each worker answers it: connections are kept open until every
    worker has answered one (a worker holding more connections leaves the next to another)."""
    answers: dict[int, dict[str, Any]] = {}
    kept: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", tree.debug), timeout=60)
            kept.append(connection)
            body = _answer(connection, f"/sync/status/{name}")
            pid = _owner(tree, connection)
            if pid is not None:
                answers.setdefault(pid, json.loads(body))
            if len(answers) == len(tree.pids):
                return answers
    finally:
        for connection in kept:
            connection.close()
    raise AssertionError(f"only workers {sorted(answers)} answered")


def wait_runs(tree: Tree, name: str, runs: int) -> None:
    """Until the sync has finished ``runs`` runs and the next is scheduled (polled, bounded)."""
    for _ in range(MAX_POLLS):
        status, body = tree.scrape(f"/sync/status/{name}")
        assert status == 200, body
        current = json.loads(body)
        if current["runs"] >= runs and current["state"] == "idle" and current["next_run"]:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} did not finish {runs} runs: {current}")


def sync_samples(tree: Tree, name: str) -> dict[str, float]:
    """The scrape's ``txregistry_sync_*`` samples of sync ``name``, by sample name (and
    ``result`` for the runs), each found exactly once."""
    status, text = tree.scrape()
    assert status == 200, text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.labels.get("sync") != name:
                continue
            key = sample.name
            if "result" in sample.labels:
                key += f"/{sample.labels['result']}"
            assert key not in found, (key, text)
            found[key] = sample.value
    return found


def check_once(tree: Tree, name: str) -> dict[str, Any]:
    """Both workers answer the same status, and the scrape reports the sync's own values."""
    answers = status_from_each_worker(tree, name)
    statuses = list(answers.values())
    for status in statuses:
        assert status["next_run"] is not None, answers
        for key in ("runs", "failed_runs", "last_success", "next_run", "totals", "state"):
            assert status[key] == statuses[0][key], answers
    status = statuses[0]
    samples = sync_samples(tree, name)
    assert samples["txregistry_sync_runs_total/ok"] == status["runs"]
    assert samples["txregistry_sync_runs_total/failed"] == status["failed_runs"]
    totals = status["totals"]
    assert samples["txregistry_sync_manifests_copied_total"] == totals["manifests"]
    assert samples["txregistry_sync_blobs_copied_total"] == totals["blobs"]
    assert samples["txregistry_sync_bytes_copied_total"] == totals["bytes"]
    assert samples["txregistry_sync_tags_checked_total"] == totals["tags_checked"]
    assert samples["txregistry_sync_running"] == 0
    assert (
        abs(samples["txregistry_sync_last_success_timestamp_seconds"] - status["last_success"])
        < 0.01
    )
    return status


@pytest_twisted.ensureDeferred
async def test_two_workers_report_a_sync_once(
    registry2: Registry2Process, make_client: ClientFactory, tmp_path: Path
) -> None:
    remote = make_client(f"http://{registry2.host}")
    await push_image(remote, "w/app", "v1")
    await push_image(remote, "w/app", "v2")
    config = write_config(
        tmp_path / "r.cfg",
        {
            "http": {"workers": "2"},
            "debug": {"addr": LOOPBACK},
            "sync:w2": {
                "remote": f"http://{registry2.host}",
                "repositories": "w/app",
                "first_run_within": "0s",
                "interval": "1h",
            },
        },
    )
    child = start_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "data")
    )
    try:
        tree = Tree(child)
        wait_runs(tree, "w2", 1)
        status = check_once(tree, "w2")
        assert (status["runs"], status["totals"]["manifests"]) == (1, 2)

        # Worker 0 (the one that runs the sync) killed: its replacement reads the saved state
        # back and runs again; its predecessor's counts are not added to its own.
        victim = tree.pids[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(10):  # the replacement's "serving" line, not another worker's
            replaced = child.wait_for(WORKER_SERVING)
            if replaced["worker"] == "0":
                break
        tree.pids[0] = int(replaced["pid"])
        wait_runs(tree, "w2", 2)
        status = check_once(tree, "w2")
        assert (status["runs"], status["totals"]["manifests"]) == (2, 2)
        assert status["totals"]["tags_checked"] == 4
    finally:
        child.stop()
