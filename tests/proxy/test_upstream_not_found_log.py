"""
An upstream's 404 is an answer: clients asking for digests nobody has (scanners, typos, a
client probing before a push) get their 404 without a warning per request in the log.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
import treq

from tests.e2e.harness import RegistryProcess
from tests.fakes.upstream import FakeUpstream
from tests.proxy.test_fleet import fake  # noqa: F401 - fixture


@pytest_twisted.ensureDeferred
async def test_an_upstream_404_is_not_logged_as_a_failure(
    tmp_path: Path,
    fake: FakeUpstream,  # noqa: F811
) -> None:
    fake.content.add_image("library/alpine", "latest", [4096])
    sections = {"proxy:hub": {"remoteurl": fake.url, "prefix": "docker.io", "default": "true"}}
    instance = RegistryProcess(tmp_path, sections)
    instance.start()
    try:
        for n in range(5):
            digest = "sha256:" + f"{n:x}" * 64
            url = f"{instance.url}/v2/library/alpine/blobs/{digest}"
            response = await treq.head(url)
            assert response.code == 404
            response = await treq.get(url)
            assert response.code == 404
            await response.content()
        response = await treq.get(f"{instance.url}/v2/library/alpine/manifests/nosuchtag")
        assert response.code == 404
        await response.content()
    finally:
        instance.stop()
    log = instance.log_text()
    assert "registry 404" not in log, log[-2000:]
    assert "failed:" not in log, log[-2000:]
