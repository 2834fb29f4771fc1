"""
What a parsed manifest is: descriptors, the manifest itself and the foreign-URL policy.

The parsed form is what the stores need to check references and maintain indexes; the bytes
the client pushed stay the source of truth and are served back unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from registry.api import mediatypes
from registry.api.digests import Digest

Kind = Literal["image", "index"]


@attrs.frozen
class Descriptor:
    """An OCI content descriptor (config, layer, index child or subject)."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] | None = None
    artifact_type: str | None = None
    platform: Mapping[str, Any] | None = None

    @property
    def is_foreign(self) -> bool:
        """Fetched by clients from its ``urls``, so its blob need not be in the registry."""
        return bool(self.urls)


@attrs.frozen
class ParsedManifest:
    """
    A validated schema2/OCI manifest.  ``kind`` is ``image`` for image manifests (config +
    layers) and ``index`` for indexes and manifest lists (``manifests``).
    """

    media_type: str
    kind: Kind
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = None

    @property
    def referrer_artifact_type(self) -> str | None:
        """
        The ``artifactType`` the referrers API reports for this manifest (distribution-spec
        v1.1): the ``artifactType`` field, else, for an image manifest, the config's mediaType.
        """
        if self.artifact_type:
            return self.artifact_type
        if self.kind == "image" and self.config is not None:
            return self.config.media_type
        return None

    @property
    def blob_references(self) -> tuple[Descriptor, ...]:
        """The config and layers: the blobs a repository must hold for the manifest to pull."""
        if self.config is None:
            return self.layers
        return (self.config, *self.layers)


def _compile(patterns: Sequence[str | re.Pattern[str]]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern) for pattern in patterns)


@attrs.frozen
class UrlPolicy:
    """
    Which foreign-layer ``urls`` a manifest may carry.

    With both lists empty (the default) any URL is accepted and not checked, as registry:2 does
    for foreign and non-distributable layers.  Once either list is set, every URL must be
    ``http``/``https`` without a fragment, match one ``allow`` pattern (when ``allow`` is set)
    and match no ``deny`` pattern.  Patterns are searched, not anchored (Go's MatchString).
    """

    allow: tuple[re.Pattern[str], ...] = attrs.field(default=(), converter=_compile)
    deny: tuple[re.Pattern[str], ...] = attrs.field(default=(), converter=_compile)

    @property
    def enforced(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, url: str) -> bool:
        if not self.enforced:
            return True
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            return False
        if self.allow and not any(pattern.search(url) for pattern in self.allow):
            return False
        return not any(pattern.search(url) for pattern in self.deny)


DEFAULT_URL_POLICY = UrlPolicy()


def _platforms(values: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    return frozenset(values)


@attrs.frozen
class IndexPolicy:
    """
    Which children of a pushed index must already be manifests of the repository: registry:2
    v3's ``validation.manifests.indexes.platforms``.

    ``all`` (the default): every child.  ``none``: no child, so a sparse index (a mirror of
    some platforms only, an index pushed before its children) is accepted.  A set of
    ``(os, architecture)`` pairs: the children whose platform is one of them; children of
    other platforms, or with no platform at all, need not exist.  Like registry:2, only the
    OS and architecture are compared (not the variant).
    """

    required: Literal["all", "none", "platforms"] = "all"
    platforms: frozenset[tuple[str, str]] = attrs.field(default=frozenset(), converter=_platforms)

    @classmethod
    def from_words(cls, words: Iterable[str]) -> IndexPolicy:
        """From the configuration's words: ``all``, ``none``, or ``os/arch`` platforms."""
        words = tuple(words)
        if words in ((), ("all",)):
            return cls("all")
        if words == ("none",):
            return cls("none")
        pairs = []
        for word in words:
            os_name, _, architecture = word.partition("/")
            if not os_name or not architecture or "/" in architecture:
                raise ValueError(f"not all, none or an os/architecture platform: {word!r}")
            pairs.append((os_name, architecture))
        return cls("platforms", pairs)

    def must_exist(self, child: Descriptor) -> bool:
        if self.required != "platforms":
            return self.required == "all"
        platform = child.platform or {}
        return (platform.get("os"), platform.get("architecture")) in self.platforms


DEFAULT_INDEX_POLICY = IndexPolicy()


def kind_of(media_type: str) -> Kind:
    return "index" if media_type in mediatypes.INDEX_TYPES else "image"
