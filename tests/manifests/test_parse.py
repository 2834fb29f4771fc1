"""Parsing and validation of pushed manifests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.api import mediatypes as mt
from registry.api.digests import Digest, digest_of
from registry.api.errors import MANIFEST_INVALID, RegistryError
from registry.manifests import (
    SCHEMA1_REFUSED,
    ParsedManifest,
    UrlPolicy,
    parse_manifest,
    stored_media_type,
)
from tests.manifests import samples


def invalid(body: bytes, content_type: str | None = None, **kw: Any) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_manifest(body, content_type, **kw)
    assert info.value.code is MANIFEST_INVALID
    assert info.value.status == 400
    return info.value


def mutate(body: bytes, **changes: Any) -> bytes:
    document = json.loads(body)
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


def test_oci_image() -> None:
    body = samples.oci_image(annotations={"a": "b"})
    parsed = parse_manifest(body, mt.OCI_IMAGE_MANIFEST)
    assert parsed.media_type == mt.OCI_IMAGE_MANIFEST
    assert parsed.kind == "image"
    assert parsed.config is not None
    assert str(parsed.config.digest) == samples.sha256(samples.CONFIG)
    assert parsed.config.size == len(samples.CONFIG)
    assert parsed.config.media_type == mt.OCI_IMAGE_CONFIG
    assert [str(layer.digest) for layer in parsed.layers] == [
        samples.sha256(samples.LAYER_1),
        samples.sha256(samples.LAYER_2),
    ]
    assert parsed.manifests == ()
    assert parsed.subject is None
    assert parsed.annotations == {"a": "b"}
    assert parsed.referrer_artifact_type == mt.OCI_IMAGE_CONFIG
    assert len(parsed.blob_references) == 3


def test_oci_index() -> None:
    children = [samples.oci_image(), samples.oci_image(layers=(samples.LAYER_1,))]
    parsed = parse_manifest(samples.oci_index(children), mt.OCI_IMAGE_INDEX)
    assert parsed.kind == "index"
    assert parsed.config is None and parsed.layers == ()
    assert [m.digest for m in parsed.manifests] == [digest_of(c) for c in children]
    assert parsed.manifests[1].platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert parsed.referrer_artifact_type is None
    assert parsed.blob_references == ()


def test_docker_schema2() -> None:
    parsed = parse_manifest(samples.docker_image(), mt.DOCKER_MANIFEST_V2)
    assert parsed.media_type == mt.DOCKER_MANIFEST_V2
    assert parsed.kind == "image"
    assert parsed.config is not None
    assert parsed.config.media_type == mt.DOCKER_CONTAINER_CONFIG
    assert len(parsed.layers) == 2


def test_docker_manifest_list() -> None:
    children = [samples.docker_image(), samples.docker_image(layers=(samples.LAYER_2,))]
    parsed = parse_manifest(samples.docker_list(children), mt.DOCKER_MANIFEST_LIST)
    assert parsed.media_type == mt.DOCKER_MANIFEST_LIST
    assert parsed.kind == "index"
    assert [m.media_type for m in parsed.manifests] == [mt.DOCKER_MANIFEST_V2] * 2


def test_artifact_with_subject_and_artifact_type() -> None:
    image = samples.oci_image()
    parsed = parse_manifest(samples.artifact(image), mt.OCI_IMAGE_MANIFEST)
    assert parsed.subject is not None
    assert parsed.subject.digest == digest_of(image)
    assert parsed.subject.size == len(image)
    assert parsed.artifact_type == "application/vnd.dev.cosign.artifact.sig.v1+json"
    assert parsed.referrer_artifact_type == parsed.artifact_type
    assert parsed.config is not None
    assert str(parsed.config.digest) == mt.OCI_EMPTY_DIGEST


def test_artifact_type_from_config() -> None:
    parsed = parse_manifest(samples.config_typed_artifact(samples.oci_image()), None)
    assert parsed.artifact_type is None
    assert parsed.referrer_artifact_type == "application/vnd.example.sbom.config.v1+json"
    assert parsed.annotations == {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}


def test_empty_config_artifact_without_artifact_type() -> None:
    parsed = parse_manifest(samples.artifact(samples.oci_image(), artifact_type=None), None)
    assert parsed.referrer_artifact_type == mt.OCI_EMPTY


def test_index_with_subject_and_artifact_type() -> None:
    image = samples.oci_image()
    body = samples.oci_index(
        [image],
        subject=samples.descriptor(mt.OCI_IMAGE_MANIFEST, image),
        artifactType="application/vnd.example.bundle",
    )
    parsed = parse_manifest(body, mt.OCI_IMAGE_INDEX)
    assert parsed.subject is not None and parsed.subject.digest == digest_of(image)
    assert parsed.referrer_artifact_type == "application/vnd.example.bundle"


def test_an_empty_artifact_type_reads_as_absent() -> None:
    """The distribution spec treats ``"artifactType": ""`` as missing (registry:2 accepts it):
    the referrers API then reports the config's media type."""
    image = samples.oci_image()
    parsed = parse_manifest(
        mutate(
            samples.artifact(image, artifact_type=""),
            config=samples.descriptor("application/x.cfg", b"{}"),
        ),
        mt.OCI_IMAGE_MANIFEST,
    )
    assert parsed.artifact_type is None
    assert parsed.referrer_artifact_type == "application/x.cfg"
    index = samples.oci_index(
        [image], subject=samples.descriptor(mt.OCI_IMAGE_MANIFEST, image), artifactType=""
    )
    parsed = parse_manifest(index, mt.OCI_IMAGE_INDEX)
    assert parsed.artifact_type is None and parsed.referrer_artifact_type is None
    parsed = parse_manifest(_with_layer(artifactType=""), mt.OCI_IMAGE_MANIFEST)
    assert parsed.layers[1].artifact_type is None


def test_docker_types_ignore_oci_only_fields() -> None:
    body = mutate(samples.docker_image(), subject="not a descriptor", artifactType=5)
    parsed = parse_manifest(body, mt.DOCKER_MANIFEST_V2)
    assert parsed.subject is None and parsed.artifact_type is None


def test_oci_layers_may_be_absent() -> None:
    parsed = parse_manifest(mutate(samples.oci_image(), layers=None), mt.OCI_IMAGE_MANIFEST)
    assert parsed.layers == ()


def test_docker_layers_required() -> None:
    error = invalid(mutate(samples.docker_image(), layers=None), mt.DOCKER_MANIFEST_V2)
    assert "layers" in error.detail["reason"]


@pytest.mark.parametrize(
    "content_type",
    [
        f"{mt.OCI_IMAGE_MANIFEST}; charset=utf-8",
        mt.OCI_IMAGE_MANIFEST.upper(),
        f"  {mt.OCI_IMAGE_MANIFEST} ",
    ],
)
def test_content_type_parameters_and_case(content_type: str) -> None:
    assert parse_manifest(samples.oci_image(), content_type).media_type == mt.OCI_IMAGE_MANIFEST


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/octet-stream"])
def test_generic_content_type_uses_body(content_type: str | None) -> None:
    assert parse_manifest(samples.docker_image(), content_type).media_type == mt.DOCKER_MANIFEST_V2
    index = samples.oci_index([samples.oci_image()])
    assert parse_manifest(index, content_type).media_type == mt.OCI_IMAGE_INDEX
    bare_index = mutate(index, mediaType=None)
    assert parse_manifest(bare_index, content_type).media_type == mt.OCI_IMAGE_INDEX
    bare_image = mutate(samples.oci_image(), mediaType=None)
    assert parse_manifest(bare_image, content_type).media_type == mt.OCI_IMAGE_MANIFEST


def test_generic_content_type_ambiguous_body() -> None:
    bare = mutate(samples.oci_image(), mediaType=None, manifests=[])
    assert "cannot tell" in invalid(bare).detail["reason"]
    assert "cannot tell" in invalid(b'{"schemaVersion": 2}').detail["reason"]


def test_generic_content_type_unknown_body_type() -> None:
    body = mutate(samples.oci_image(), mediaType="application/vnd.example+json")
    error = invalid(body, "application/json")
    assert error.detail["media_type"] == "application/vnd.example+json"


def test_oci_content_type_without_body_media_type() -> None:
    bare = mutate(samples.oci_image(), mediaType=None)
    assert parse_manifest(bare, mt.OCI_IMAGE_MANIFEST).media_type == mt.OCI_IMAGE_MANIFEST
    # The body alone would read back as an image manifest, not an index.
    invalid(bare, mt.OCI_IMAGE_INDEX)


def test_docker_content_type_needs_body_media_type() -> None:
    error = invalid(mutate(samples.docker_image(), mediaType=None), mt.DOCKER_MANIFEST_V2)
    assert "mediaType" in error.detail["reason"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (mt.OCI_IMAGE_INDEX, samples.oci_image()),
        (mt.DOCKER_MANIFEST_V2, samples.oci_image()),
        (mt.OCI_IMAGE_MANIFEST, samples.docker_image()),
        (mt.DOCKER_MANIFEST_LIST, samples.oci_index([samples.oci_image()])),
    ],
)
def test_content_type_mismatch(content_type: str, body: bytes) -> None:
    error = invalid(body, content_type)
    assert error.detail["content_type"] == content_type
    assert "does not match" in error.message


def test_unsupported_content_type() -> None:
    error = invalid(samples.oci_image(), "application/vnd.example.thing+json")
    assert mt.OCI_IMAGE_MANIFEST in error.detail["supported"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (samples.schema1(signed=True), mt.DOCKER_SCHEMA1_SIGNED),
        (samples.schema1(signed=False), mt.DOCKER_SCHEMA1),
        (samples.schema1(), None),
        (samples.schema1(), "application/json"),
        (samples.schema1(), mt.DOCKER_MANIFEST_V2),
        (b"not even json", mt.DOCKER_SCHEMA1_SIGNED),
        (mutate(samples.docker_image(), mediaType=mt.DOCKER_SCHEMA1), None),
    ],
)
def test_schema1_refused(body: bytes, content_type: str | None) -> None:
    error = invalid(body, content_type)
    assert error.message == SCHEMA1_REFUSED
    assert "schema1" in error.message and "schema2" in error.message and "OCI" in error.message


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'"manifest"',
        b"null",
        b"\xff\xfe\x00",
        b'{"schemaVersion": NaN}',
        b"[" * 100_000,
    ],
)
def test_malformed_json(body: bytes) -> None:
    invalid(body, mt.OCI_IMAGE_MANIFEST)


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),  # a UTF-8 byte order mark
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-16-le"),
        lambda text: text.encode("utf-32"),
    ],
)
def test_a_valid_manifest_not_in_plain_utf8_is_refused(encode: Any) -> None:
    """Clients decode manifests as UTF-8 without a BOM: anything else, once accepted, could
    never be pulled."""
    text = samples.oci_image().decode()
    invalid(encode(text), mt.OCI_IMAGE_MANIFEST)


@pytest.mark.parametrize("version", [None, 0, 3, "2", 2.0, True, [2]])
def test_wrong_schema_version(version: Any) -> None:
    body = mutate(samples.oci_image(), schemaVersion=version)
    error = invalid(body, mt.OCI_IMAGE_MANIFEST)
    assert "schemaVersion" in error.detail["reason"]


def test_body_media_type_not_a_string() -> None:
    invalid(mutate(samples.oci_image(), mediaType=7), mt.OCI_IMAGE_MANIFEST)


def _with_layer(**changes: Any) -> bytes:
    document = json.loads(samples.oci_image())
    layer = document["layers"][1]
    for key, value in changes.items():
        if value is None:
            layer.pop(key)
        else:
            layer[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"digest": None}, "layers[1].digest"),
        ({"digest": "sha256:abc"}, "layers[1].digest"),
        ({"digest": "md5:" + "a" * 32}, "layers[1].digest"),
        ({"digest": "sha256:" + "A" * 64}, "layers[1].digest"),
        ({"digest": 12}, "layers[1].digest"),
        ({"size": None}, "layers[1].size"),
        ({"size": -1}, "layers[1].size"),
        ({"size": 1.5}, "layers[1].size"),
        ({"size": True}, "layers[1].size"),
        ({"size": "12"}, "layers[1].size"),
        ({"size": 2**63}, "layers[1].size"),
        ({"mediaType": None}, "layers[1].mediaType"),
        ({"mediaType": ""}, "layers[1].mediaType"),
        ({"mediaType": "not a media type"}, "layers[1].mediaType"),
        ({"urls": "http://example.com/x"}, "layers[1].urls"),
        ({"urls": [1]}, "layers[1].urls"),
        ({"annotations": {"a": 1}}, "layers[1].annotations"),
        ({"annotations": ["a"]}, "layers[1].annotations"),
        ({"platform": "linux/amd64"}, "layers[1].platform"),
        ({"platform": {"os": 1}}, "layers[1].platform.os"),
        ({"artifactType": "x"}, "layers[1].artifactType"),
        ({"data": 5}, "layers[1].data"),
    ],
)
def test_bad_descriptor(changes: dict[str, Any], fragment: str) -> None:
    error = invalid(_with_layer(**changes), mt.OCI_IMAGE_MANIFEST)
    assert fragment in error.detail["reason"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"config": None}, "config is required"),
        ({"config": "sha256:x"}, "config must be"),
        ({"layers": {}}, "layers must be a list"),
        ({"layers": [None]}, "layers[0]"),
        ({"subject": []}, "subject must be"),
        ({"artifactType": 3}, "artifactType"),
        ({"annotations": "x"}, "annotations"),
    ],
)
def test_bad_image_fields(changes: dict[str, Any], fragment: str) -> None:
    error = invalid(mutate(samples.oci_image(), **changes), mt.OCI_IMAGE_MANIFEST)
    assert fragment in error.detail["reason"]


def test_bad_index_fields() -> None:
    index = samples.oci_index([samples.oci_image()])
    assert (
        "manifests" in invalid(mutate(index, manifests=None), mt.OCI_IMAGE_INDEX).detail["reason"]
    )
    invalid(mutate(index, manifests="x"), mt.OCI_IMAGE_INDEX)
    invalid(mutate(index, manifests=[{"mediaType": mt.OCI_IMAGE_MANIFEST}]), mt.OCI_IMAGE_INDEX)
    assert parse_manifest(mutate(index, manifests=[]), mt.OCI_IMAGE_INDEX).manifests == ()


def test_descriptor_extras_kept() -> None:
    parsed = parse_manifest(
        _with_layer(annotations={"k": "v"}, artifactType="application/x.y", data="e30="),
        mt.OCI_IMAGE_MANIFEST,
    )
    layer = parsed.layers[1]
    assert layer.annotations == {"k": "v"}
    assert layer.artifact_type == "application/x.y"


FOREIGN = "https://mcr.microsoft.com/v2/windows/blobs/sha256:" + "1" * 64


def test_foreign_urls_default_accepted() -> None:
    body = _with_layer(urls=[FOREIGN, "ftp://anything"], mediaType=mt.DOCKER_FOREIGN_LAYER)
    layer = parse_manifest(body, None).layers[1]
    assert layer.urls == (FOREIGN, "ftp://anything")
    assert layer.is_foreign


def test_url_policy() -> None:
    policy = UrlPolicy(allow=[r"^https://mcr\.microsoft\.com/"], deny=[r"/evil/"])
    assert parse_manifest(_with_layer(urls=[FOREIGN]), None, policy).layers[1].is_foreign
    for url in [
        "https://example.com/x",
        "https://mcr.microsoft.com/evil/x",
        "http://mcr.microsoft.com/x",
        "https://mcr.microsoft.com/x#frag",
    ]:
        error = invalid(_with_layer(urls=[url]), None, url_policy=policy)
        assert error.detail["url"] == url
    deny_only = UrlPolicy(deny=[r"internal"])
    assert parse_manifest(_with_layer(urls=["https://cdn.example/x"]), None, deny_only)
    invalid(_with_layer(urls=["https://internal.example/x"]), None, url_policy=deny_only)
    invalid(_with_layer(urls=["ftp://cdn.example/x"]), None, url_policy=deny_only)
    invalid(_with_layer(urls=["https:///nohost"]), None, url_policy=deny_only)
    invalid(_with_layer(urls=["http://[::1"]), None, url_policy=deny_only)
    assert not UrlPolicy().enforced and policy.enforced


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (samples.oci_image(), mt.OCI_IMAGE_MANIFEST),
        (samples.oci_index([samples.oci_image()]), mt.OCI_IMAGE_INDEX),
        (samples.docker_image(), mt.DOCKER_MANIFEST_V2),
        (samples.docker_list([samples.docker_image()]), mt.DOCKER_MANIFEST_LIST),
        (mutate(samples.oci_image(), mediaType=None), mt.OCI_IMAGE_MANIFEST),
        (mutate(samples.oci_index([]), mediaType=None), mt.OCI_IMAGE_INDEX),
        (samples.schema1(signed=True), mt.DOCKER_SCHEMA1_SIGNED),
        (samples.schema1(signed=False), mt.DOCKER_SCHEMA1),
        (b"garbage", "application/octet-stream"),
        (b"[1]", "application/octet-stream"),
        (b"{}", mt.OCI_IMAGE_MANIFEST),
    ],
)
def test_stored_media_type(body: bytes, expected: str) -> None:
    assert stored_media_type(body) == expected


def test_empty_descriptor_constants() -> None:
    assert str(digest_of(mt.OCI_EMPTY_CONTENT)) == mt.OCI_EMPTY_DIGEST


def test_mediatypes_helpers() -> None:
    assert mt.normalize(None) == ""
    assert mt.normalize("Application/JSON; q=1") == "application/json"
    assert mt.MANIFEST_ACCEPT_HEADER.split(", ") == list(mt.MANIFEST_ACCEPT)
    assert not set(mt.MANIFEST_ACCEPT) & mt.SCHEMA1_TYPES
    assert mt.is_valid_media_type("application/vnd.oci.image.layer.v1.tar+zstd")
    assert not mt.is_valid_media_type("application/")
    assert mt.is_acceptable(mt.OCI_IMAGE_INDEX, [])
    assert mt.is_acceptable(mt.OCI_IMAGE_INDEX, ["*/*"])
    assert mt.is_acceptable(mt.OCI_IMAGE_INDEX, ["application/json"])
    assert mt.is_acceptable(
        mt.OCI_IMAGE_INDEX, [mt.DOCKER_MANIFEST_V2, f"{mt.OCI_IMAGE_INDEX};q=0.5"]
    )
    assert mt.is_acceptable(
        mt.DOCKER_MANIFEST_V2, [f"{mt.DOCKER_MANIFEST_V2}, {mt.OCI_IMAGE_INDEX}"]
    )
    assert not mt.is_acceptable(mt.OCI_IMAGE_INDEX, [mt.DOCKER_MANIFEST_V2, mt.DOCKER_SCHEMA1])


# --- property-based ------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
content_types = st.sampled_from(
    [None, "", "application/json", "text/html", *mt.MANIFEST_TYPES, *mt.SCHEMA1_TYPES]
)


@given(st.binary(max_size=300), content_types)
def test_arbitrary_bytes_only_raise_registry_errors(body: bytes, content_type: str | None) -> None:
    try:
        parse_manifest(body, content_type)
    except RegistryError as exc:
        assert exc.code is MANIFEST_INVALID
    stored_media_type(body)


hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
media_types = st.from_regex(r"[a-z][a-z0-9.+-]{0,20}/[a-z][a-z0-9.+-]{0,30}", fullmatch=True)
descriptors = st.fixed_dictionaries(
    {
        "mediaType": media_types,
        "digest": hex64.map(lambda h: "sha256:" + h),
        "size": st.integers(0, 2**63 - 1),
    },
    optional={
        "annotations": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
        "urls": st.lists(st.text(max_size=20), max_size=2),
        "artifactType": media_types,
        "platform": st.fixed_dictionaries(
            {"architecture": st.sampled_from(["amd64", "arm64"]), "os": st.just("linux")}
        ),
    },
)


@st.composite
def manifests(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    media_type = draw(st.sampled_from(sorted(mt.MANIFEST_TYPES)))
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if media_type in mt.INDEX_TYPES:
        document["manifests"] = draw(st.lists(descriptors, max_size=4))
    else:
        document["config"] = draw(descriptors)
        document["layers"] = draw(st.lists(descriptors, max_size=4))
    if media_type in mt.OCI_TYPES:
        if draw(st.booleans()):
            document["subject"] = draw(descriptors)
        if draw(st.booleans()):
            document["artifactType"] = draw(media_types)
        if draw(st.booleans()):
            del document["mediaType"]
    return document, media_type


def _check_descriptor(parsed: Any, raw: dict[str, Any]) -> None:
    assert parsed.media_type == raw["mediaType"]
    assert parsed.digest == Digest.parse(raw["digest"])
    assert parsed.size == raw["size"]
    assert parsed.urls == tuple(raw.get("urls", ()))
    assert parsed.annotations == raw.get("annotations")
    assert parsed.artifact_type == raw.get("artifactType")
    assert parsed.platform == raw.get("platform")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.booleans())
def test_valid_manifests_round_trip(generated: tuple[dict[str, Any], str], declare: bool) -> None:
    document, media_type = generated
    body = json.dumps(document).encode()
    parsed: ParsedManifest = parse_manifest(body, media_type if declare else None)
    assert parsed.media_type == media_type
    assert stored_media_type(body) == media_type
    if parsed.kind == "index":
        for item, raw in zip(parsed.manifests, document["manifests"], strict=True):
            _check_descriptor(item, raw)
    else:
        assert parsed.config is not None
        _check_descriptor(parsed.config, document["config"])
        for item, raw in zip(parsed.layers, document["layers"], strict=True):
            _check_descriptor(item, raw)
    if "subject" in document:
        _check_descriptor(parsed.subject, document["subject"])
    assert parsed.artifact_type == document.get("artifactType")


keys = st.sampled_from(
    [
        "schemaVersion",
        "mediaType",
        "config",
        "layers",
        "manifests",
        "subject",
        "artifactType",
        "annotations",
        "digest",
        "size",
        "urls",
        "platform",
    ]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        keys,
        json_value
        | st.just(2)
        | st.sampled_from(sorted(mt.MANIFEST_TYPES))
        | descriptors
        | st.lists(descriptors, max_size=2),
        max_size=8,
    ),
    content_types,
)
def test_arbitrary_documents_only_raise_registry_errors(
    document: dict[str, Any], content_type: str | None
) -> None:
    body = json.dumps(document).encode()
    try:
        parsed = parse_manifest(body, content_type)
    except RegistryError as exc:
        assert exc.code is MANIFEST_INVALID
        return
    # Whatever is accepted reads back as the type it was accepted as.
    assert stored_media_type(body) == parsed.media_type
