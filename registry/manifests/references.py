"""
What a stored manifest keeps alive: its blobs (config and layers, foreign ones included), its
index children and its subject.  Garbage collection and the pull-through cache's eviction ask
the same question, so they ask it here: a blob one of them keeps, the other keeps too.
"""

from __future__ import annotations

import re

import attrs

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.manifests.model import DEFAULT_URL_POLICY
from registry.manifests.parse import load_json_object, parse_manifest

_DIGEST_TEXT = re.compile(rb"\b(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})\b")


@attrs.frozen
class ManifestRefs:
    """What one manifest keeps alive."""

    blobs: frozenset[str]
    children: frozenset[str]
    subject: str | None
    parsed: bool


def manifest_refs(body: bytes) -> ManifestRefs:
    """
    The blobs, index children and subject of a stored manifest.  A foreign layer counts like
    any other: when its blob is stored (pushed, or fetched through a mirror), it is kept.  A
    manifest that does not parse gives every digest in its bytes as a blob (garbage collection
    also treats those that are revisions of the repository as children) and its subject if
    one can be read: unsure, keep.
    """
    try:
        manifest = parse_manifest(body, None, DEFAULT_URL_POLICY)
    except RegistryError:
        found = frozenset(match.decode() for match in _DIGEST_TEXT.findall(body))
        return ManifestRefs(found, frozenset(), _lenient_subject(body), False)
    subject = str(manifest.subject.digest) if manifest.subject is not None else None
    return ManifestRefs(
        frozenset(str(d.digest) for d in manifest.blob_references),
        frozenset(str(d.digest) for d in manifest.manifests),
        subject,
        True,
    )


def _lenient_subject(body: bytes) -> str | None:
    try:
        subject = load_json_object(body).get("subject")
        if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
            return str(Digest.parse(subject["digest"]))
    except RegistryError:
        pass
    return None
