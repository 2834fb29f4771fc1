"""
Parsing and validating pushed manifests: pure functions over bytes.

A push names its type twice: in the Content-Type header and (usually) in the body's
``mediaType``.  They must agree, because the stored bytes are all we keep: on GET the type is
read back from the body (as registry:2 does), so a manifest is only accepted when its body
alone says what it is.  Docker types always carry ``mediaType``; an OCI body without it is
recognised by shape (``manifests`` for an index, ``config`` for an image manifest).

Every failure is a `RegistryError` (MANIFEST_INVALID) whose detail says which field is wrong;
nothing else escapes, whatever the bytes (the tests fuzz this).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from registry.api import mediatypes
from registry.api.digests import Digest
from registry.api.errors import MANIFEST_INVALID, RegistryError
from registry.manifests.model import (
    DEFAULT_URL_POLICY,
    Descriptor,
    Kind,
    ParsedManifest,
    UrlPolicy,
    kind_of,
)

MAX_DESCRIPTOR_SIZE = 2**63 - 1

SCHEMA1_REFUSED = (
    "Docker schema1 manifests are not supported; push a Docker schema2 or OCI manifest "
    "instead (current docker, buildah, podman and skopeo do so by default)"
)


def _invalid(reason: str, **detail: Any) -> NoReturn:
    raise RegistryError(
        MANIFEST_INVALID, {"reason": reason, **detail}, f"manifest invalid: {reason}"
    )


def _schema1() -> NoReturn:
    raise RegistryError(MANIFEST_INVALID, {"reason": SCHEMA1_REFUSED}, SCHEMA1_REFUSED)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def load_json_object(body: bytes) -> dict[str, Any]:
    """
    The body as a JSON object; MANIFEST_INVALID for anything else.  UTF-8 only, and no byte
    order mark: `json.loads` would take bytes in UTF-16 or UTF-32, or behind a BOM, which the
    JSON decoder of docker, containerd and skopeo refuses, so such a manifest, once accepted,
    could never be pulled (registry:2 refuses it too).
    """
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        _invalid("body is not valid JSON", error=str(exc)[:200])
    if not isinstance(document, dict):
        _invalid("body must be a JSON object")
    return document


def _shape(document: Mapping[str, Any]) -> Kind | None:
    has_manifests = "manifests" in document
    has_config = "config" in document
    if has_manifests and not has_config:
        return "index"
    if has_config and not has_manifests:
        return "image"
    return None


def _shape_type(document: Mapping[str, Any]) -> str | None:
    shape = _shape(document)
    if shape is None:
        return None
    return mediatypes.OCI_IMAGE_INDEX if shape == "index" else mediatypes.OCI_IMAGE_MANIFEST


def _resolve_media_type(declared: str, body_type: str | None, document: dict[str, Any]) -> str:
    if declared in mediatypes.MANIFEST_TYPES:
        if body_type is not None and body_type != declared:
            _invalid(
                "Content-Type does not match the manifest's mediaType",
                content_type=declared,
                media_type=body_type,
            )
        if body_type is None:
            if declared not in mediatypes.OCI_TYPES:
                _invalid(f"a {declared} manifest must have a mediaType field")
            if _shape(document) != kind_of(declared):
                _invalid(
                    "without a mediaType field an image manifest needs config and no "
                    "manifests, an index manifests and no config",
                    content_type=declared,
                )
        return declared
    if declared not in mediatypes.GENERIC_TYPES:
        _invalid(
            "unsupported manifest media type",
            content_type=declared,
            supported=sorted(mediatypes.MANIFEST_TYPES),
        )
    if body_type is not None:
        if body_type not in mediatypes.MANIFEST_TYPES:
            _invalid(
                "unsupported manifest media type",
                media_type=body_type,
                supported=sorted(mediatypes.MANIFEST_TYPES),
            )
        return body_type
    detected = _shape_type(document)
    if detected is None:
        _invalid(
            "cannot tell the manifest type: no mediaType, and not exactly one of config, manifests"
        )
    return detected


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _invalid(f"{where} must be a string")
    return value


def _media_type(value: Any, where: str) -> str:
    text = _string(value, where)
    if not mediatypes.is_valid_media_type(text):
        _invalid(f"{where} is not a valid media type", value=text[:300])
    return text


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        _invalid(f"{where} must be an object of strings")
    return dict(value)


def _descriptor(value: Any, where: str, url_policy: UrlPolicy) -> Descriptor:
    if not isinstance(value, dict):
        _invalid(f"{where} must be a descriptor object")
    media_type = _media_type(value.get("mediaType"), f"{where}.mediaType")
    digest_text = _string(value.get("digest"), f"{where}.digest")
    try:
        digest = Digest.parse(digest_text)
    except RegistryError as exc:
        _invalid(f"{where}.digest: {exc.message}", digest=digest_text[:300])
    size = value.get("size")
    if type(size) is not int or not 0 <= size <= MAX_DESCRIPTOR_SIZE:
        _invalid(f"{where}.size must be a non-negative integer")
    urls_value = value.get("urls")
    urls: tuple[str, ...] = ()
    if urls_value is not None:
        if not isinstance(urls_value, list) or not all(isinstance(u, str) for u in urls_value):
            _invalid(f"{where}.urls must be a list of strings")
        urls = tuple(urls_value)
        for url in urls:
            if not url_policy.permits(url):
                _invalid(f"{where}.urls: URL not allowed by this registry", url=url[:300])
    artifact_type = value.get("artifactType")
    if artifact_type == "":
        artifact_type = None  # the distribution spec reads an empty artifactType as none
    elif artifact_type is not None:
        artifact_type = _media_type(artifact_type, f"{where}.artifactType")
    platform = value.get("platform")
    if platform is not None:
        if not isinstance(platform, dict):
            _invalid(f"{where}.platform must be an object")
        for key in ("architecture", "os"):
            if key in platform and not isinstance(platform[key], str):
                _invalid(f"{where}.platform.{key} must be a string")
    if "data" in value and not isinstance(value["data"], str):
        _invalid(f"{where}.data must be a base64 string")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        urls=urls,
        annotations=_annotations(value.get("annotations"), f"{where}.annotations"),
        artifact_type=artifact_type,
        platform=platform,
    )


def _descriptors(
    document: Mapping[str, Any], key: str, url_policy: UrlPolicy, required: bool
) -> tuple[Descriptor, ...]:
    value = document.get(key)
    if value is None:
        if required:
            _invalid(f"{key} is required")
        return ()
    if not isinstance(value, list):
        _invalid(f"{key} must be a list of descriptors")
    return tuple(_descriptor(item, f"{key}[{i}]", url_policy) for i, item in enumerate(value))


def parse_manifest(
    body: bytes, content_type: str | None, url_policy: UrlPolicy = DEFAULT_URL_POLICY
) -> ParsedManifest:
    """
    Validate a pushed manifest.  ``content_type`` is the request's Content-Type header (None
    when absent); a generic one (``application/json``, ...) lets the body decide.
    """
    declared = mediatypes.normalize(content_type)
    if declared in mediatypes.SCHEMA1_TYPES:
        _schema1()
    document = load_json_object(body)
    schema_version = document.get("schemaVersion")
    body_type = document.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        _invalid("mediaType must be a string")
    if (type(schema_version) is int and schema_version == 1) or (
        body_type in mediatypes.SCHEMA1_TYPES
    ):
        _schema1()
    if type(schema_version) is not int or schema_version != 2:
        _invalid("schemaVersion must be 2", schemaVersion=repr(schema_version)[:50])
    media_type = _resolve_media_type(declared, body_type, document)
    is_oci = media_type in mediatypes.OCI_TYPES
    subject = None
    artifact_type = None
    annotations = None
    if is_oci:
        if document.get("subject") is not None:
            subject = _descriptor(document["subject"], "subject", url_policy)
        # Empty reads as absent (the distribution spec; registry:2 accepts it): the referrers
        # API then reports the config's mediaType.
        if document.get("artifactType") not in (None, ""):
            artifact_type = _media_type(document["artifactType"], "artifactType")
        annotations = _annotations(document.get("annotations"), "annotations")
    if kind_of(media_type) == "index":
        return ParsedManifest(
            media_type=media_type,
            kind="index",
            manifests=_descriptors(document, "manifests", url_policy, required=True),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if document.get("config") is None:
        _invalid("config is required")
    return ParsedManifest(
        media_type=media_type,
        kind="image",
        config=_descriptor(document["config"], "config", url_policy),
        # image-spec makes layers optional in practice (artifacts); Docker schema2 requires it.
        layers=_descriptors(document, "layers", url_policy, required=not is_oci),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def stored_media_type(body: bytes) -> str:
    """
    The media type to serve a stored manifest with, read from its bytes.  Never raises: data
    written by registry:2 may hold schema1 manifests, which are still served as they are.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return "application/octet-stream"
    if not isinstance(document, dict):
        return "application/octet-stream"
    body_type = document.get("mediaType")
    if isinstance(body_type, str) and body_type:
        return body_type
    if document.get("schemaVersion") == 1:
        if "signatures" in document:
            return mediatypes.DOCKER_SCHEMA1_SIGNED
        return mediatypes.DOCKER_SCHEMA1
    return _shape_type(document) or mediatypes.OCI_IMAGE_MANIFEST
