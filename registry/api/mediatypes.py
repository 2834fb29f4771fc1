"""
Media types of manifests, configs and layers (OCI image-spec v1.1, Docker image manifest v2).

The registry stores four manifest types.  Docker schema1 is refused on push (it is signed over
a JSON canonicalisation nobody should still depend on, and Docker itself dropped it), so it is
named here only so the parser can recognise it and say so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# OCI image-spec
OCI_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
# The empty descriptor's content, digest and size (image-spec "Guidance for an Empty Descriptor").
OCI_EMPTY_CONTENT = b"{}"
OCI_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# Docker image manifest v2
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONTAINER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Docker schema1: recognised only to be refused.
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

IMAGE_MANIFEST_TYPES = frozenset({OCI_IMAGE_MANIFEST, DOCKER_MANIFEST_V2})
INDEX_TYPES = frozenset({OCI_IMAGE_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES
OCI_TYPES = frozenset({OCI_IMAGE_MANIFEST, OCI_IMAGE_INDEX})

# Content-Types that say nothing about the manifest: the parser looks at the body instead.
GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})

# What we ask an upstream for: every type we can store, most specific first.  Schema1 is left
# out on purpose: asking for it would only fetch something we then refuse to store.
MANIFEST_ACCEPT: tuple[str, ...] = (
    OCI_IMAGE_INDEX,
    OCI_IMAGE_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
)
MANIFEST_ACCEPT_HEADER = ", ".join(MANIFEST_ACCEPT)

# RFC 6838 section 4.2 restricted names, type "/" subtype, no parameters.
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
MEDIA_TYPE_RE = re.compile(rf"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}")


def is_valid_media_type(value: str) -> bool:
    return MEDIA_TYPE_RE.fullmatch(value) is not None


def normalize(content_type: str | None) -> str:
    """
    The bare, lower-cased media type of a Content-Type header value ("" when absent), so
    ``application/vnd.oci.image.manifest.v1+json; charset=utf-8`` compares equal to the constant.
    """
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def accepted_types(accept_headers: Iterable[str]) -> set[str]:
    """
    The media types named in one or more ``Accept`` header values (parameters and q-values
    dropped; clients such as docker send one header per type).
    """
    types: set[str] = set()
    for header in accept_headers:
        for item in header.split(","):
            media_type = normalize(item)
            if media_type:
                types.add(media_type)
    return types


def is_acceptable(media_type: str, accept_headers: Iterable[str]) -> bool:
    """
    Whether a manifest of ``media_type`` may be served to a client sending ``accept_headers``.

    No Accept header, ``*/*`` or ``application/*`` accept anything; so does a client that lists
    no manifest type at all (old clients send only ``application/json``), as registry:2 does.
    """
    types = accepted_types(accept_headers)
    if not types or media_type in types or types & {"*/*", "application/*"}:
        return True
    return not (types & (MANIFEST_TYPES | SCHEMA1_TYPES))
