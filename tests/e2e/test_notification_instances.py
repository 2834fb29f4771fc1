"""
Notification queues and the processes around them: two instances on one storage folder (and so
on one default queuedir), a queue of a worker that no longer runs while another process holds
it, a rolling restart beside the queues the workers hold.  Real ``twistd`` children, a real
receiver, real files.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.harness import RegistryProcess, sleep, twistd_command, write_config
from tests.e2e.test_notifications import (
    endpoint,
    events_on_disk,
    push_images,
    receiver,  # noqa: F401 (a fixture)
    wait_until,
)
from tests.fakes.webhook import WebhookReceiver
from tests.server.proc import child_env


def _sections(root: Path, url: str, workers: str = "1", **queue: str) -> dict[str, dict[str, str]]:
    return {
        "http": {"workers": workers},
        "storage": {"rootdirectory": str(root)},
        "notifications": {"flush_interval": "20ms", **queue},
        "notifications:ci": endpoint(url, threshold="1", backoff="50ms", maxbackoff="200ms"),
    }


async def _started(server: RegistryProcess) -> None:
    """Start ``server``, waiting for it in a thread: waited for on this thread, the receiver
    (this process's reactor) would not answer a delivery made meanwhile within the endpoint's
    timeout, and the delivery would be sent again."""
    server.launch()
    await deferToThread(server.wait_serving)


# A refused start takes a few seconds (imports, then the refusal before the reactor runs).
REFUSED_WITHIN = 45


def _run_to_the_end(workdir: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """``twistd -n registry`` that is expected to stop by itself (a refused start), within
    `REFUSED_WITHIN` seconds: one still running then started instead (killed)."""
    try:
        return subprocess.run(
            twistd_command("--config", str(config), "--port", "tcp:0:interface=127.0.0.1"),
            cwd=workdir,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=REFUSED_WITHIN,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        pytest.fail(f"still running after {REFUSED_WITHIN} s, not refused: {output[-2000:]}")


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest_twisted.ensureDeferred
async def test_a_second_instance_on_the_same_queue_folder_is_refused(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
    workers: str,
) -> None:
    """
    Two instances sharing a storage folder shared the default queuedir: each kept its queue in
    memory and rewrote ``ci.log`` at its stop, so the last to stop wiped the other's
    undelivered events without a word.  Now the second refuses to start (exit status 1, one
    line naming the holder and the fix; with workers, the worker's line is the supervisor's
    exit line), the first's queue is untouched, and once the first is gone (``kill -9``
    releases its lock) the second starts and delivers every event the first queued, once.
    """
    root = tmp_path / "shared"
    receiver.status = 500
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = RegistryProcess(tmp_path / "a", _sections(root, receiver.url))
    second_sections = _sections(root, receiver.url, workers=workers)
    second_config = write_config(tmp_path / "b" / "registry.cfg", second_sections)
    queue = root / "notifications" / "ci.log"
    first.start()
    try:
        refused = await deferToThread(_run_to_the_end, tmp_path / "b", second_config)
        assert refused.returncode == 1, (refused.stdout[-3000:], refused.stderr)
        assert refused.stderr.splitlines() == [
            f"txregistry: the notifications queue {queue} is in use by another process (pid"
            f" {first.pid}): give each instance its own [notifications] queuedir"
        ]
        assert "Traceback" not in refused.stdout + refused.stderr
        assert "listening" not in refused.stdout
        # The first goes on queueing (the receiver answers 500), in a file nobody else wrote.
        await push_images(first.url, [(f"team/app{i}", "v1") for i in range(5)])
        await wait_until(lambda: events_on_disk(queue) == 10)
        first.kill()
        # A POST the first sent just before it died may still wait in the receiver's buffer:
        # read now, it is refused (500); read after the status changes, it would be taken,
        # and the second would deliver its events again.
        await receiver.wait_closed()
        second = RegistryProcess(tmp_path / "b", second_sections)
        receiver.status = 200
        await _started(second)
        try:
            await receiver.wait_for(lambda: len(receiver.events) >= 10)
            await sleep(0.3)  # a duplicate would come now
        finally:
            second.stop()
    finally:
        first.stop()
    assert len(receiver.events) == 10
    assert len({e["id"] for e in receiver.events}) == 10
    assert {e["target"]["repository"] for e in receiver.events} == {
        f"team/app{i}" for i in range(5)
    }
    assert "Traceback" not in second.log_text()


@pytest_twisted.ensureDeferred
async def test_instances_with_their_own_queuedir_share_a_storage_folder(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
) -> None:
    """The fix the refusal names: each instance its own ``[notifications] queuedir``, on one
    storage folder.  Both serve side by side, the receiver down, both stopped cleanly: every
    event of both is delivered after a restart (the reviewer's 60 + 60 events, fewer here)."""
    root = tmp_path / "shared"
    receiver.status = 500
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        queuedir = str(tmp_path / name / "queue")
        servers.append(
            RegistryProcess(tmp_path / name, _sections(root, receiver.url, queuedir=queuedir))
        )
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_serving()
    try:
        for name, server in zip("ab", servers, strict=True):
            await push_images(server.url, [(f"{name}/app{i}", "v1") for i in range(5)])
        for server in servers:
            server.send_stop(signal.SIGTERM)
        for server in servers:
            # In a thread: the receiver (this reactor) answers a POST made during the stop
            # at once, with the 500 it is set to; held until after the status changes, that
            # POST would be taken (200) though its registry gave it up, and sent again.
            await deferToThread(server.wait_stopped)
        for name in "ab":
            assert events_on_disk(tmp_path / name / "queue" / "ci.log") == 10
        receiver.status = 200
        for server in servers:
            await _started(server)
        await receiver.wait_for(lambda: len(receiver.events) >= 20)
        await sleep(0.3)
    finally:
        for server in servers:
            server.stop()
    assert len({e["id"] for e in receiver.events}) == len(receiver.events) == 20


# A process of another instance holding a queue file's lock, as a registry holds it (flock on
# the file beside it, naming its pid and host); it says "held" once it holds it.
_HOLDER = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1] + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("held", flush=True)
time.sleep(300)
"""


def _hold(queue: Path) -> subprocess.Popen[str]:
    """A process holding ``queue``'s lock, once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(queue)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _event(n: int) -> bytes:
    return json.dumps({"id": f"old-{n}", "action": "push", "target": {"tag": f"t{n}"}}).encode()


def _locked_by_someone(queue: Path) -> bool:
    fd = os.open(f"{queue}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest_twisted.ensureDeferred
async def test_a_queue_another_live_process_holds_is_not_adopted(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
) -> None:
    """
    Worker 0 adopts the queues of workers that no longer run (``workers`` lowered), unless a
    live process holds one (a worker of another instance on this queuedir still writes it):
    that one is left alone, with a warning naming the holder.  Once the holder is gone, the
    next start adopts it, and holds its lock while it runs.
    """
    root = tmp_path / "data"
    folder = root / "notifications"
    folder.mkdir(parents=True)
    orphan = folder / "ci.worker1.log"
    content = b"".join(b"E %d %s\n" % (n, _event(n)) for n in (1, 2, 3))
    orphan.write_bytes(content)
    holder = _hold(orphan)
    server = RegistryProcess(tmp_path, _sections(root, receiver.url))
    try:
        server.start()
        await push_images(server.url, [("team/app", "v1")])
        await receiver.wait_for(lambda: len(receiver.events) >= 2)
        await sleep(0.3)
        assert [e["target"].get("repository") for e in receiver.events] == ["team/app"] * 2
        assert orphan.read_bytes() == content  # neither read nor removed
        server.stop()
        log = server.log_text()
        expected = (
            f"notifications: {orphan} (a queue of a worker beyond [http] workers) is not adopted:"
            f" it is in use by another process (pid {holder.pid}); give each instance its own"
            " [notifications] queuedir"
        )
        assert expected in log
        assert "adopted from" not in log
        holder.kill()
        holder.wait()
        await _started(server)
        await receiver.wait_for(lambda: len(receiver.events) >= 5)
        assert [e["id"] for e in receiver.events[2:]] == ["old-1", "old-2", "old-3"]
        assert not orphan.exists()
        assert _locked_by_someone(orphan)  # the adopting process holds it
        assert _locked_by_someone(folder / "ci.log")
    finally:
        server.stop()
        holder.kill()
        holder.wait()
    log = server.log_text()
    assert "3 undelivered events adopted from ci.worker1.log (3)" in log
    assert "Traceback" not in log
    assert not _locked_by_someone(folder / "ci.log")  # released with the process


@pytest_twisted.ensureDeferred
async def test_a_rolling_restart_goes_on_beside_the_queues_the_workers_hold(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
) -> None:
    """A SIGHUP's configuration check runs beside the workers, whose queue files are locked:
    it takes no lock, so it passes; each new worker starts once the one it replaces (and its
    lock) is gone, and delivers."""
    server = RegistryProcess(tmp_path, _sections(tmp_path / "data", receiver.url, workers="2"))
    server.start()
    try:
        await push_images(server.url, [("team/app", "v1")])
        await receiver.wait_for(lambda: len(receiver.events) >= 2)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        done = re.compile(r"SIGHUP: (every worker restarted|.*refused.*|worker \d did not start.*)")
        deadline = time.monotonic() + 60
        while (found := done.search(server.log_text())) is None:
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            await sleep(0.1)
        assert found.group(1) == "every worker restarted", found.group(0)
        await push_images(server.url, [("team/app", "v2")])
        await receiver.wait_for(lambda: len(receiver.events) >= 4)
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
