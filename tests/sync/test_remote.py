"""
The remote end of a pull: credentials go to the configured remote only (never to the CDN it
redirects blob downloads to, whose requests are refused when they carry any), credentials
from a docker config.json, and a remote that is down or refuses the credentials shows as an
error in the status and the log, never as a 500 or a traceback.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from tests.client.conftest import ClientFactory
from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.e2e.harness import free_port, sleep
from tests.e2e.test_notifications import push_small_image
from tests.fakes.upstream import Switches, start_fake_upstream
from tests.sync.helpers import metric, sync_status, wait_runs


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest_twisted.ensureDeferred
async def test_credentials_go_to_the_remote_only(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    fake = await start_fake_upstream(
        reactor, switches=Switches(auth="basic", credentials=("syncer", "s3cret"))
    )
    try:
        image = fake.content.add_image("team/app", "v1", [4096, 70_000])
        host = f"127.0.0.1:{fake.port}"
        authfile = tmp_path / "config.json"
        authfile.write_text(
            json.dumps(
                {
                    "auths": {
                        host: {"auth": base64.b64encode(b"syncer:s3cret").decode()},
                        "elsewhere.example": {"auth": base64.b64encode(b"x:y").decode()},
                    }
                }
            )
        )
        common = {
            "remote": fake.url,
            "first_run_within": "0s",
            "repositories": "team/app",
            "timeout": "5s",
        }
        local = await start_registry(
            {
                "sync:given": {**common, "username": "syncer", "password": "s3cret"},
                "sync:fromfile": {**common, "authfile": str(authfile), "destination": "file"},
                "sync:wrong": {
                    **common,
                    "username": "syncer",
                    "password": "nope",
                    "destination": "wrong",
                },
            }
        )
        for sync in ("given", "fromfile"):
            status = await wait_runs(local.url, sync)
            assert status["last"]["result"] == "ok", status
            assert status["last"]["blobs"] + status["last"]["blobs_skipped"] == 3
        here = make_client(local.url)
        for name in ("team/app", "file/team/app"):
            got = await here.get_manifest(name, "v1")
            assert got.body == image.manifest and str(got.digest) == image.digest
            for layer in image.layers:
                data = await (await here.blob(name, layer.digest)).read(1 << 20)
                assert len(data) == layer.size
                assert data == fake.content.blobs[layer.digest].bytes()
        # Blob bytes came from the CDN, which saw no credentials (it refuses any with 400).
        cdn = [r for r in fake.log if r.kind == "cdn"]
        assert cdn and all(r.authorization is None for r in cdn)
        assert fake.cdn_auth_rejections == 0
        sent = {r.authorization for r in fake.log if r.kind != "cdn"}
        assert _basic("syncer", "s3cret") in sent
        assert sent <= {None, _basic("syncer", "s3cret"), _basic("syncer", "nope")}

        wrong = await wait_runs(local.url, "wrong")
        assert wrong["last"]["result"] == "failed"
        assert any("401" in e for e in wrong["last"]["error_messages"]), wrong
        response, _ = await get(f"{local.url}/v2/wrong/team/app/tags/list")
        assert response.code == 404
    finally:
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_a_remote_that_is_down_is_an_error_in_status_and_log(
    start_registry: Starter,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    local = await start_registry(
        {
            "sync:down": {
                "remote": down,
                "first_run_within": "0s",
                "repositories": "a/**",
                "timeout": "2s",
            }
        }
    )
    status = await wait_runs(local.url, "down")
    assert status["state"] == "idle"
    assert status["last"]["result"] == "failed"
    assert status["last_success"] is None
    (message,) = status["last"]["error_messages"]
    assert "Connection refused" in message or "refused" in message.lower(), message
    response, body = await get(f"{local.url}/sync/status")
    assert response.code == 200
    assert json.loads(body)["syncs"]["down"]["failed_runs"] == 1
    _, text = await get(f"{local.url}/metrics")
    assert metric(text.decode(), "txregistry_sync_errors_total", "down") == 1
    assert (await sync_status(local.url, "down"))["remote"] == down
    response, _ = await get(f"{local.url}/sync/status/nonesuch")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_blob_transfers_are_bounded_by_concurrency(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    """With ``concurrency = 2``, a third blob GET is not sent while two are held upstream."""
    fake = await start_fake_upstream(reactor, switches=Switches(auth="none"))
    try:
        image = fake.content.add_image("wide/app", "v1", [1000, 2000, 3000, 4000, 5000])
        hold = fake.hold("GET", "blob")
        local = await start_registry(
            {
                "sync:wide": {
                    "remote": fake.url,
                    "first_run_within": "0s",
                    "repositories": "wide/app",
                    "concurrency": "2",
                }
            }
        )
        for _ in range(1000):
            if hold.arrived >= 2:
                break
            await sleep(0.01)
        # Give a third transfer every chance to start: status round trips through the
        # registry, and storage calls in its thread pool, while the two are held.
        for _ in range(20):
            status = await sync_status(local.url, "wide")
            assert status["state"] == "running"
        assert hold.arrived == 2
        hold.release()
        status = await wait_runs(local.url, "wide")
        assert status["last"]["result"] == "ok", status
        assert status["last"]["blobs"] == 6  # the config and five layers
        got = await make_client(local.url).get_manifest("wide/app", "v1")
        assert got.body == image.manifest
    finally:
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_a_named_repository_the_remote_does_not_have_fails_the_run(
    start_registry: Starter,
) -> None:
    """A typo in ``repositories`` (plain names: no catalog is read) used to be a repository
    with no tags: the run copied nothing and ended ``ok``, so an alert on the last success
    never fired.  Now it is an error naming the repository; the others are copied."""
    remote = await start_registry()
    await push_small_image(remote.url, "team/app", "v1")
    local = await start_registry(
        {
            "sync:typo": {
                "remote": remote.url,
                "first_run_within": "0s",
                "repositories": "team/app team/appp",
                "timeout": "5s",
            }
        }
    )
    status = await wait_runs(local.url, "typo")
    assert status["last"]["result"] == "failed"
    assert status["last_success"] is None
    (message,) = status["last"]["error_messages"]
    assert message.startswith("team/appp: the remote has no repository team/appp"), message
    assert "NAME_UNKNOWN" in message
    assert status["last"]["tags_checked"] == 1
    response, _ = await get(f"{local.url}/v2/team/app/manifests/v1")
    assert response.code == 200
