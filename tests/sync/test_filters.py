"""
Which repositories and tags a sync copies, seen on the wire: tag globs, regular expressions
with exclusions, the newest N by semantic version, destination and strip_prefix.
"""

from __future__ import annotations

import pytest_twisted

from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.sync.helpers import push_image, wait_runs

TAGS = ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc1", "2.0.0", "latest", "dev-1"]


@pytest_twisted.ensureDeferred
async def test_tag_filters(start_registry: Starter, make_client: ClientFactory) -> None:
    remote = await start_registry()
    remote_client = make_client(remote.url)
    manifest, _ = await push_image(remote_client, "lib/app", TAGS[0])
    for tag in TAGS[1:]:
        await remote_client.put_manifest("lib/app", tag, manifest)
    await push_image(remote_client, "lib/other", "latest")
    await push_image(remote_client, "elsewhere/app", "latest")

    common = {"remote": remote.url, "first_run_within": "0s", "repositories": "lib/app"}
    local = await start_registry(
        {
            "sync:glob": {**common, "tags": "1.*", "destination": "glob"},
            "sync:regex": {
                **common,
                "tags_regex": r"[0-9]+\.[0-9]+\.[0-9]+",
                "tags_exclude": r"1\.0\..*",
                "destination": "regex",
            },
            "sync:newest": {**common, "newest": "2", "destination": "newest"},
            "sync:flat": {
                "remote": remote.url,
                "first_run_within": "0s",
                "repositories": "lib/*",
                "strip_prefix": "yes",
                "destination": "flat",
                "tags": "latest",
            },
        }
    )
    local_client = make_client(local.url)
    expected = {
        "glob/lib/app": ["1.0.0", "1.10.0", "1.2.0"],
        "regex/lib/app": ["1.10.0", "1.2.0", "2.0.0"],
        # 2.0.0 > 2.0.0-rc1 > 1.10.0 > 1.2.0: semantic versions, not text.
        "newest/lib/app": ["2.0.0", "2.0.0-rc1"],
        "flat/app": ["latest"],
        "flat/other": ["latest"],
    }
    for sync in ("glob", "regex", "newest", "flat"):
        status = await wait_runs(local.url, sync)
        assert status["last"]["result"] == "ok", status
    for name, tags in expected.items():
        assert [t async for t in local_client.all_tags(name)] == tags, name
        prefix, rest = name.split("/", 1)
        source = "lib/" + rest if prefix == "flat" else rest
        for tag in tags:
            there = await remote_client.get_manifest(source, tag)
            assert (await local_client.get_manifest(name, tag)).body == there.body
    catalog = [name async for name in local_client.all_repositories()]
    assert catalog == sorted(expected)


@pytest_twisted.ensureDeferred
async def test_strip_prefix_drops_the_components_the_globs_share(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    """``strip_prefix`` drops the leading path components all globs share, whole ones, also
    when the globs' literal parts differ (``team/web team/app``, ``team/* team/sub/*``)."""
    remote = await start_registry()
    remote_client = make_client(remote.url)
    for name in ("team/web", "team/app", "team/sub/deep", "teammate/x"):
        await push_image(remote_client, name, "latest")
    common = {"remote": remote.url, "first_run_within": "0s", "strip_prefix": "yes"}
    local = await start_registry(
        {
            "sync:plain": {**common, "repositories": "team/web team/app", "destination": "p"},
            "sync:mixed": {**common, "repositories": "team/* team/sub/*", "destination": "m"},
            # "team" and "teammate" share no whole component: nothing is dropped.
            "sync:apart": {**common, "repositories": "team/web teammate/*", "destination": "a"},
        }
    )
    for sync in ("plain", "mixed", "apart"):
        status = await wait_runs(local.url, sync)
        assert status["last"]["result"] == "ok", status
    local_client = make_client(local.url)
    catalog = [name async for name in local_client.all_repositories()]
    assert catalog == [
        "a/team/web",
        "a/teammate/x",
        "m/app",
        "m/sub/deep",
        "m/web",
        "p/app",
        "p/web",
    ]
