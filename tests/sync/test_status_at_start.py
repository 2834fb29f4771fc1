"""
The first ``/sync/status`` and ``/metrics`` answers after a restart show the saved runs: while
the sync is still reading its saved state back (slow storage), they wait for it instead of
answering a blank status (no last run, no runs) that the next answer contradicts.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from registry.storage.s3 import S3Driver
from registry.sync.service import state_path
from registry.sync.status import SyncStatus
from tests.e2e.client import get
from tests.e2e.harness import sleep, start_in_process
from tests.storage.s3front import RecordingFront, Seen, s3_front  # noqa: F401 - fixture
from tests.storage.s3server import S3Server


async def _save_a_stopped_run(s3_server: S3Server, root: str) -> None:
    status = SyncStatus(
        name="out", direction="push", remote="http://127.0.0.1:9", enabled=True, interval=60
    )
    status.end(status.begin(1000.0), 1010.0, "stopped")
    driver = S3Driver(reactor, s3_server.settings(root))
    try:
        await driver.put_content(state_path("out"), status.saved())
    finally:
        await driver.close()


def _reads_the_state(seen: Seen) -> bool:
    return seen.method == "GET" and seen.key.endswith(state_path("out"))


@pytest_twisted.ensureDeferred
async def test_status_waits_for_the_saved_state(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    tmp_path: Path,
) -> None:
    root = f"/sync-start/{uuid.uuid4().hex}"
    await _save_a_stopped_run(s3_server, root)
    s3_front.hold(_reads_the_state)
    sections = {
        "storage": s3_server.storage_section(root, regionendpoint=s3_front.endpoint),
        # Never reached: the first run is an hour away.
        "sync:out": {
            "remote": "http://127.0.0.1:9",
            "direction": "push",
            "first_run_within": "1h",
        },
    }
    registry = await start_in_process(tmp_path, sections)
    try:
        for _ in range(500):
            if s3_front.holding:
                break
            await sleep(0.01)
        else:
            raise AssertionError("the sync never read its saved state")
        status_answer = Deferred.fromCoroutine(get(f"{registry.url}/sync/status/out"))
        metrics_answer = Deferred.fromCoroutine(get(f"{registry.url}/metrics"))
        await sleep(0.3)  # time enough to answer, were the answers not waiting
        assert not status_answer.called and not metrics_answer.called
        s3_front.release()

        response, body = await status_answer
        assert response.code == 200, body
        status = json.loads(body)
        assert status["last"]["result"] == "stopped", status
        assert (status["runs"], status["stopped_runs"], status["failed_runs"]) == (1, 1, 0)
        response, body = await metrics_answer
        assert response.code == 200
        assert b'txregistry_sync_runs_total{result="stopped",sync="out"} 1.0' in body, body
    finally:
        s3_front.release()
        await registry.stop()


@pytest_twisted.ensureDeferred
async def test_metrics_answer_while_the_saved_state_cannot_be_read(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Storage hanging at start does not hang a scrape: it waits a moment for the saved
    state (as for the gc record), then answers with what is known."""
    root = f"/sync-start/{uuid.uuid4().hex}"
    await _save_a_stopped_run(s3_server, root)
    s3_front.hold(_reads_the_state)
    sections = {
        "storage": s3_server.storage_section(root, regionendpoint=s3_front.endpoint),
        "sync:out": {"remote": "http://127.0.0.1:9", "direction": "push", "first_run_within": "1h"},
    }
    registry = await start_in_process(tmp_path, sections)
    try:
        answer = Deferred.fromCoroutine(get(f"{registry.url}/metrics"))
        answer.addTimeout(30, reactor)  # the bound of this test, not a measure
        response, body = await answer
        assert response.code == 200
        assert s3_front.holding  # still held: answered without the saved state
        # What is known: no run yet (the saved one is still being read).
        assert b'txregistry_sync_runs_total{result="stopped",sync="out"} 0.0' in body, body
    finally:
        s3_front.release()
        await registry.stop()
