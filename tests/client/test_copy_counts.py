"""What `copy_image` counts in its `CopyResult`: what it copied, not what it found there."""

from __future__ import annotations

import pytest_twisted

from registry.client.copy import CopyEvent, RegistryImage, copy_image
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.test_client import push_image
from tests.e2e.harness import InProcessRegistry


@pytest_twisted.ensureDeferred
async def test_a_referrer_already_there_is_not_counted_as_copied(
    registry: InProcessRegistry, make_client: ClientFactory
) -> None:
    """A second copy finds the referrer at the destination and skips it: the summary's
    referrer count is 0 then, as its progress line (``skipped``) says."""
    client = make_client(registry.url)
    subject = await push_image(client, "src/app", "v1")
    referrer, blobs = images.referrer(
        subject, images.OCI_MANIFEST, "application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}'
    )
    for dgst, data in blobs.items():
        await client.upload_blob("src/app", data, dgst)
    await client.put_manifest("src/app", images.digest(referrer), referrer)
    source = RegistryImage(client, "src/app", "v1")
    target = RegistryImage(client, "dst/app", "v1")
    first = await copy_image(source, target, referrers=True)
    assert (first.manifests, first.referrers) == (2, 1)
    events: list[CopyEvent] = []
    again = await copy_image(source, target, referrers=True, on_event=events.append)
    assert (again.manifests, again.referrers) == (1, 0)
    assert [(e.kind, e.digest) for e in events if e.what == "referrer"] == [
        ("skipped", images.digest(referrer))
    ]
