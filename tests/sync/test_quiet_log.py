"""
The log of a registry that syncs has one line per event, not two per pooled connection:
Twisted's connection pools log "Starting factory" / "Stopping factory" for every connection
unless the pool is made quiet (`registry.http.twisted_internals.quiet_pool`).
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.client.conftest import ClientFactory
from tests.e2e.harness import RegistryProcess
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import push_image, wait_runs


@pytest_twisted.ensureDeferred
async def test_a_sync_run_logs_no_factory_lines(
    registry2: Registry2Process, make_client: ClientFactory, tmp_path: Path
) -> None:
    remote = make_client(f"http://{registry2.host}")
    for i in range(3):
        await push_image(remote, f"team/app{i}", "v1")
    sync = {
        "remote": f"http://{registry2.host}",
        "first_run_within": "0s",
        "repositories": "team/*",
    }
    local = RegistryProcess(tmp_path, {"sync:quiet": sync})
    local.start()
    try:
        status = await wait_runs(local.url, "quiet")
        assert status["last"]["result"] == "ok", status
        assert status["last"]["manifests"] == 3
    finally:
        local.stop()
    text = local.log_path.read_text()
    assert "sync quiet: run started" in text
    # (The listening Site's own start and stop lines, once per process, stay.)
    assert [line for line in text.splitlines() if "HTTP11ClientFactory" in line] == []
