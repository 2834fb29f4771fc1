"""
Referrers (signatures, SBOMs) brought along with the images they refer to when
``referrers = yes``, and referrers of referrers; left behind with ``referrers = no``.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from registry.api.digests import Digest
from registry.client import NotFound
from registry.client.copy import index_referrer
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import push_image, push_index, wait_fresh_run, wait_runs


async def push_referrer(
    client: object, name: str, subject: bytes, artifact_type: str, payload: bytes
) -> bytes:
    body, blobs = images.referrer(subject, images.OCI_MANIFEST, artifact_type, payload)
    for dgst, data in blobs.items():
        await client.upload_blob(name, data, dgst)  # type: ignore[attr-defined]
    await client.put_manifest(name, images.digest(body), body)  # type: ignore[attr-defined]
    return body


@pytest_twisted.ensureDeferred
async def test_referrers_follow_their_subject(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    remote = await start_registry()
    upstream = make_client(remote.url)
    manifest, _ = await push_image(upstream, "signed/app", "v1")
    signature = await push_referrer(upstream, "signed/app", manifest, "application/x.sig", b"sig")
    # An SBOM attached to the signature: a referrer of a referrer.
    sbom = await push_referrer(upstream, "signed/app", signature, "application/x.sbom", b"sbom")

    common = {
        "remote": remote.url,
        "first_run_within": "0s",
        "repositories": "signed/app",
        "interval": "1s",
    }
    local = await start_registry(
        {
            "sync:with": {**common, "destination": "with"},
            "sync:without": {**common, "destination": "without", "referrers": "no"},
        }
    )
    here = make_client(local.url)
    status = await wait_runs(local.url, "with")
    assert status["last"]["result"] == "ok", status
    subject = images.digest(manifest)
    found = await here.referrers("with/signed/app", subject)
    assert [d["digest"] for d in found or []] == [images.digest(signature)]
    assert [d["artifactType"] for d in found or []] == ["application/x.sig"]
    nested = await here.referrers("with/signed/app", images.digest(signature))
    assert [d["digest"] for d in nested or []] == [images.digest(sbom)]
    for body in (signature, sbom):
        got = await here.get_manifest("with/signed/app", images.digest(body))
        assert got.body == body
    assert status["last"]["manifests"] == 3

    await wait_runs(local.url, "without")
    assert await here.referrers("without/signed/app", subject) == []
    with pytest.raises(NotFound):
        await here.get_manifest("without/signed/app", images.digest(signature))

    # A signature added later to a tag that is already up to date comes along on the next run.
    later = await push_referrer(upstream, "signed/app", manifest, "application/x.sig", b"sig2")
    status = await wait_fresh_run(local.url, "with")
    assert status["last"]["tags_up_to_date"] == 1
    assert status["last"]["manifests"] == 1
    found = await here.referrers("with/signed/app", subject)
    assert sorted(d["digest"] for d in found or []) == sorted(
        [images.digest(signature), images.digest(later)]
    )


@pytest_twisted.ensureDeferred
async def test_push_to_registry2_keeps_the_referrers_fallback_tag(
    registry2: Registry2Process, start_registry: Starter, make_client: ClientFactory
) -> None:
    """registry:2 has no referrers API: a pushed signature (and the SBOM on it) is listed in
    the ``sha256-<hex>`` fallback tag of its subject, as ``txregistry copy --referrers``
    keeps it, so clients that look there find it; a later signature is added to the tag."""
    local = await start_registry(
        {
            "sync:out": {
                "remote": f"http://{registry2.host}",
                "first_run_within": "0s",
                "direction": "push",
                "repositories": "signed/app",
                "interval": "1s",
            }
        }
    )
    here = make_client(local.url)
    manifest, _ = await push_image(here, "signed/app", "v1")
    signature = await push_referrer(here, "signed/app", manifest, "application/x.sig", b"sig")
    sbom = await push_referrer(here, "signed/app", signature, "application/x.sbom", b"sbom")
    status = await wait_fresh_run(local.url, "out")  # one that started after the pushes
    assert status["last"]["result"] == "ok", status
    remote = make_client(f"http://{registry2.host}")

    async def fallback(subject: bytes) -> list[tuple[str, str]]:
        tag = images.digest(subject).replace(":", "-")
        index = (await remote.get_manifest("signed/app", tag)).json()
        return [(d["digest"], d["artifactType"]) for d in index["manifests"]]

    assert await fallback(manifest) == [(images.digest(signature), "application/x.sig")]
    assert await fallback(signature) == [(images.digest(sbom), "application/x.sbom")]
    found = await remote.referrers("signed/app", images.digest(manifest), tag_schema=True)
    assert [d["digest"] for d in found or []] == [images.digest(signature)]

    later = await push_referrer(here, "signed/app", manifest, "application/x.sig", b"sig2")
    await wait_fresh_run(local.url, "out")
    assert await fallback(manifest) == [
        (images.digest(signature), "application/x.sig"),
        (images.digest(later), "application/x.sig"),
    ]


@pytest_twisted.ensureDeferred
async def test_referrers_of_the_platforms_of_an_index(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    """A signature or SBOM of one platform of an index (``cosign sign --recursive``) comes
    along with the index, also when it is added after the index arrived, pulled and pushed."""
    remote = await start_registry()
    upstream = make_client(remote.url)
    _, children, _ = await push_index(upstream, "multi/app", "v1")
    amd64, arm64 = list(children.values())
    signature = await push_referrer(upstream, "multi/app", arm64, "application/x.sig", b"arm")
    common = {"first_run_within": "0s", "repositories": "multi/app", "interval": "1s"}
    local = await start_registry(
        {
            "sync:in": {**common, "remote": remote.url, "destination": "in"},
            "sync:out": {
                **common,
                "remote": remote.url,
                "direction": "push",
                "repositories": "in/multi/app",
                "destination": "out",
            },
        }
    )
    here = make_client(local.url)
    status = await wait_runs(local.url, "in")
    assert status["last"]["result"] == "ok", status
    found = await here.referrers("in/multi/app", images.digest(arm64))
    assert [d["digest"] for d in found or []] == [images.digest(signature)]
    got = await here.get_manifest("in/multi/app", images.digest(signature))
    assert got.body == signature
    # 2 platforms, the index, the signature.
    assert status["last"]["manifests"] == 4

    # One added later, to the other platform, while the tag is up to date.
    sbom = await push_referrer(upstream, "multi/app", amd64, "application/x.sbom", b"amd")
    status = await wait_fresh_run(local.url, "in")
    assert status["last"]["tags_up_to_date"] == 1
    assert status["last"]["manifests"] == 1
    found = await here.referrers("in/multi/app", images.digest(amd64))
    assert [d["digest"] for d in found or []] == [images.digest(sbom)]

    # Pushed on (from this registry's copy) to the remote, platforms' referrers included.
    status = await wait_fresh_run(local.url, "out")
    assert status["last"]["result"] == "ok", status
    for child, referrer in ((arm64, signature), (amd64, sbom)):
        found = await upstream.referrers("out/in/multi/app", images.digest(child))
        assert [d["digest"] for d in found or []] == [images.digest(referrer)]


@pytest_twisted.ensureDeferred
async def test_pull_from_registry2_reads_the_referrers_fallback_tag(
    registry2: Registry2Process, start_registry: Starter, make_client: ClientFactory
) -> None:
    """registry:2 has no referrers API: a signature pushed there is listed in its subject's
    ``sha256-<hex>`` fallback tag (as cosign, oras and ``txregistry copy --referrers`` keep
    it).  A pull whose tag filters leave that tag out brings the signature along all the
    same, read from the fallback tag as ``txregistry copy --referrers`` reads it, and the
    fallback tag itself is not copied."""
    remote_url = f"http://{registry2.host}"
    upstream = make_client(remote_url)
    manifest, _ = await push_image(upstream, "signed/app", "v1")
    signature = await push_referrer(upstream, "signed/app", manifest, "application/x.sig", b"sig")
    await index_referrer(
        upstream,
        "signed/app",
        signature,
        images.OCI_MANIFEST,
        Digest.parse(images.digest(signature)),
    )
    assert await upstream.referrers("signed/app", images.digest(manifest)) is None  # no API
    local = await start_registry(
        {
            "sync:in": {
                "remote": remote_url,
                "first_run_within": "0s",
                "repositories": "signed/app",
                "tags": "v*",
            }
        }
    )
    status = await wait_runs(local.url, "in")
    assert status["last"]["result"] == "ok", status
    assert status["last"]["manifests"] == 2  # the image and its signature
    here = make_client(local.url)
    found = await here.referrers("signed/app", images.digest(manifest))
    assert [(d["digest"], d["artifactType"]) for d in found or []] == [
        (images.digest(signature), "application/x.sig")
    ]
    assert (await here.get_manifest("signed/app", images.digest(signature))).body == signature
    assert [tag async for tag in here.all_tags("signed/app")] == ["v1"]
