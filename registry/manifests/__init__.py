"""Parse and validate Docker schema2, manifest lists, OCI image manifests and OCI indexes."""

from registry.manifests.model import (
    DEFAULT_INDEX_POLICY,
    DEFAULT_URL_POLICY,
    Descriptor,
    IndexPolicy,
    Kind,
    ParsedManifest,
    UrlPolicy,
)
from registry.manifests.parse import (
    SCHEMA1_REFUSED,
    load_json_object,
    parse_manifest,
    stored_media_type,
)

__all__ = [
    "DEFAULT_INDEX_POLICY",
    "DEFAULT_URL_POLICY",
    "SCHEMA1_REFUSED",
    "Descriptor",
    "IndexPolicy",
    "Kind",
    "ParsedManifest",
    "UrlPolicy",
    "load_json_object",
    "parse_manifest",
    "stored_media_type",
]
