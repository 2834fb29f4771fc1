"""Manifests, tags, referrers and the catalog through the real HTTP interface."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred, gatherResults

from registry.api import mediatypes as mt
from registry.api.digests import digest_of
from registry.handlers.listings import DEFAULT_CATALOG_PAGE
from registry.storage import layout
from registry.storage import manifests as manifest_store
from tests.e2e.client import error_codes, get, header, push_blob, raw_headers, sha256
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry
from tests.manifests import samples


async def push_image(url: str, name: str, tag: str, manifest: bytes, content_type: str) -> str:
    for blob in (samples.CONFIG, samples.LAYER_1, samples.LAYER_2):
        await push_blob(url, name, blob)
    response = await treq.put(
        f"{url}/v2/{name}/manifests/{tag}", data=manifest, headers={"Content-Type": content_type}
    )
    assert response.code == 201, await response.text()
    digest = sha256(manifest)
    assert header(response, "docker-content-digest") == digest
    assert header(response, "location") == f"/v2/{name}/manifests/{digest}"
    return digest


@pytest_twisted.ensureDeferred
async def test_a_manifest_behind_a_byte_order_mark_is_refused(registry: InProcessRegistry) -> None:
    """docker, containerd and skopeo cannot decode it: a 400, and nothing stored."""
    url = registry.url
    await push_image(url, "bom", "plain", samples.oci_image(), mt.OCI_IMAGE_MANIFEST)
    for body in (
        b"\xef\xbb\xbf" + samples.oci_image(),
        samples.oci_image().decode().encode("utf-16"),
    ):
        response = await treq.put(
            f"{url}/v2/bom/manifests/marked",
            data=body,
            headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
        )
        assert response.code == 400
        assert await error_codes(response) == ["MANIFEST_INVALID"]
        response = await treq.get(f"{url}/v2/bom/manifests/{sha256(body)}")
        assert response.code == 404
        await response.content()
    response, body = await get(f"{url}/v2/bom/tags/list")
    assert json.loads(body)["tags"] == ["plain"]


@pytest_twisted.ensureDeferred
async def test_a_large_manifest_is_parsed_off_the_reactor_thread(
    registry: InProcessRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing the largest manifests takes long enough to hold up every other request of the
    process: they are parsed in a thread, small ones in place; both are stored whole."""
    on_reactor_thread: list[bool] = []
    parse = manifest_store.parse_manifest

    def watched(*args: Any) -> Any:
        on_reactor_thread.append(threading.current_thread() is threading.main_thread())
        return parse(*args)

    monkeypatch.setattr(manifest_store, "parse_manifest", watched)
    large = samples.oci_image(annotations={"notes": "x" * manifest_store.PARSE_IN_THREAD})
    for tag, body in (("small", samples.oci_image()), ("large", large)):
        await push_image(registry.url, "big", tag, body, mt.OCI_IMAGE_MANIFEST)
        response, stored = await get(f"{registry.url}/v2/big/manifests/{tag}")
        assert (response.code, stored) == (200, body)
    assert on_reactor_thread == [True, False]


@pytest_twisted.ensureDeferred
async def test_manifest_types_round_trip(registry: InProcessRegistry) -> None:
    image = samples.oci_image()
    docker = samples.docker_image()
    cases = [
        ("oci", image, mt.OCI_IMAGE_MANIFEST),
        ("docker", docker, mt.DOCKER_MANIFEST_V2),
    ]
    for tag, body, media_type in cases:
        digest = await push_image(registry.url, "app", tag, body, media_type)
        for reference in (tag, digest):
            response, got = await get(f"{registry.url}/v2/app/manifests/{reference}")
            assert response.code == 200
            assert got == body
            assert header(response, "content-type") == media_type
            assert header(response, "docker-content-digest") == digest
            status, headers = await raw_headers(
                "HEAD", f"{registry.url}/v2/app/manifests/{reference}"
            )
            assert status == 200
            assert headers["content-length"] == str(len(body))
            assert headers["docker-content-digest"] == digest
            assert headers["content-type"] == media_type

    index = samples.oci_index([image, image])
    response = await treq.put(
        f"{registry.url}/v2/app/manifests/multi",
        data=index,
        headers={"Content-Type": mt.OCI_IMAGE_INDEX},
    )
    assert response.code == 201, await response.text()
    lst = samples.docker_list([docker, docker])
    response = await treq.put(
        f"{registry.url}/v2/app/manifests/dlist",
        data=lst,
        headers={"Content-Type": mt.DOCKER_MANIFEST_LIST},
    )
    assert response.code == 201, await response.text()
    response, got = await get(f"{registry.url}/v2/app/manifests/dlist")
    assert (got, header(response, "content-type")) == (lst, mt.DOCKER_MANIFEST_LIST)


@pytest_twisted.ensureDeferred
async def test_manifest_put_errors(registry: InProcessRegistry) -> None:
    url = registry.url
    cases = [
        (b"not json", mt.OCI_IMAGE_MANIFEST, "MANIFEST_INVALID"),
        (samples.schema1(), mt.DOCKER_SCHEMA1_SIGNED, "MANIFEST_INVALID"),
        (samples.oci_image(), mt.DOCKER_MANIFEST_V2, "MANIFEST_INVALID"),  # type mismatch
        (samples.oci_image(), mt.OCI_IMAGE_MANIFEST, "MANIFEST_BLOB_UNKNOWN"),  # no blobs
    ]
    for body, content_type, code in cases:
        response = await treq.put(
            f"{url}/v2/bad/manifests/x", data=body, headers={"Content-Type": content_type}
        )
        assert response.code == 400, code
        assert await error_codes(response) == [code]

    response = await treq.put(
        f"{url}/v2/bad/manifests/x", data=samples.schema1(), headers={"Content-Type": "x/y"}
    )
    body = json.loads(await response.content())
    assert "schema1" in body["errors"][0]["message"].lower()

    image = samples.oci_image()
    index = samples.oci_index([image])
    response = await treq.put(
        f"{url}/v2/bad/manifests/idx", data=index, headers={"Content-Type": mt.OCI_IMAGE_INDEX}
    )
    assert response.code == 400
    assert await error_codes(response) == [
        "MANIFEST_BLOB_UNKNOWN"
    ]  # the spec: a manifest or a blob

    await push_image(url, "bad", "ok", image, mt.OCI_IMAGE_MANIFEST)
    wrong = sha256(b"something else")
    response = await treq.put(
        f"{url}/v2/bad/manifests/{wrong}",
        data=image,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 400
    assert await error_codes(response) == ["DIGEST_INVALID"]
    response = await treq.put(
        f"{url}/v2/bad/manifests/{sha256(image)}",
        data=image,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201


@pytest_twisted.ensureDeferred
async def test_manifest_too_large_is_413(start_registry: Starter) -> None:
    registry = await start_registry({"storage": {"max_manifest_size": "64KiB"}})
    big = b"{" + b" " * (100 * 1024) + b"}"
    response = await treq.put(
        f"{registry.url}/v2/big/manifests/x",
        data=big,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 413
    assert await error_codes(response) == ["MANIFEST_INVALID"]
    # Above the default 4 MiB: refused from the Content-Length alone.
    huge = b" " * (5 * 1024 * 1024)
    response = await treq.put(
        f"{registry.url}/v2/big/manifests/y",
        data=huge,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 413
    assert await error_codes(response) == ["MANIFEST_INVALID"]


@pytest_twisted.ensureDeferred
async def test_unknown_manifest_and_repository(registry: InProcessRegistry) -> None:
    response = await treq.get(f"{registry.url}/v2/nobody/manifests/latest")
    assert response.code == 404
    assert await error_codes(response) == ["NAME_UNKNOWN"]
    await push_image(registry.url, "some", "v1", samples.oci_image(), mt.OCI_IMAGE_MANIFEST)
    response = await treq.get(f"{registry.url}/v2/some/manifests/v2")
    assert response.code == 404
    assert await error_codes(response) == ["MANIFEST_UNKNOWN"]
    response = await treq.get(f"{registry.url}/v2/nobody/tags/list")
    assert response.code == 404
    assert await error_codes(response) == ["NAME_UNKNOWN"]


@pytest_twisted.ensureDeferred
async def test_an_upload_alone_makes_no_repository(registry: InProcessRegistry) -> None:
    """A push that has only started an upload (or one registry:2 purged since) leaves a
    folder holding ``_uploads``: no repository yet, as registry:2 and the catalog say."""
    response = await treq.post(f"{registry.url}/v2/starting/blobs/uploads/")
    await response.content()
    assert response.code == 202
    for path in ("tags/list", "manifests/latest"):
        response = await treq.get(f"{registry.url}/v2/starting/{path}")
        assert response.code == 404, path
        assert await error_codes(response) == ["NAME_UNKNOWN"], path
    await push_blob(registry.url, "starting", b"a first layer")  # linked: a repository now
    response, got = await get(f"{registry.url}/v2/starting/tags/list")
    assert (response.code, json.loads(got)) == (200, {"name": "starting", "tags": []})


@pytest_twisted.ensureDeferred
async def test_accept_negotiation(registry: InProcessRegistry) -> None:
    body = samples.oci_image()
    await push_image(registry.url, "neg", "v1", body, mt.OCI_IMAGE_MANIFEST)
    response, got = await get(
        f"{registry.url}/v2/neg/manifests/v1", headers={"Accept": mt.DOCKER_MANIFEST_V2}
    )
    assert (response.code, got) == (200, body)
    assert header(response, "content-type") == mt.OCI_IMAGE_MANIFEST
    response = await treq.get(
        f"{registry.url}/v2/neg/manifests/v1",
        headers={"Accept": f"{mt.DOCKER_SCHEMA1_SIGNED}, {mt.DOCKER_SCHEMA1}"},
    )
    assert response.code == 404
    assert await error_codes(response) == ["MANIFEST_UNKNOWN"]


@pytest_twisted.ensureDeferred
async def test_tags_pagination(registry: InProcessRegistry) -> None:
    body = samples.oci_image()
    await push_image(registry.url, "tagged", "a", body, mt.OCI_IMAGE_MANIFEST)
    for tag in ("d", "b", "c", "e"):
        response = await treq.put(
            f"{registry.url}/v2/tagged/manifests/{tag}",
            data=body,
            headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
        )
        assert response.code == 201
    response, got = await get(f"{registry.url}/v2/tagged/tags/list")
    assert json.loads(got) == {"name": "tagged", "tags": ["a", "b", "c", "d", "e"]}
    assert header(response, "link") is None

    seen: list[str] = []
    url = f"{registry.url}/v2/tagged/tags/list?n=2"
    while url:
        response, got = await get(url)
        seen += json.loads(got)["tags"]
        link = header(response, "link")
        url = registry.url + link.split(">")[0][1:] if link else ""
    assert seen == ["a", "b", "c", "d", "e"]

    response, got = await get(f"{registry.url}/v2/tagged/tags/list?last=c")
    assert json.loads(got)["tags"] == ["d", "e"]
    response = await treq.get(f"{registry.url}/v2/tagged/tags/list?n=-1")
    assert response.code == 400
    assert await error_codes(response) == ["PAGINATION_NUMBER_INVALID"]


@pytest_twisted.ensureDeferred
async def test_deletes(start_registry: Starter) -> None:
    registry = await start_registry({"storage": {"delete_enabled": "true"}})
    url = registry.url
    body = samples.oci_image()
    digest = await push_image(url, "del", "one", body, mt.OCI_IMAGE_MANIFEST)
    await treq.put(
        f"{url}/v2/del/manifests/two", data=body, headers={"Content-Type": mt.OCI_IMAGE_MANIFEST}
    )

    response = await treq.delete(f"{url}/v2/del/manifests/one")  # untag only
    assert response.code == 202
    assert (await treq.get(f"{url}/v2/del/manifests/one")).code == 404
    assert (await treq.get(f"{url}/v2/del/manifests/{digest}")).code == 200
    response, got = await get(f"{url}/v2/del/tags/list")
    assert json.loads(got)["tags"] == ["two"]

    response = await treq.delete(f"{url}/v2/del/manifests/{digest}")  # removes its tags
    assert response.code == 202
    assert (await treq.get(f"{url}/v2/del/manifests/{digest}")).code == 404
    assert (await treq.get(f"{url}/v2/del/manifests/two")).code == 404
    response = await treq.delete(f"{url}/v2/del/manifests/{digest}")
    assert response.code == 404
    assert await error_codes(response) == ["MANIFEST_UNKNOWN"]


@pytest_twisted.ensureDeferred
async def test_manifest_delete_disabled(registry: InProcessRegistry) -> None:
    digest = await push_image(registry.url, "keep", "v", samples.oci_image(), mt.OCI_IMAGE_MANIFEST)
    for reference in ("v", digest):
        response = await treq.delete(f"{registry.url}/v2/keep/manifests/{reference}")
        assert response.code == 405
        assert await error_codes(response) == ["UNSUPPORTED"]
    assert (await treq.get(f"{registry.url}/v2/keep/manifests/v")).code == 200


@pytest_twisted.ensureDeferred
async def test_readonly_refuses_manifest_writes(start_registry: Starter) -> None:
    registry = await start_registry({"maintenance": {"readonly": "true"}})
    response = await treq.put(
        f"{registry.url}/v2/ro/manifests/x",
        data=samples.oci_image(),
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 405
    body = json.loads(await response.content())
    assert body["errors"][0]["code"] == "UNSUPPORTED"
    assert "read-only" in body["errors"][0]["message"]


@pytest_twisted.ensureDeferred
async def test_referrers(start_registry: Starter) -> None:
    registry = await start_registry({"storage": {"delete_enabled": "true"}})
    url = registry.url
    subject = samples.oci_image()
    subject_digest = await push_image(url, "ref", "v1", subject, mt.OCI_IMAGE_MANIFEST)

    empty = {"schemaVersion": 2, "mediaType": mt.OCI_IMAGE_INDEX, "manifests": []}
    response, got = await get(f"{url}/v2/never/pushed/referrers/{subject_digest}")
    assert (response.code, json.loads(got)) == (200, empty)
    response, got = await get(f"{url}/v2/ref/referrers/{subject_digest}")
    assert response.code == 200
    assert header(response, "content-type") == mt.OCI_IMAGE_INDEX
    assert json.loads(got) == {"schemaVersion": 2, "mediaType": mt.OCI_IMAGE_INDEX, "manifests": []}

    await push_blob(url, "ref", samples.SIGNATURE)
    signature = samples.artifact(subject, annotations={"who": "ci"})
    response = await treq.put(
        f"{url}/v2/ref/manifests/{sha256(signature)}",
        data=signature,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201, await response.text()
    assert header(response, "oci-subject") == subject_digest

    await push_blob(url, "ref", samples.SBOM)
    await push_blob(url, "ref", b"{}")
    sbom = samples.config_typed_artifact(subject)
    response = await treq.put(
        f"{url}/v2/ref/manifests/{sha256(sbom)}",
        data=sbom,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201, await response.text()

    response, got = await get(f"{url}/v2/ref/referrers/{subject_digest}")
    found = {d["digest"]: d for d in json.loads(got)["manifests"]}
    assert set(found) == {sha256(signature), sha256(sbom)}
    assert (
        found[sha256(signature)]["artifactType"]
        == "application/vnd.dev.cosign.artifact.sig.v1+json"
    )
    assert found[sha256(signature)]["annotations"] == {"who": "ci"}
    assert found[sha256(sbom)]["artifactType"] == "application/vnd.example.sbom.config.v1+json"

    response, got = await get(
        f"{url}/v2/ref/referrers/{subject_digest}?artifactType=application/vnd.example.sbom.config.v1%2Bjson"
    )
    assert header(response, "oci-filters-applied") == "artifactType"
    assert [d["digest"] for d in json.loads(got)["manifests"]] == [sha256(sbom)]

    response, got = await get(f"{url}/v2/ref/referrers/{subject_digest}?n=1")
    assert len(json.loads(got)["manifests"]) == 1
    assert header(response, "link") is not None

    response = await treq.get(f"{url}/v2/ref/referrers/sha256:nothex")
    assert response.code == 400
    assert await error_codes(response) == ["DIGEST_INVALID"]

    # A subject that does not exist yet still gets OCI-Subject.
    ghost = samples.oci_image(layers=(samples.LAYER_1,))
    orphan = samples.artifact(ghost)
    response = await treq.put(
        f"{url}/v2/ref/manifests/orphan",
        data=orphan,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201
    assert header(response, "oci-subject") == sha256(ghost)

    # Deleting a referrer removes it from the index.
    response = await treq.delete(f"{url}/v2/ref/manifests/{sha256(signature)}")
    assert response.code == 202
    response, got = await get(f"{url}/v2/ref/referrers/{subject_digest}")
    assert [d["digest"] for d in json.loads(got)["manifests"]] == [sha256(sbom)]


@pytest_twisted.ensureDeferred
async def test_an_empty_artifact_type_is_no_artifact_type(registry: InProcessRegistry) -> None:
    """In a manifest, ``"artifactType": ""`` is accepted as absent (the referrers API falls
    back to the config's media type); in the referrers query, ``?artifactType=`` filters
    nothing and says no filter was applied."""
    url = registry.url
    subject = samples.oci_image()
    subject_digest = await push_image(url, "empty", "v1", subject, mt.OCI_IMAGE_MANIFEST)
    await push_blob(url, "empty", samples.SIGNATURE)
    await push_blob(url, "empty", mt.OCI_EMPTY_CONTENT)
    untyped = samples.artifact(subject, artifact_type="")
    response = await treq.put(
        f"{url}/v2/empty/manifests/{sha256(untyped)}",
        data=untyped,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201, await response.text()
    typed = samples.artifact(subject)
    response = await treq.put(
        f"{url}/v2/empty/manifests/{sha256(typed)}",
        data=typed,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201, await response.text()

    response, got = await get(f"{url}/v2/empty/referrers/{subject_digest}?artifactType=")
    assert response.code == 200
    assert header(response, "oci-filters-applied") is None
    found = {d["digest"]: d.get("artifactType") for d in json.loads(got)["manifests"]}
    assert found == {
        sha256(untyped): mt.OCI_EMPTY,
        sha256(typed): "application/vnd.dev.cosign.artifact.sig.v1+json",
    }


@pytest_twisted.ensureDeferred
async def test_a_referrers_page_is_at_most_4_mib_and_links_to_the_rest(
    registry: InProcessRegistry,
) -> None:
    """Referrers carrying large annotations (anyone who may push can add them): a page holds
    what fits in 4 MiB, the size clients read a manifest with (oras: 4 MiB), and links to the
    next, with or without ``n``; following the links lists every referrer once, in order."""
    url = registry.url
    subject = samples.oci_image()
    subject_digest = await push_image(url, "big/ref", "v1", subject, mt.OCI_IMAGE_MANIFEST)
    await push_blob(url, "big/ref", samples.SIGNATURE)
    pushed = set()
    for index in range(6):
        note = f"{index}:" + "x" * 1_000_000  # about 1 MB each, in a 4 MiB manifest
        referrer = samples.artifact(subject, annotations={"note": note})
        response = await treq.put(
            f"{url}/v2/big/ref/manifests/{sha256(referrer)}",
            data=referrer,
            headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
        )
        assert response.code == 201, await response.text()
        pushed.add(sha256(referrer))
    for query in ("", "?n=100"):
        listed: list[str] = []
        link: str | None = f"/v2/big/ref/referrers/{subject_digest}{query}"
        for _ in range(10):  # bounded: six referrers, at least one a page
            if link is None:
                break
            response, got = await get(f"{url}{link}")
            assert response.code == 200
            assert len(got) <= 4 * 1024 * 1024, len(got)
            page = [d["digest"] for d in json.loads(got)["manifests"]]
            assert page, got[:200]
            listed += page
            raw = header(response, "link")
            link = raw.split(">", 1)[0].lstrip("<") if raw is not None else None
        assert link is None
        assert listed == sorted(pushed), query
        assert len(listed) > 3  # more than one page


@pytest_twisted.ensureDeferred
async def test_catalog(registry: InProcessRegistry) -> None:
    names = ["zeta", "alpha/one", "alpha/two", "mid/x/y"]
    for name in names:
        await push_blob(registry.url, name, name.encode())
    response, got = await get(f"{registry.url}/v2/_catalog")
    assert response.code == 200
    assert json.loads(got) == {"repositories": sorted(names)}
    response, got = await get(f"{registry.url}/v2/_catalog?n=2")
    assert json.loads(got)["repositories"] == ["alpha/one", "alpha/two"]
    link = header(response, "link")
    assert link is not None and 'rel="next"' in link
    response, got = await get(registry.url + link.split(">")[0][1:])
    assert json.loads(got)["repositories"] == ["mid/x/y", "zeta"]


@pytest_twisted.ensureDeferred
async def test_a_catalog_asked_without_n_is_a_bounded_page_with_a_link(
    registry: InProcessRegistry,
) -> None:
    """registry:2 answers 100 names and a ``Link``; every name in one answer would grow with
    the registry.  The default page here is DEFAULT_CATALOG_PAGE, the rest after the link."""
    names = sorted(f"team{i:04d}/app" for i in range(DEFAULT_CATALOG_PAGE + 5))
    for start in range(0, len(names), 25):  # 25 pushes at a time
        batch = names[start : start + 25]
        await gatherResults([ensureDeferred(push_blob(registry.url, n, b"x")) for n in batch])
    response, got = await get(f"{registry.url}/v2/_catalog")
    assert response.code == 200
    assert json.loads(got)["repositories"] == names[:DEFAULT_CATALOG_PAGE]
    link = header(response, "link")
    assert link == (
        f"</v2/_catalog?last={names[DEFAULT_CATALOG_PAGE - 1].replace('/', '%2F')}"
        f'&n={DEFAULT_CATALOG_PAGE}>; rel="next"'
    )
    response, got = await get(registry.url + link.split(">")[0][1:])
    assert json.loads(got)["repositories"] == names[DEFAULT_CATALOG_PAGE:]
    assert header(response, "link") is None


@pytest_twisted.ensureDeferred
async def test_foreign_layer_url_policy(start_registry: Starter) -> None:
    registry = await start_registry(
        {"validation": {"urls_allow": r"^https://layers\.example\.com/", "urls_deny": "forbidden"}}
    )
    await push_blob(registry.url, "win", samples.CONFIG)

    def manifest(url: str) -> bytes:
        foreign = {
            "mediaType": mt.DOCKER_FOREIGN_LAYER,
            "digest": sha256(b"windows base layer"),
            "size": 123456789,
            "urls": [url],
        }
        document = {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST_V2,
            "config": samples.descriptor(mt.DOCKER_CONTAINER_CONFIG, samples.CONFIG),
            "layers": [foreign],
        }
        return json.dumps(document).encode()

    for url, status in [
        ("https://layers.example.com/base.tar.gz", 201),
        ("https://elsewhere.example.net/base.tar.gz", 400),
        ("https://layers.example.com/forbidden.tar.gz", 400),
        ("ftp://layers.example.com/base.tar.gz", 400),
    ]:
        response = await treq.put(
            f"{registry.url}/v2/win/manifests/base",
            data=manifest(url),
            headers={"Content-Type": mt.DOCKER_MANIFEST_V2},
        )
        assert response.code == status, url
        if status == 400:
            assert await error_codes(response) == ["MANIFEST_INVALID"]


@pytest_twisted.ensureDeferred
async def test_a_schema1_manifest_left_by_registry2_is_served_to_schema1_clients(
    start_registry: Starter, tmp_path: Path
) -> None:
    """Storage taken over from registry:2 can hold signed schema1 manifests: served by tag and
    by digest with their own type to every client, the schema1-only ones included (as
    registry:2 serves them), instead of a 404 telling them to upgrade."""
    body = samples.schema1(signed=True)
    digest = digest_of(body)
    root = tmp_path / "stored"
    for path, content in [
        (layout.blob_data(digest), body),
        (layout.revision_link("old/s1", digest), str(digest).encode()),
        (layout.tag_current_link("old/s1", "legacy"), str(digest).encode()),
        (layout.tag_index_link("old/s1", "legacy", digest), str(digest).encode()),
    ]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    for reference in ("legacy", str(digest)):
        url = f"{registry.url}/v2/old/s1/manifests/{reference}"
        for accept in ([mt.DOCKER_SCHEMA1_SIGNED], [mt.DOCKER_SCHEMA1], [mt.DOCKER_MANIFEST_V2]):
            response = await treq.get(url, headers={"Accept": accept})
            assert response.code == 200, (reference, accept)
            assert header(response, "content-type") == mt.DOCKER_SCHEMA1_SIGNED
            assert header(response, "docker-content-digest") == str(digest)
            assert await response.content() == body


@pytest_twisted.ensureDeferred
async def test_schema1_only_clients_are_told_to_upgrade(registry: InProcessRegistry) -> None:
    """
    A client accepting schema1 and no other manifest type gets MANIFEST_UNKNOWN saying why;
    one that also accepts the stored type gets the manifest.  Each answer twice: the Accept
    headers' verdicts are remembered, and must stay each header's own.
    """
    digest = await push_image(
        registry.url, "old", "v1", samples.docker_image(), mt.DOCKER_MANIFEST_V2
    )
    url = f"{registry.url}/v2/old/manifests/v1"
    for _ in range(2):
        for accept, status in [
            ([mt.DOCKER_SCHEMA1_SIGNED], 404),
            ([f"{mt.DOCKER_SCHEMA1}, {mt.DOCKER_SCHEMA1_SIGNED}"], 404),
            ([mt.DOCKER_SCHEMA1_SIGNED, mt.DOCKER_MANIFEST_V2], 200),
            ([mt.DOCKER_SCHEMA1, "*/*"], 200),
            ([], 200),
        ]:
            response = await treq.get(url, headers={"Accept": accept} if accept else {})
            assert response.code == status, accept
            if status == 404:
                assert await error_codes(response) == ["MANIFEST_UNKNOWN"]
                message = json.loads(await response.content())["errors"][0]["message"]
                assert "schema1" in message
            else:
                assert header(response, "docker-content-digest") == digest
