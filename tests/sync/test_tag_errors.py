"""
An error in one tag is that tag's: a manifest HEAD that fails (a 500 after the client's
retries, an answer without ``Docker-Content-Digest``) or a tag no registry may hold is one
error of the run, and the repository's other tags are copied all the same.  (Every tag used
to be asked for first, in one go: the first HEAD that failed stopped the whole repository.)
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.fakes.upstream import Switches, start_fake_upstream
from tests.sync.helpers import wait_fresh_run, wait_runs


@pytest_twisted.ensureDeferred
async def test_a_tag_whose_head_fails_does_not_stop_the_others(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    switches = Switches(
        auth="none", manifest_status={"b-fails": 500}, no_digest_refs=frozenset({"c-no-digest"})
    )
    fake = await start_fake_upstream(reactor, switches=switches)
    try:
        images = {
            tag: fake.content.add_image("team/app", tag, [1000])
            for tag in ("a-fine", "b-fails", "c-no-digest", "d-fine")
        }
        local = await start_registry(
            {
                "sync:tags": {
                    "remote": fake.url,
                    "first_run_within": "0s",
                    "repositories": "team/app",
                    "interval": "1s",
                }
            }
        )
        status = await wait_runs(local.url, "tags")
        last = status["last"]
        assert last["result"] == "failed", status
        assert sorted(last["error_messages"]) == [
            "team/app:b-fails: registry 500: manifest team/app:b-fails: 500",
            "team/app:c-no-digest: HEAD manifest team/app:c-no-digest without a digest",
        ]
        assert last["repositories"] == 1
        assert last["tags_checked"] == 2
        here = make_client(local.url)
        assert [tag async for tag in here.all_tags("team/app")] == ["a-fine", "d-fine"]
        for tag in ("a-fine", "d-fine"):
            assert (await here.get_manifest("team/app", tag)).body == images[tag].manifest

        # Mended upstream: the next run copies the two it could not, and only those.
        fake.switches.manifest_status = {}
        fake.switches.no_digest_refs = frozenset()
        status = await wait_fresh_run(local.url, "tags")
        assert status["last"]["result"] == "ok", status
        assert status["last"]["tags_up_to_date"] == 2
        assert [tag async for tag in here.all_tags("team/app")] == sorted(images)
    finally:
        await fake.stop()
