"""
Where everything lives in storage: registry:2's path scheme, computed in one place.

Keeping registry:2's layout means an existing registry:2 data directory (or S3 bucket) is served
as it is, and what txregistry writes is served back by registry:2::

    docker/registry/v2/
      blobs/<alg>/<hex[0:2]>/<hex>/data                     the content, stored once
      repositories/<name>/
        _layers/<alg>/<hex>/link                             "this repo may serve that blob"
        _manifests/revisions/<alg>/<hex>/link                "this repo has that manifest"
        _manifests/tags/<tag>/current/link                   the digest a tag points at
        _manifests/tags/<tag>/index/<alg>/<hex>/link         every digest the tag ever had
        _uploads/<uuid>/data                                 an upload in progress
        _uploads/<uuid>/startedat                            RFC 3339 start time
        _uploads/<uuid>/hashstates/<alg>/<offset>            registry:2's (only offsets read)
        _uploads/<uuid>/txhashstates/<alg>/<offset>          our resumable hash state
      txregistry/                                            our own indexes (registry:2 ignores it)

A link file holds the bare digest string (``sha256:<hex>``, no newline).

Callers pass only validated names, digests, tags and upload ids (see `registry.api.names`),
which is what keeps every path inside the root.
"""

from __future__ import annotations

from registry.api.digests import Digest

ROOT = "docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"
OWN = f"{ROOT}/txregistry"


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layers_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_layers"


def layer_dir(name: str, digest: Digest) -> str:
    """The folder of one layer link: deleting it unlinks the blob from the repository."""
    return f"{layers_dir(name)}/{digest.algorithm}/{digest.hex}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{layer_dir(name, digest)}/link"


def manifests_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests"


def revisions_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions"


def revision_dir(name: str, digest: Digest) -> str:
    """The folder of one revision link: deleting it removes the manifest from the repository."""
    return f"{revisions_dir(name)}/{digest.algorithm}/{digest.hex}"


def revision_link(name: str, digest: Digest) -> str:
    return f"{revision_dir(name, digest)}/link"


def tags_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags/{tag}"


def tag_current_dir(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_current_dir(name, tag)}/link"


def tag_index_dir(name: str, tag: str, digest: Digest) -> str:
    """The folder recording that ``tag`` once pointed at ``digest``."""
    return f"{tag_dir(name, tag)}/index/{digest.algorithm}/{digest.hex}"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_index_dir(name, tag, digest)}/link"


def uploads_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads/{upload_id}"


# An upload's data file, in its folder.
UPLOAD_DATA = "data"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/{UPLOAD_DATA}"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_registry2_hashstates(name: str, upload_id: str, algorithm: str) -> str:
    """registry:2's hash states: only their names (the offsets) are read."""
    return f"{upload_dir(name, upload_id)}/hashstates/{algorithm}"


def upload_hashstates(name: str, upload_id: str, algorithm: str) -> str:
    return f"{upload_dir(name, upload_id)}/txhashstates/{algorithm}"


def upload_hashstate(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    return f"{upload_hashstates(name, upload_id, algorithm)}/{offset}"


def referrers_root(name: str) -> str:
    """Our referrers index of repository ``name``: a folder per subject, ``<alg>/<hex>``."""
    return f"{OWN}/referrers/{name}"


def referrers_dir(name: str, subject: Digest) -> str:
    """Our referrers index: one link per manifest whose ``subject`` is ``subject``."""
    return f"{referrers_root(name)}/{subject.algorithm}/{subject.hex}"


def referrer_entry(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}-{referrer.hex}"
