"""
Storage probe files of processes killed with ``kill -9`` (a clean stop removes its own): a
later start of a registry on the same storage removes those of its host's processes that no
longer run, and leaves other hosts' and other pid namespaces' alone.  Real ``twistd``
processes, killed for real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from registry.ops.health import probe_name, sweep_probe_files
from registry.procinfo import boot_id, pid_namespace, start_time
from registry.storage import layout
from registry.storage.s3 import S3Driver
from tests.e2e.harness import RegistryProcess
from tests.storage.s3server import S3Server

HOST = probe_name().rsplit("-", 1)[0]
HEALTH_DIR = f"{layout.OWN}/health"


def dead_pid() -> int:
    """A pid no process has any more (a child run to its end and reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def record(
    pid: int, host: str | None = None, namespace: str | None = None, boot: str | None = None
) -> bytes:
    return json.dumps(
        {
            "probe": "x",
            "id": "0",
            "host": host or socket.gethostname(),
            "pid": pid,
            "started": start_time(pid),
            "pidns": namespace or pid_namespace(),
            "boot": boot or boot_id(),
        }
    ).encode()


def test_probe_files_of_killed_processes_go_at_the_next_start(tmp_path: Path) -> None:
    registry = RegistryProcess(tmp_path, {"http": {"workers": "1"}})
    health = tmp_path / "data" / HEALTH_DIR
    registry.start()
    try:
        with urllib.request.urlopen(f"{registry.url}/health/ready", timeout=30) as answer:
            assert answer.status == 200
        killed = registry.pid
        registry.kill()
        assert [p.name for p in health.iterdir()] == [f"{HOST}-{killed}"]

        legacy = dead_pid()  # a file written before probes named their writer
        (health / f"{HOST}-{legacy}").write_bytes(
            f"txregistry storage probe {HEALTH_DIR}/{HOST}-{legacy} 0".encode()
        )
        other = dead_pid()
        kept = {
            # A live process of this host (this test's).
            f"{HOST}-{os.getpid()}": record(os.getpid()),
            # A container sharing the host name, in a pid namespace of its own.
            f"{HOST}-{other}": record(other, namespace="pid:[1]"),
            # Another host sharing the storage.
            f"elsewhere-{legacy}": record(legacy, host="elsewhere"),
            # Another machine of the same host name (its root pid namespace looks the same).
            f"{HOST}-{dead_pid()}": record(other, boot="another-machine"),
        }
        for name, content in kept.items():
            (health / name).write_bytes(content)

        registry.start()
        assert sorted(p.name for p in health.iterdir()) == sorted(kept)
        lines = [line for line in registry.log_text().splitlines() if "probe file" in line]
        assert len(lines) == 1, lines
        assert lines[0].endswith(
            "removed 2 storage probe file(s) left by processes of this host that no longer run"
        )
    finally:
        registry.stop()


@pytest_twisted.ensureDeferred
async def test_probe_objects_of_killed_processes_go_over_s3(s3_server: S3Server) -> None:
    driver = S3Driver(reactor, s3_server.settings(f"/probes/{uuid.uuid4().hex}/"))
    try:
        gone, other = dead_pid(), dead_pid()
        await driver.put_content(f"{HEALTH_DIR}/{HOST}-{gone}", record(gone))
        kept = {
            f"{HOST}-{os.getpid()}": record(os.getpid()),
            f"{HOST}-{other}": record(other, namespace="pid:[1]"),
            f"elsewhere-{gone}": record(gone, host="elsewhere"),
            f"{HOST}-{dead_pid()}": record(gone, boot="another-machine"),
        }
        for name, content in kept.items():
            await driver.put_content(f"{HEALTH_DIR}/{name}", content)
        assert await sweep_probe_files(driver) == 1
        assert sorted(await driver.list(HEALTH_DIR)) == sorted(kept)
    finally:
        await driver.close()
