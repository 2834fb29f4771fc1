"""
A cache of registry:2, which answers a tag list whole, unsorted, whatever ``n`` and ``last``
ask: the cache sorts and pages it as the spec has it (and as a hosted repository answers),
with a ``Link`` to its own next page.
"""

from __future__ import annotations

import json
import os

import pytest_twisted
from twisted.internet import reactor

from registry.client import RegistryClient
from tests.client import images
from tests.client.conftest import registry2  # noqa: F401 - fixture
from tests.e2e.client import get, pages
from tests.e2e.conftest import Starter
from tests.e2e.tools import Registry2Process
from tests.proxy.registries import proxy_section

TAGS = ["t05", "t01", "t03", "t02", "t04"]


async def push_tags(remote: RegistryClient) -> None:
    manifest, blobs = images.image("amd64", [os.urandom(1000)])
    for digest, data in blobs.items():
        await remote.upload_blob("team/app", data, digest)
    for tag in TAGS:
        await remote.put_manifest("team/app", tag, manifest)


@pytest_twisted.ensureDeferred
async def test_a_whole_upstream_tag_list_is_sorted_and_paged(
    registry2: Registry2Process,  # noqa: F811
    start_registry: Starter,
) -> None:
    remote = RegistryClient(reactor, f"http://{registry2.host}")
    try:
        await push_tags(remote)
    finally:
        await remote.close()
    _, body = await get(f"http://{registry2.host}/v2/team/app/tags/list?n=2")
    assert len(json.loads(body)["tags"]) == 5  # what registry:2 does with n
    registry = await start_registry(
        {"proxy:r2": proxy_section(f"http://{registry2.host}", library="false")}
    )
    found = await pages(registry.url, "/v2/team/app/tags/list?n=2", "tags")
    assert found == [["t01", "t02"], ["t03", "t04"], ["t05"]]
    _, body = await get(f"{registry.url}/v2/team/app/tags/list")
    assert json.loads(body)["tags"] == sorted(TAGS)
