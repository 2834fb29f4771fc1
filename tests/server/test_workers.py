"""
``[http] workers = 2``: real ``twistd -n registry`` supervisors over loopback.

Which worker answered a request is read from the debug listener's ``/metrics``
(``txregistry_worker_http_requests_total{worker, pid}``, one series per worker), so the tests
need no header in production responses.  Requests open a new connection each, which goes to
either worker when both hold as many connections (`pin` makes one hold more, to send the next
connection to the other).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.server.balance import holds_back
from tests.e2e.harness import LISTENING, twistd_command, write_config
from tests.server.proc import Child, child_env, start_registry, start_tls_registry
from tests.server.test_drain import BLOB_SIZE, SlowDownload, push_blob, wait_refused

LOOPBACK = "tcp:0:interface=127.0.0.1"
WORKER_SERVING = re.compile(r"worker (?P<worker>\d+) \(pid (?P<pid>\d+)\) serving")
DEBUG = re.compile(r"Factory starting on (?P<port>\d+)")
# Bound on new connections made while waiting for the kernel to pick the other worker.
MAX_TRIES = 400


class Tree:
    """A running supervisor: its registry port, debug port and log."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.port = child.wait_listening()
        log = "".join(child.output)
        # The supervisor binds the registry's port first, then the debug one.
        ports = [int(m["port"]) for m in DEBUG.finditer(log)]
        assert ports[0] == self.port, log[-2000:]
        self.debug = ports[1]
        self.pids = {int(m["worker"]): int(m["pid"]) for m in WORKER_SERVING.finditer(log)}
        assert sorted(self.pids) == [0, 1], log[-2000:]
        self.made = 0  # requests sent on the registry's port

    def request(self, method: str, path: str, body: bytes = b"", **headers: str) -> Answer:
        """One request on a new connection."""
        self.made += 1
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def scrape(self, path: str = "/metrics") -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.debug, timeout=60)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def per_worker(self) -> dict[int, float]:
        """pid -> requests answered, as the supervisor's merged scrape reports it."""
        status, text = self.scrape()
        assert status == 200, text
        out = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == "txregistry_worker_http_requests_total":
                    out[int(sample.labels["pid"])] = sample.value
        return out

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        status, text = self.scrape()
        assert status == 200, text
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(text.decode())
            for sample in family.samples
            if sample.name == name
        ]

    def served_by(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        check: Callable[[Answer], None] = lambda answer: None,
        **headers: str,
    ) -> tuple[Answer, int]:
        """A request on a new connection, and the pid of the worker that answered it."""
        before = self.per_worker()
        answer = self.request(method, path, body, **headers)
        check(answer)  # at once: before the scrape gives the server time
        after = self.per_worker()
        moved = [pid for pid, count in after.items() if count != before.get(pid, 0)]
        assert len(moved) == 1, (before, after)
        return answer, moved[0]


def each_worker(
    tree: Tree,
    method: str,
    path: str,
    check: Callable[[Answer], None] = lambda answer: None,
) -> dict[int, Answer]:
    """
    The request answered once by every worker, each on a new connection: a worker that has
    answered holds idle connections meanwhile (`pin`), so that the next goes to another.
    """
    answers: dict[int, Answer] = {}
    pinned: list[socket.socket] = []
    try:
        for _ in range(2 * len(tree.pids)):
            answer, pid = tree.served_by(method, path, b"", check)
            answers.setdefault(pid, answer)
            if len(answers) == len(tree.pids):
                return answers
            pinned += pin(tree, pid)
    finally:
        for each in pinned:
            each.close()
    raise AssertionError(f"only workers {sorted(answers)} answered")


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body


def start_tree(tmp_path: Path, **http: str) -> Child:
    sections = {
        "http": {"workers": "2", **http},
        "debug": {"addr": LOOPBACK},
    }
    config = write_config(tmp_path / "r.cfg", sections)
    return start_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "data")
    )


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    child = start_tree(tmp_path)
    try:
        yield Tree(child)
    finally:
        child.stop()


def test_both_workers_answer_and_metrics_add_up(tree: Tree) -> None:
    """Requests reach both workers; /metrics is the sum over them, not one worker's view."""
    for _ in range(10):
        assert tree.request("GET", "/v2/").status == 200
    answers = each_worker(tree, "GET", "/v2/")
    assert all(answer.status == 200 for answer in answers.values())
    made = tree.made  # every GET /v2/ above, the idle connections' included
    counts = tree.per_worker()
    assert set(counts) == set(tree.pids.values()), counts
    assert all(counts.values()), counts
    total = sum(
        value
        for labels, value in tree.samples("txregistry_http_requests_total")
        if labels["route"] == "base"
    )
    assert total == made
    assert sum(tree.per_worker().values()) == made
    status, body = tree.scrape("/health/ready")
    assert status == 200, body
    assert json.loads(body)["checks"]["workers"] == {"status": "ok"}


def test_chunked_upload_with_patches_on_both_workers(tree: Tree, tmp_path: Path) -> None:
    """
    An upload whose PATCHes land on different workers commits with the right digest, and each
    PATCH's hash state is on disk when it is answered (the next PATCH may go to the other
    worker at once).
    """
    name = "workers/chunked"
    answer = tree.request("POST", f"/v2/{name}/blobs/uploads/")
    assert answer.status == 202
    location = answer.headers["location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    states = tmp_path / "data/docker/registry/v2/repositories" / name / "_uploads" / upload_id
    data = bytearray()
    pids: set[int] = set()
    for _ in range(40):
        chunk = os.urandom(256 * 1024 + len(data) % 7)
        start = len(data)
        offset = start + len(chunk)

        def state_recorded(answer: Answer, offset: int = offset) -> None:
            assert answer.status == 202, answer.body
            assert (states / "txhashstates/sha256" / str(offset)).exists(), "state not recorded"

        # Once one worker took a PATCH, idle connections held on it make it leave the next
        # connection to the other (registry.server.balance): both see PATCHes of one upload.
        pinned = pin(tree, next(iter(pids))) if len(pids) == 1 else []
        try:
            answer, pid = tree.served_by(
                "PATCH",
                location,
                chunk,
                state_recorded,
                **{
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(chunk) - 1}",
                },
            )
        finally:
            for each in pinned:
                each.close()
        data += chunk
        assert answer.headers["range"] == f"0-{len(data) - 1}"
        location = answer.headers["location"]
        pids.add(pid)
        if len(pids) == 2 and len(data) > 2 * 1024 * 1024:  # 8 PATCHes at least
            break
    assert pids == set(tree.pids.values()), pids
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    separator = "&" if "?" in location else "?"
    answer = tree.request("PUT", f"{location}{separator}digest={digest}")
    assert answer.status == 201, answer.body
    fetched = tree.request("GET", f"/v2/{name}/blobs/{digest}")
    assert fetched.status == 200
    assert "sha256:" + hashlib.sha256(fetched.body).hexdigest() == digest


def test_the_supervisors_command_line_names_its_configuration(tree: Tree, tmp_path: Path) -> None:
    """``ps`` and ``pgrep -f`` find the whole tree by its configuration file: the supervisor
    (the pid twistd started as) shows twistd's arguments as its workers do."""
    config = str(tmp_path / "r.cfg")
    shown = Path(f"/proc/{tree.child.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"from registry.server.supervisor import main; main()" in shown
    assert shown[shown.index(b"--config") + 1] == config.encode()
    for pid in tree.pids.values():
        worker = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert worker[worker.index(b"--config") + 1] == config.encode()


def test_a_killed_worker_is_replaced(tree: Tree) -> None:
    victim = tree.pids[1]
    os.kill(victim, signal.SIGKILL)
    exited = tree.child.wait_for(
        re.compile(rf"worker 1 \(pid {victim}\) exited: killed by SIGKILL; replacing it in")
    )
    assert exited
    replaced = tree.child.wait_for(WORKER_SERVING)
    assert replaced["worker"] == "1" and int(replaced["pid"]) != victim
    tree.pids[1] = int(replaced["pid"])
    answers = each_worker(tree, "GET", "/v2/")
    assert all(answer.status == 200 for answer in answers.values())
    assert set(tree.per_worker()) == {tree.pids[0], int(replaced["pid"])}
    assert tree.samples("txregistry_worker_restarts_total") == [({}, 1.0)]
    status, body = tree.scrape("/health/ready")
    assert status == 200, body


def test_sighup_restarts_every_worker(tree: Tree) -> None:
    tree.child.process.send_signal(signal.SIGHUP)
    tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
    new = set(tree.per_worker())
    assert len(new) == 2 and not new & set(tree.pids.values()), (new, tree.pids)
    assert tree.request("GET", "/v2/").status == 200
    assert tree.child.process.poll() is None


def test_a_rolling_restart_keeps_what_the_workers_counted_since_the_last_scrape(
    tree: Tree,
) -> None:
    """
    The registry's request counters are the workers' sums plus what the workers that exited
    had counted: that used to be their last scrape, so a SIGHUP dropped every request since
    (the counter did not go back, it missed them).  A worker now hands its last counts to
    the supervisor as it stops.
    """

    def served() -> float:
        return sum(
            value
            for labels, value in tree.samples("txregistry_http_requests_total")
            if labels["route"] == "base"
        )

    assert served() == 0  # (the supervisor remembers from the first scrape on)
    for _ in range(20):
        assert tree.request("GET", "/v2/").status == 200
    tree.child.process.send_signal(signal.SIGHUP)
    tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
    assert served() == tree.made == 20
    assert tree.request("GET", "/v2/").status == 200
    assert served() == 21


def test_a_sighup_during_a_rolling_restart_makes_one_more_pass(tree: Tree) -> None:
    """
    A SIGHUP while workers are being replaced used to be dropped ("running already"): the
    workers replaced before it kept what they had read.  Now one more full pass follows, and
    further SIGHUPs meanwhile join it.
    """
    first_pass = re.compile("SIGHUP: restarting the 2 workers one at a time")
    tree.child.process.send_signal(signal.SIGHUP)
    tree.child.wait_for(first_pass)
    seen = len(tree.child.output)
    tree.child.process.send_signal(signal.SIGHUP)
    tree.child.process.send_signal(signal.SIGHUP)
    tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
    tree.child.wait_for(first_pass, timeout=30)
    tree.child.wait_for(re.compile("SIGHUP: every worker restarted"), timeout=60)
    time.sleep(0.5)  # a third pass would have started by now
    later = "".join(tree.child.output[seen:])
    assert later.count("SIGHUP: restarting the 2 workers") == 1, later
    assert later.count("SIGHUP: a rolling restart is running") == 1, later
    # Every worker serving now started after the second SIGHUP.
    started = {int(m["pid"]) for m in WORKER_SERVING.finditer(later)}
    serving = set(tree.per_worker())
    assert len(started) >= 2 and serving <= started, (started, serving)
    assert tree.request("GET", "/v2/").status == 200


def test_sigterm_drains_a_download_and_exits_0(tree: Tree) -> None:
    digest = push_blob(tree.port, os.urandom(BLOB_SIZE))
    download = SlowDownload(tree.port, digest)
    assert download.started.wait(timeout=60) and download.error is None
    tree.child.process.send_signal(signal.SIGTERM)
    wait_refused(tree.port, tree.child)
    assert tree.child.process.poll() is None, "exited with a download in flight"
    download.finish()
    assert download.error is None
    assert len(download.body) == BLOB_SIZE
    assert "sha256:" + hashlib.sha256(download.body).hexdigest() == digest
    assert tree.child.process.wait(timeout=60) == 0
    assert tree.child.stderr() == ""
    log = "".join(tree.child.output)
    assert "every worker stopped" in log
    assert "draining 1 request(s)" in log


def run_registry(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        twistd_command(*arguments),
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr)
    assert result.stderr.splitlines() == [expected], result.stderr
    assert "Traceback" not in result.stdout
    assert "listening" not in result.stdout


def test_bind_failure_with_two_workers(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        description = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        config = write_config(tmp_path / "r.cfg", {"http": {"workers": "2"}})
        result = run_registry(
            tmp_path, "--config", str(config), "--port", description, "--storage", "data"
        )
    assert_one_line(result, f"txregistry: cannot listen on {description}: address already in use")
    assert "worker" not in result.stdout  # refused before any worker started


def test_storage_failure_with_two_workers(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "2"}})
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "file")
    )
    assert_one_line(result, f"txregistry: cannot use storage {tmp_path / 'file'}: not a directory")


def test_proxy_refuses_two_workers(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "r.cfg",
        {
            "http": {"workers": "2"},
            "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "hub"},
        },
    )
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", "data"
    )
    assert_one_line(
        result,
        "txregistry: configuration error: [http] workers = 2: only 1 worker can serve this "
        "configuration: a pull-through cache ([proxy:NAME]) runs one process per instance; "
        "for more cores run several instances as a fleet with [redis] (docs/proxy.md)",
    )


def test_proxy_runs_one_process_by_default(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "r.cfg", {"proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "hub"}}
    )
    child = start_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", "data"
    )
    try:
        child.wait_listening()
        log = "".join(child.output)
        assert "workers" not in log.split("txregistry listening on", 1)[1].splitlines()[0]
        assert not WORKER_SERVING.search(log)
    finally:
        child.stop()


def test_web_ui_shows_a_tag_pushed_through_the_other_worker(tree: Tree) -> None:
    """The UI's tag listing is not a per-worker memo: both workers list a fresh tag at once."""
    from tests.ui import content

    client = content.Client(f"http://127.0.0.1:{tree.port}")
    content.push_image(client, "team/app", "first")
    for pid, answer in each_worker(tree, "GET", "/ui/r/team/app").items():
        assert answer.status == 200 and b"first" in answer.body, f"worker {pid}"
    content.push_image(client, "team/app", "second")
    for pid, answer in each_worker(tree, "GET", "/ui/r/team/app").items():
        assert answer.status == 200
        assert b"second" in answer.body, f"worker {pid} shows a stale tag list"


def test_log_file_pidfile_and_sigusr1_after_the_hand_over(tmp_path: Path) -> None:
    """
    The supervisor twistd hands over to keeps twistd's duties: it logs to ``--logfile`` (each
    worker to FILE.workerN), SIGUSR1 rotates its file and stops nothing, and the pidfile,
    which names it, is removed when it exits.
    """
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "2"}})
    log, pidfile = tmp_path / "registry.log", tmp_path / "registry.pid"
    run = "from twisted.scripts.twistd import run; run()"
    command = [
        sys.executable, "-c", run, "-n", f"--pidfile={pidfile}", f"--logfile={log}",
        "registry", "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "data"),
    ]  # fmt: skip
    child = Child(command, tmp_path, env=child_env())
    try:
        content = child.wait_for_file(log, "txregistry listening on")
        port = int(LISTENING.search(content)["port"])  # type: ignore[index]
        assert int(pidfile.read_text()) == child.process.pid
        assert sorted(int(m["worker"]) for m in WORKER_SERVING.finditer(content)) == [0, 1]
        for worker in (0, 1):
            own = (tmp_path / f"registry.log.worker{worker}").read_text()
            # Each worker's file says whose it is on every line too (the mark of stdout).
            assert f" [w{worker} registry.server.build#info] worker {worker} serving " in own
            assert all(f" [w{worker} " in line for line in own.splitlines() if line[:1] != " ")
        tree = Tree.__new__(Tree)
        tree.port, tree.made = port, 0
        assert tree.request("GET", "/v2/").status == 200

        child.process.send_signal(signal.SIGUSR1)
        rotated = child.wait_for_file(tmp_path / "registry.log.1", "txregistry listening on")
        assert "txregistry listening on" in rotated
        assert tree.request("GET", "/v2/").status == 200
        assert child.process.poll() is None

        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(timeout=60) == 0
        assert "every worker stopped" in log.read_text()
        assert not pidfile.exists()
    finally:
        child.stop()


MARKED_ACCESS = re.compile(
    r"^\S+ \[w(?P<worker>\d+) registry\.http\.request#info\] access method=GET "
    r"path=/v2/mark/(?P<n>\d+)/tags/list status=404 bytes=\d+ duration_ms="
)


def test_every_worker_line_says_which_worker_wrote_it(tree: Tree) -> None:
    """
    The workers share the supervisor's standard output: each line a worker writes starts its
    bracket with ``wN`` (its index), so that an access line tells which worker answered,
    while the supervisor's lines are as they were.  They used to look alike.
    """
    slot_of = {pid: worker for worker, pid in tree.pids.items()}
    answered: dict[int, int] = {}  # request number -> the worker that answered it
    pinned: list[socket.socket] = []
    try:
        for n in range(2 * len(tree.pids)):
            answer, pid = tree.served_by("GET", f"/v2/mark/{n}/tags/list")
            assert answer.status == 404
            answered[n] = slot_of[pid]
            if set(answered.values()) == {0, 1}:
                break
            pinned += pin(tree, pid)
    finally:
        for each in pinned:
            each.close()
    assert set(answered.values()) == {0, 1}, answered
    last = max(answered)
    tree.child.wait_for(re.compile(rf"path=/v2/mark/{last}/tags/list status=404"))
    output = list(tree.child.output)
    marked = {int(m["n"]): int(m["worker"]) for m in map(MARKED_ACCESS.match, output) if m}
    assert marked == answered
    log = "".join(output)
    for worker, pid in tree.pids.items():
        assert f" [w{worker} registry.server.build#info] worker {worker} serving " in log
        assert f" [registry.server.supervisor#info] worker {worker} (pid {pid}) serving\n" in log
    # Not one worker line without its mark (after the supervisor's own twistd lines, before
    # it hands over): the registry's namespaces, Twisted's, Twisted's "[-]".
    first = next(number for number, line in enumerate(output) if " [w0 " in line)
    for line in output[first:]:
        if " [registry.server.supervisor#" in line or line[:1] in (" ", "\t"):
            continue
        if " [registry." in line or " [twisted." in line or " [-] _QuietSite" in line:
            raise AssertionError(f"a worker line without its mark: {line!r}")


# Taking turns accepting (registry.server.balance)

BURST = 24


def connection_owners(tree: Tree, sockets: list[socket.socket]) -> dict[int, int]:
    """pid -> how many of ``sockets`` that worker holds (the server side of each)."""
    ours = {s.getsockname()[1] for s in sockets}
    owners = {}
    for pid in tree.pids.values():
        held = psutil.Process(pid).net_connections(kind="tcp")
        owners[pid] = sum(
            1 for c in held if c.raddr and c.raddr.port in ours and c.laddr.port == tree.port
        )
    return owners


def open_answered(tree: Tree, count: int) -> list[socket.socket]:
    """``count`` connections opened at once, then one request answered on each (kept open)."""
    sockets = [socket.create_connection(("127.0.0.1", tree.port), timeout=60) for _ in range(count)]
    tree.made += count
    for each in sockets:
        each.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
    for each in sockets:
        assert each.recv(65536).startswith(b"HTTP/1.1 200 "), "no answer"
    return sockets


def test_a_burst_of_connections_is_split_between_workers(tree: Tree) -> None:
    """
    Connections that arrive together go half to each worker, not all to whichever woke first
    (Twisted's port alone accepts the whole backlog in one go: 23 of 24 on one worker).
    """
    sockets = open_answered(tree, BURST)
    try:
        owners = connection_owners(tree, sockets)
        assert sum(owners.values()) == BURST, owners
        # Each may run ahead of the other by `slack` (1 at these counts) plus one being taken.
        assert max(owners.values()) - min(owners.values()) <= 2, owners
    finally:
        for each in sockets:
            each.close()


def test_a_stopped_worker_does_not_keep_connections_waiting(tree: Tree) -> None:
    """
    A worker that stops running (here SIGSTOP) while it has the fewest connections would have
    the other leave every new connection to it; once its heartbeat is stale the other accepts.
    """
    busy, stopped = tree.pids[0], tree.pids[1]
    sockets = open_answered(tree, 4)
    try:
        # Close the stopped-to-be worker's connections: it has 0, the other about 2.
        ours = connection_owners(tree, sockets)
        assert ours[busy] >= 1 and ours[stopped] >= 1, ours
        for each in list(sockets):
            peer_pid = _owner_of(tree, each)
            if peer_pid == stopped:
                each.close()
                sockets.remove(each)
        for _ in range(200):  # bounded: the worker sees the closes within milliseconds
            if connection_owners(tree, sockets)[stopped] == 0 and _established(stopped, tree) == 0:
                break
            time.sleep(0.05)
        os.kill(stopped, signal.SIGSTOP)
        try:
            for _ in range(3):
                answer = tree.request("GET", "/v2/")  # 60 s timeout: served, or the test fails
                assert answer.status == 200
            assert _established(stopped, tree) == 0
        finally:
            os.kill(stopped, signal.SIGCONT)
    finally:
        for each in sockets:
            each.close()


def pin(tree: Tree, pid: int) -> list[socket.socket]:
    """
    Idle connections held on worker ``pid`` until it holds back (`registry.server.balance`:
    another worker has fewer connections by the slack or more), so the next new connection
    goes to another worker.  Connections another worker took are closed, and waited for until
    that worker has seen them close.
    """
    kept: list[socket.socket] = []
    for _ in range(MAX_TRIES):
        _settled(tree)
        mine = _established(pid, tree)
        others = [_established(other, tree) for other in tree.pids.values() if other != pid]
        if holds_back(mine, others):
            return kept
        connection = open_answered(tree, 1)[0]
        if _owner_of(tree, connection) == pid:
            kept.append(connection)
        else:
            connection.close()
    raise AssertionError(f"worker {pid} never took enough connections to hold back")


def _settled(tree: Tree) -> None:
    """Wait (bounded) until no worker has a connection the client closed and it has not."""
    for _ in range(200):
        waiting = [
            c
            for pid in tree.pids.values()
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.laddr.port == tree.port and c.status == psutil.CONN_CLOSE_WAIT
        ]
        if not waiting:
            return
        time.sleep(0.01)
    raise AssertionError("a worker never saw its connection close")


def _owner_of(tree: Tree, connection: socket.socket) -> int | None:
    """The worker holding the server side of ``connection`` (None: none does any more)."""
    held = [pid for pid, count in connection_owners(tree, [connection]).items() if count]
    return held[0] if held else None


def _established(pid: int, tree: Tree) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr.port == tree.port and c.status == psutil.CONN_ESTABLISHED
    )


def test_one_writer_per_upload_across_workers(tree: Tree, tmp_path: Path) -> None:
    """
    A PATCH still writing on one worker keeps the upload to itself: a request on the other
    worker that resumes from the size it sees (as a client does after a timeout, from GET's
    Range) is 416, never a blob committed with the first worker's bytes still arriving.
    """
    name = "workers/one-writer"
    answer = tree.request("POST", f"/v2/{name}/blobs/uploads/")
    assert answer.status == 202
    location = answer.headers["location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    data_file = tmp_path / "data/docker/registry/v2/repositories" / name / "_uploads"
    data_file = data_file / upload_id / "data"
    chunk = os.urandom(1024 * 1024)
    slow = socket.create_connection(("127.0.0.1", tree.port), timeout=60)
    tree.made += 1
    try:
        slow.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: registry\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Range: 0-{len(chunk) - 1}\r\nContent-Length: {len(chunk)}\r\n\r\n".encode()
            + chunk[: len(chunk) // 2]
        )
        for _ in range(500):  # bounded: until the writing worker has stored some of it
            if data_file.exists() and data_file.stat().st_size > 0:
                break
            time.sleep(0.01)
        seen = data_file.stat().st_size
        writer = _owner_of(tree, slow)
        assert writer is not None
        pinned = pin(tree, writer)  # the next connection goes to the other worker
        try:
            other = b"another client's bytes"
            digest = "sha256:" + hashlib.sha256(chunk[:seen] + other).hexdigest()
            separator = "&" if "?" in location else "?"
            answer, pid = tree.served_by(
                "PUT",
                f"{location}{separator}digest={digest}",
                other,
                **{
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{seen}-{seen + len(other) - 1}",
                },
            )
        finally:
            for each in pinned:
                each.close()
        assert pid != writer
        assert answer.status == 416, (answer.status, answer.body)
        assert b"another request is writing" in answer.body
        last = int(answer.headers["range"].split("-")[1])  # how far the writer had come
        assert seen - 1 <= last < len(chunk)
        assert tree.request("HEAD", f"/v2/{name}/blobs/{digest}").status == 404
        slow.sendall(chunk[len(chunk) // 2 :])
        head = slow.recv(65536)
        assert head.startswith(b"HTTP/1.1 202 "), head[:200]
    finally:
        slow.close()
    digest = "sha256:" + hashlib.sha256(chunk).hexdigest()
    separator = "&" if "?" in location else "?"
    answer = tree.request("PUT", f"{location}{separator}digest={digest}")
    assert answer.status == 201, answer.body
    fetched = tree.request("GET", f"/v2/{name}/blobs/{digest}")
    assert fetched.body == chunk


def https_status(port: int, cafile: Path) -> int:
    """GET /v2/ over TLS on a new connection, verifying the server against ``cafile``."""
    import ssl

    context = ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        connection.request("GET", "/v2/")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_sighup_with_a_bad_certificate_pair_keeps_the_old_workers_serving(tmp_path: Path) -> None:
    """
    The key file replaced by one that does not match the certificate, then SIGHUP: the
    configuration check finds it before any worker is touched, one error line names the
    cause, and both workers (old certificates) keep serving TLS.  Before, every worker was
    replaced by one that could not serve and the registry was down until fixed; later worker
    0 was drained first, then its replacement failed, and one worker served until fixed.
    """
    from tests.auth import pki

    key = pki.new_key("ec")
    cert = pki.certificate("127.0.0.1", key, server=True)
    child, description, cert_path, key_path = start_tls_registry(
        tmp_path, {"workers": "2"}, pki.pem_cert(cert), pki.pem_key(key)
    )
    try:
        port = child.wait_listening()
        log = "".join(child.output)
        pids = {int(m["pid"]) for m in WORKER_SERVING.finditer(log)}
        assert https_status(port, cert_path) == 200
        seen = len(child.output)
        pki.write(key_path, pki.pem_key(pki.new_key("ec")))
        child.process.send_signal(signal.SIGHUP)
        line = child.wait_for(
            re.compile(
                r"#error\] SIGHUP: the new configuration is refused, every worker keeps "
                r"serving: (?P<cause>.*)"
            )
        )
        assert line["cause"] == (
            f"cannot listen on {description}: privateKey {key_path} does not match certKey "
            f"{cert_path}"
        ), line["cause"]
        for _ in range(4):  # new connections, to either worker
            assert https_status(port, cert_path) == 200
        assert child.process.poll() is None
        later = "".join(child.output[seen:])
        assert later.count("[registry.server.supervisor#") == 1, later
        assert {int(m["pid"]) for m in WORKER_SERVING.finditer("".join(child.output))} == pids
        assert "Traceback" not in "".join(child.output)
    finally:
        child.stop()
    assert "does not match" not in child.stderr()


def served_certificate(port: int) -> bytes:
    """The DER certificate an ``ssl:`` listener presents to a new connection."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw) as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_with_one_worker_reads_the_certificates_again(tmp_path: Path) -> None:
    """
    ``workers = 1``: SIGHUP used to do nothing (no line, replaced certificates not picked
    up).  Now a bad pair is one error line and the old certificate keeps being served; a
    good pair serves new connections.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.auth import pki

    def der(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    first_key = pki.new_key("ec")
    first = pki.certificate("127.0.0.1", first_key, server=True)
    second_key = pki.new_key("ec")
    second = pki.certificate("127.0.0.1", second_key, server=True)
    child, description, cert_path, key_path = start_tls_registry(
        tmp_path, {"workers": "1"}, pki.pem_cert(first), pki.pem_key(first_key)
    )
    try:
        port = child.wait_listening()
        assert served_certificate(port) == der(first)
        pki.write(key_path, pki.pem_key(second_key))  # the key first: a mismatched pair
        child.process.send_signal(signal.SIGHUP)
        line = child.wait_for(re.compile(r"#error\] SIGHUP: (?P<text>.*)"))
        assert line["text"] == (
            f"kept the certificates loaded before for {description}: privateKey {key_path} "
            f"does not match certKey {cert_path}"
        )
        assert served_certificate(port) == der(first)
        pki.write(cert_path, pki.pem_cert(second))
        child.process.send_signal(signal.SIGHUP)
        child.wait_for(re.compile(r"#info\] SIGHUP: new connections on .* use the certificate"))
        assert served_certificate(port) == der(second)
        assert https_status(port, cert_path) == 200
        assert child.process.poll() is None
        assert "Traceback" not in "".join(child.output)
    finally:
        child.stop()


def test_sighup_with_one_worker_and_no_tls_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "1"}})
    child = start_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "data")
    )
    try:
        child.wait_listening()
        child.process.send_signal(signal.SIGHUP)
        child.wait_for(re.compile(r"SIGHUP: nothing to reload \(no ssl: listener\)"))
        assert child.process.poll() is None
    finally:
        child.stop()


def _answered(tree: Tree) -> tuple[float, float, float]:
    """From one scrape: GET /v2/ answered (counter), their duration histogram's count, and
    the workers that answered the scrape."""
    status, text = tree.scrape()
    assert status == 200, text
    base = count = scraped = 0.0
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "txregistry_http_requests_total" and sample.labels["route"] == "base":
                base += sample.value
            elif (
                sample.name == "txregistry_http_request_duration_seconds_count"
                and sample.labels["route"] == "base"
            ):
                count += sample.value
            elif sample.name == "txregistry_workers_scraped":
                scraped = sample.value
    return base, count, scraped


def test_counters_do_not_go_back_when_a_worker_is_killed(tree: Tree) -> None:
    """A killed worker's counts stay in the tree's counters (a retired baseline), before and
    after its replacement serves: Prometheus would read a drop as a counter reset."""
    answers = each_worker(tree, "GET", "/v2/")
    assert all(answer.status == 200 for answer in answers.values())
    assert _answered(tree) == (tree.made, tree.made, 2.0)
    victim = tree.pids[1]
    os.kill(victim, signal.SIGKILL)
    tree.child.wait_for(re.compile(rf"worker 1 \(pid {victim}\) exited: killed by SIGKILL"))
    assert _answered(tree) == (tree.made, tree.made, 1.0)
    replaced = tree.child.wait_for(WORKER_SERVING)
    tree.pids[1] = int(replaced["pid"])
    assert _answered(tree) == (tree.made, tree.made, 2.0)
    answers = each_worker(tree, "GET", "/v2/")
    assert all(answer.status == 200 for answer in answers.values())
    assert _answered(tree) == (tree.made, tree.made, 2.0)
    assert victim not in tree.per_worker()


def test_a_stopped_worker_keeps_its_counts(tree: Tree) -> None:
    """A worker that does not answer the scrape (SIGSTOP) adds its last answer; the scrape
    says one worker answered."""
    answers = each_worker(tree, "GET", "/v2/")
    assert all(answer.status == 200 for answer in answers.values())
    assert _answered(tree) == (tree.made, tree.made, 2.0)
    stopped = tree.pids[1]
    os.kill(stopped, signal.SIGSTOP)
    try:
        assert _answered(tree) == (tree.made, tree.made, 1.0)  # asked, no answer in time
        assert tree.request("GET", "/v2/").status == 200
        assert _answered(tree) == (tree.made, tree.made, 1.0)
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert _answered_by_both(tree) == (tree.made, tree.made, 2.0)


def _answered_by_both(tree: Tree) -> tuple[float, float, float]:
    """`_answered` from the first scrape both workers answer: a worker just continued
    (SIGCONT) may miss a scrape's deadline while it catches up on a busy machine."""
    for _ in range(60):  # 30 s at most
        answered = _answered(tree)
        if answered[2] == 2.0:
            return answered
        time.sleep(0.5)
    return answered


READY_OK = b'{"status":"ok","checks":{"storage":{"status":"ok"},"workers":{"status":"ok"}}}'


def degraded_body(error: str) -> bytes:
    """The readiness body while some workers do not serve, ``error`` saying which and why."""
    return (
        b'{"status":"degraded","checks":{"storage":{"status":"ok"},"workers":{"status":'
        b'"degraded","error":"' + error.encode() + b'"}},"degraded":["workers"]}'
    )


def _ready_until(tree: Tree, done: Callable[[int, bytes], bool]) -> list[tuple[int, bytes]]:
    """Every readiness answer until ``done`` says so of one (bounded: 30 s)."""
    seen = []
    for _ in range(300):
        answer = tree.scrape("/health/ready")
        seen.append(answer)
        if done(*answer):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"never reached; last answers: {seen[-3:]}")


def test_readiness_is_degraded_while_a_worker_is_stopped(tree: Tree) -> None:
    """
    A worker that stops running (SIGSTOP) makes the ``workers`` check degraded, naming it,
    once its heartbeat is stale: readiness stays 200 (the other worker takes every new
    connection).  It was 503: one stuck worker took the instance out of every load balancer.
    The check is ok again once it runs.
    """
    assert tree.scrape("/health/ready") == (200, READY_OK)
    stopped = tree.pids[1]
    silent = re.compile(
        rf"1 of 2 workers serving; worker 1 \(pid {stopped}\) not serving: no heartbeat for "
        r"(\d+) s"
    )
    os.kill(stopped, signal.SIGSTOP)
    try:
        # Bounded: the heartbeat is stale 2 s after the stop, a result is reused for 2 s.
        seen = _ready_until(tree, lambda status, body: silent.search(body.decode()) is not None)
    finally:
        os.kill(stopped, signal.SIGCONT)
    status, body = seen[-1]
    match = silent.search(body.decode())
    assert match is not None
    assert (status, body) == (200, degraded_body(match.group(0)))
    assert all(answer == (200, READY_OK) for answer in seen[:-1]), seen
    # Bounded: its next heartbeat is half a second away.
    _ready_until(tree, lambda status, body: (status, body) == (200, READY_OK))


def test_a_stuck_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    """
    A worker whose heartbeat stays silent past ``[http] worker_timeout`` is killed (SIGKILL)
    and replaced, with one line saying which and why.  It was left as it was: the requests
    it held waited for ever, and readiness stayed unready for good.
    """
    child = start_tree(tmp_path, worker_timeout="5s")
    victim = 0
    try:
        tree = Tree(child)
        victim = tree.pids[1]
        os.kill(victim, signal.SIGSTOP)
        child.wait_for(
            re.compile(
                rf"\[registry\.server\.supervisor#warn\] worker 1 \(pid {victim}\) stuck: no "
                r"heartbeat for \d+ s \(over \[http\] worker_timeout = 5 s\); killing it "
                r"\(SIGKILL\) to replace it\n"
            )
        )
        child.wait_for(
            re.compile(
                rf"worker 1 \(pid {victim}\) exited: killed by SIGKILL, stuck past \[http\] "
                r"worker_timeout; replacing it in 0\.5 s \(1 exit\(s\) in a row\)\n"
            )
        )
        replaced = child.wait_for(WORKER_SERVING)
        assert replaced["worker"] == "1" and int(replaced["pid"]) != victim
        assert not psutil.pid_exists(victim)
        tree.pids[1] = int(replaced["pid"])
        # Bounded: a result is reused for 2 s.
        _ready_until(tree, lambda status, body: (status, body) == (200, READY_OK))
        answers = each_worker(tree, "GET", "/v2/")
        assert sorted(answers) == sorted(tree.pids.values())
        assert all(answer.status == 200 for answer in answers.values())
        log = "".join(child.output)
        assert log.count("stuck: no heartbeat") == 1, log[-3000:]
    finally:
        if victim and psutil.pid_exists(victim):
            os.kill(victim, signal.SIGCONT)
        child.stop()


def test_a_killed_worker_is_named_until_its_replacement_serves(tree: Tree) -> None:
    """
    From a worker's exit until its replacement serves, the ``workers`` check names the slot,
    the pid that exited and how (then the new pid, starting).  It said only "1 of 2 workers
    serving".  The replacement is held stopped (SIGSTOP) while it starts, to see it named.
    """
    victim = tree.pids[1]
    supervisor = psutil.Process(tree.child.process.pid)
    known = set(tree.pids.values())
    os.kill(victim, signal.SIGKILL)
    new = 0
    for _ in range(3000):  # bounded: 30 s; the replacement starts 0.5 s after the exit
        fresh = [c.pid for c in supervisor.children() if c.pid not in known and c.pid != victim]
        if fresh:
            new = fresh[0]
            os.kill(new, signal.SIGSTOP)
            break
        time.sleep(0.01)
    assert new, "no replacement was started"
    exited = degraded_body(
        f"1 of 2 workers serving; worker 1 (pid {victim}) not serving: exited (killed by "
        "SIGKILL), being replaced"
    )
    starting = degraded_body(
        f"1 of 2 workers serving; worker 1 (pid {new}) not serving: starting, replacing pid "
        f"{victim} (killed by SIGKILL)"
    )
    try:
        seen = _ready_until(tree, lambda status, body: (status, body) == (200, starting))
    finally:
        os.kill(new, signal.SIGCONT)
    assert {answer for answer in seen} <= {(200, READY_OK), (200, exited), (200, starting)}, seen
    replaced = tree.child.wait_for(WORKER_SERVING)
    assert replaced["worker"] == "1" and int(replaced["pid"]) == new
    _ready_until(tree, lambda status, body: (status, body) == (200, READY_OK))


DEBUG_PORT = re.compile(r"(?:Factory|_QuietSite) starting on (?P<port>\d+)")
UPLOAD_499 = re.compile(r"access method=(?P<method>\w+) path=(?P<path>\S+) status=499 ")


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT"])
def test_an_upload_left_mid_body_is_counted_as_499(
    tmp_path: Path, workers: str, method: str
) -> None:
    """
    A client that goes away while it sends an upload's body: one request with status 499 and
    route ``upload`` in the metrics, and one access line, besides the upload kept.
    """
    child = start_tree(tmp_path, workers=workers)
    try:
        port = child.wait_listening()
        # One worker: twistd says "_QuietSite starting on PORT"; two: the supervisor's lines.
        log = "".join(child.output)
        debug = next(int(m["port"]) for m in DEBUG_PORT.finditer(log) if int(m["port"]) != port)

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            connection = http.client.HTTPConnection("127.0.0.1", debug, timeout=60)
            try:
                connection.request("GET", "/metrics")
                text = connection.getresponse().read().decode()
            finally:
                connection.close()
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        digest = "sha256:" + "0" * 64
        path = f"/v2/left/{method.lower()}/blobs/uploads/?digest={digest}"
        if method != "POST":
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", f"/v2/left/{method.lower()}/blobs/uploads/")
            response = connection.getresponse()
            response.read()
            connection.close()
            assert response.status == 202
            location = response.getheader("location") or ""
            separator = "&" if "?" in location else "?"
            path = location if method == "PATCH" else f"{location}{separator}digest={digest}"
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        try:
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/octet-stream\r\n"
                "Content-Length: 1000000\r\n\r\n".encode()
                + b"x" * 65536
            )
            for _ in range(200):  # bounded: the server reads the headers within milliseconds
                if scrape().get(("txregistry_uploads_open", ())) == 1:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the upload never started")
        finally:
            sock.close()
        child.wait_for(re.compile("client left mid-upload"))
        # The request's access line and the upload's line come in either order (an upload
        # the request started is removed at once, before the request is logged).
        lines: list[re.Match[str]] = []
        for _ in range(200):  # bounded: 10 s
            lines = list(UPLOAD_499.finditer("".join(child.output)))
            if lines:
                break
            time.sleep(0.05)
        assert [(line["method"], line["path"]) for line in lines] == [(method, path)]
        key = (
            "txregistry_http_requests_total",
            (("method", method), ("route", "upload"), ("status", "499")),
        )
        found = scrape()
        assert found.get(key) == 1, {k: v for k, v in found.items() if "requests_total" in k[0]}
        assert found.get(("txregistry_uploads_open", ())) == 0
        assert found.get(("txregistry_http_requests_in_flight", (("route", "upload"),)), 0) == 0
    finally:
        child.stop()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; what comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def upload_range_of(port: int, location: str) -> str | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", location)
        response = connection.getresponse()
        response.read()
        assert response.status == 204, response.status
        return response.getheader("range")
    finally:
        connection.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_malformed_chunked_upload_body_is_a_400_and_is_not_kept(
    tmp_path: Path, workers: str
) -> None:
    """
    A chunked PATCH whose body turns out malformed after a good chunk (a bad chunk size, a
    chunk not followed by CRLF) gets twisted.web's 400; it used to be logged and counted as
    499 "client left mid-upload", and the good chunk's bytes were kept in the upload although
    the client was told 400.  Now: status 400 in the access line and the metrics, and the
    upload stays where it was, so the client can go on from its own offset.
    """
    child = start_tree(tmp_path, workers=workers)
    try:
        port = child.wait_listening()
        log = "".join(child.output)
        debug = next(int(m["port"]) for m in DEBUG_PORT.finditer(log) if int(m["port"]) != port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/v2/malformed/chunks/blobs/uploads/")
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == 202
        location = response.getheader("location") or ""

        def patch(body: bytes) -> bytes:
            head = (
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )
            return raw_exchange(port, head.encode() + body)

        assert patch(b"5\r\nhello\r\n0\r\n\r\n").startswith(b"HTTP/1.1 202 ")
        assert upload_range_of(port, location) == "0-4"
        for body in (b"5\r\nworld\r\nzz\r\n", b"5\r\nworldXX0\r\n\r\n"):
            assert patch(body).startswith(b"HTTP/1.1 400 "), body
            time.sleep(0.3)  # what the server does with the bytes, it does at once
            assert upload_range_of(port, location) == "0-4", body
        assert patch(b"5\r\nagain\r\n0\r\n\r\n").startswith(b"HTTP/1.1 202 ")
        digest = "sha256:" + hashlib.sha256(b"helloagain").hexdigest()
        separator = "&" if "?" in location else "?"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("PUT", f"{location}{separator}digest={digest}")
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == 201, response.status
        time.sleep(0.3)  # the workers' lines reach the supervisor's log
        log = "".join(child.output)
        statuses = re.findall(r"access method=PATCH path=\S+ status=(\d+) ", log)
        assert statuses == ["202", "400", "400", "202"], statuses
        assert "client left mid-upload" not in log
        connection = http.client.HTTPConnection("127.0.0.1", debug, timeout=60)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        counted = {
            s.labels["status"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "txregistry_http_requests_total"
            and s.labels.get("method") == "PATCH"
            and s.labels.get("route") == "upload"
        }
        assert counted == {"202": 2, "400": 2}, counted
    finally:
        child.stop()


class SlowUpload:
    """A PATCH that sends half its body, then waits for `finish`: a request in flight that
    holds its worker's drain open."""

    SIZE = 1024 * 1024

    def __init__(self, port: int, debug: int, name: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("POST", f"/v2/{name}/blobs/uploads/")
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        assert response.status == 202, response.status
        location = response.getheader("location") or ""
        self.rest = b"x" * (self.SIZE // 2)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: registry\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {self.SIZE}\r\n\r\n".encode()
            + b"x" * (self.SIZE - len(self.rest))
        )
        for _ in range(200):  # bounded: the server reads the headers within milliseconds
            if _uploads_open(debug) == 1:
                return
            time.sleep(0.05)
        raise AssertionError("the upload never started")

    def finish(self) -> bytes:
        """The rest of the body; the answer's first bytes."""
        try:
            self.sock.sendall(self.rest)
            return self.sock.recv(65536)
        finally:
            self.sock.close()


def _uploads_open(debug: int) -> float | None:
    connection = http.client.HTTPConnection("127.0.0.1", debug, timeout=60)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "txregistry_uploads_open":
                return sample.value
    return None


@pytest.mark.parametrize("told", ["supervisor SIGHUP", "worker SIGTERM"])
def test_readiness_is_degraded_while_a_worker_drains(tree: Tree, told: str) -> None:
    """
    SIGHUP drains one worker at a time; the one draining accepts no connection, so the
    ``workers`` check is degraded, naming it, until its replacement serves, and readiness
    stays 200 throughout, whichever worker answers: a rolling restart (certificate rotation)
    made it 503 for as long as each worker drained.  The draining worker itself says so in a
    degraded ``draining`` check.  The same for a worker sent SIGTERM by someone else than
    the supervisor.
    """
    upload = SlowUpload(tree.port, tree.debug, "workers/rolling")
    owner = _owner_of(tree, upload.sock)
    assert owner is not None
    slot = next(slot for slot, pid in tree.pids.items() if pid == owner)
    assert tree.scrape("/health/ready") == (200, READY_OK)
    if told == "worker SIGTERM":
        os.kill(owner, signal.SIGTERM)
    else:
        tree.child.process.send_signal(signal.SIGHUP)
    tree.child.wait_for(re.compile(r"draining 1 request\(s\) on \d+ connection\(s\)"))
    error = f"1 of 2 workers serving; worker {slot} (pid {owner}) not serving: draining"
    expected = degraded_body(error)
    # What the draining worker answers, if a readiness connection reaches it: its own drain,
    # degraded, and the workers check as last probed (before or during its drain).
    draining = (
        b'{"draining":{"status":"degraded","error":"this worker is being replaced (stopping: '
        b'draining 1 request(s)); the other workers serve"},"storage":{"status":"ok"},"workers":'
    )
    own = {
        b'{"status":"degraded","checks":' + draining + b'{"status":"ok"}},"degraded":["draining"]}',
        b'{"status":"degraded","checks":'
        + draining
        + b'{"status":"degraded","error":"'
        + error.encode()
        + b'"}},"degraded":["draining","workers"]}',
    }
    seen = _ready_until(tree, lambda status, body: body == expected)
    assert seen[-1] == (200, expected)
    assert all(status == 200 and body in {READY_OK, expected, *own} for status, body in seen), seen
    assert upload.finish().startswith(b"HTTP/1.1 202 ")
    if told == "worker SIGTERM":
        tree.child.wait_for(re.compile(rf"worker {slot} \(pid {owner}\) exited: exit status 0"))
        tree.child.wait_for(WORKER_SERVING)
    else:
        tree.child.wait_for(re.compile("SIGHUP: every worker restarted"))
    # Bounded: a result is reused for 2 s.
    _ready_until(tree, lambda status, body: (status, body) == (200, READY_OK))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_readiness_fails_on_the_debug_listener_while_draining(tmp_path: Path, workers: str) -> None:
    """
    After SIGTERM the registry's port refuses connections while requests drain; the
    ``[debug] addr`` listener answers until the drain ends, and its readiness must take the
    instance out: 503 with a ``draining`` check.  It used to answer 200 throughout.
    Liveness stays 200.
    """
    child = start_tree(tmp_path, workers=workers)
    try:
        port = child.wait_listening()
        log = "".join(child.output)
        debug = next(int(m["port"]) for m in DEBUG_PORT.finditer(log) if int(m["port"]) != port)

        def get(path: str) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", debug, timeout=60)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        upload = SlowUpload(port, debug, "drain/debug")
        child.process.send_signal(signal.SIGTERM)
        wait_refused(port, child)
        child.wait_for(re.compile(r"draining 1 request\(s\) on \d+ connection\(s\)"))
        for path in ("/health/ready", "/debug/health"):
            status, body = get(path)
            if workers == "1":
                assert (status, body) == (
                    503,
                    b'{"status":"unavailable","checks":{"draining":{"status":"failing",'
                    b'"error":"stopping: draining 1 request(s)"},"storage":{"status":"ok"}},'
                    b'"failing":["draining"]}',
                )
                continue
            # Either worker may answer (the idle one until it exits): each drains.
            value = json.loads(body)
            assert status == 503, body
            assert value["checks"]["draining"] in (
                {"status": "failing", "error": f"stopping: draining {requests} request(s)"}
                for requests in (0, 1)
            ), body
            assert value["failing"][0] == "draining", body
        assert get("/health/live") == (200, b'{"status":"ok"}')
        assert child.process.poll() is None, "exited with an upload in flight"
        assert upload.finish().startswith(b"HTTP/1.1 202 ")
        assert child.process.wait(timeout=60) == 0
    finally:
        child.stop()


def test_an_expired_certificate_is_said_at_start_and_not_swapped_in_for_a_valid_one(
    tmp_path: Path,
) -> None:
    """Clients that verify refuse an expired certificate with a failed handshake only: the
    registry says so when it starts with one, and a SIGHUP does not replace a valid
    certificate with an expired one (the valid one keeps being served, one error line)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.auth import pki

    def der(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    key = pki.new_key("ec")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = pki.certificate("127.0.0.1", key, server=True, start=long_ago, days=1)
    valid = pki.certificate("127.0.0.1", key, server=True)
    child, description, cert_path, _key_path = start_tls_registry(
        tmp_path, {"workers": "1"}, pki.pem_cert(expired), pki.pem_key(key)
    )
    try:
        port = child.wait_listening()
        end = expired.not_valid_after_utc.strftime("%Y-%m-%d %H:%M")
        assert re.search(
            rf"#warn\] {re.escape(description)}: certKey {re.escape(cert_path)}: the certificate "
            rf"expired on {end} UTC; clients that verify it refuse every connection",
            "".join(child.output),
        )
        assert served_certificate(port) == der(expired)
        pki.write(cert_path, pki.pem_cert(valid))
        child.process.send_signal(signal.SIGHUP)
        child.wait_for(re.compile(r"#info\] SIGHUP: new connections on .* use the certificate"))
        assert served_certificate(port) == der(valid)
        pki.write(cert_path, pki.pem_cert(expired))
        child.process.send_signal(signal.SIGHUP)
        line = child.wait_for(re.compile(r"#error\] SIGHUP: (?P<text>.*)"))
        assert line["text"] == (
            f"kept the certificates loaded before for {description}: certKey {cert_path}: "
            f"the certificate expired on {end} UTC"
        )
        assert served_certificate(port) == der(valid)
        assert "Traceback" not in "".join(child.output)
    finally:
        child.stop()


def test_workers_serve_the_supervisors_port_whatever_the_file_says(tmp_path: Path) -> None:
    """``--port`` replaces ``[http] port``, also an empty one in the file: the workers (whose
    command line has no --port) serve the supervisor's sockets and do not refuse the file's
    empty value."""
    config = tmp_path / "r.cfg"
    config.write_text("[http]\nport =\nworkers = 2\n")
    child = start_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "data")
    )
    try:
        port = child.wait_listening()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/v2/")
        assert connection.getresponse().status == 200
        connection.close()
        assert child.process.poll() is None
        assert "no listening address" not in "".join(child.output)
    finally:
        child.stop()


def test_a_rolling_restart_does_not_replace_a_valid_certificate_with_an_expired_one(
    tmp_path: Path,
) -> None:
    """``workers = 2``: a SIGHUP after the certificate file was replaced by an expired one
    is refused by the configuration check (one error line naming the file and the date), and
    both workers keep serving the valid certificate."""
    import datetime

    from cryptography.hazmat.primitives import serialization

    from tests.auth import pki

    key = pki.new_key("ec")
    valid = pki.certificate("127.0.0.1", key, server=True)
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = pki.certificate("127.0.0.1", key, server=True, start=long_ago, days=1)
    child, description, cert_path, _key_path = start_tls_registry(
        tmp_path, {"workers": "2"}, pki.pem_cert(valid), pki.pem_key(key)
    )
    try:
        port = child.wait_listening()
        pki.write(cert_path, pki.pem_cert(expired))
        child.process.send_signal(signal.SIGHUP)
        line = child.wait_for(
            re.compile(
                r"#error\] SIGHUP: the new configuration is refused, every worker keeps "
                r"serving: (?P<cause>.*)"
            )
        )
        end = expired.not_valid_after_utc.strftime("%Y-%m-%d %H:%M")
        assert line["cause"] == (
            f"cannot listen on {description}: certKey {cert_path}: the certificate expired on "
            f"{end} UTC"
        ), line["cause"]
        for _ in range(4):  # new connections: both workers serve the valid certificate
            assert served_certificate(port) == valid.public_bytes(serialization.Encoding.DER)
        assert "SIGHUP: restarting" not in "".join(child.output)
        assert "Traceback" not in "".join(child.output)
    finally:
        child.stop()


def test_a_unix_listener_is_named_by_its_path(tmp_path: Path) -> None:
    """The start-up line names a UNIX socket by its path (it showed Twisted's bytes, b'...')."""
    sock = tmp_path / "registry.sock"
    child = start_registry(tmp_path, "--port", f"unix:{sock}", "--storage", "data")
    try:
        line = child.wait_for(re.compile(r"txregistry listening on (?P<rest>.*)"))
        assert line["rest"] == f"unix:{sock} ({sock}), filesystem storage", line["rest"]
    finally:
        child.stop()


def test_a_stopped_supervisor_is_named_by_metrics_and_readiness(tree: Tree) -> None:
    """The supervisor stopped (SIGSTOP) while the workers serve: ``/metrics`` and readiness
    say whose answer they waited for (the scrape's body read ``CancelledError()``)."""
    supervisor = tree.child.process.pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        assert tree.request("GET", "/v2/").status == 200
        assert tree.scrape("/metrics") == (
            503,
            b"metrics of the other workers unavailable: the supervisor gave no answer within 5s\n",
        )
        status, body = tree.scrape("/health/ready")
    finally:
        os.kill(supervisor, signal.SIGCONT)
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["workers"] == {
        "status": "failing",
        "error": "no answer within 2s (waiting for the supervisor's answer)",
    }, body
