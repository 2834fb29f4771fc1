"""
The grammar of repository names, tags and references (OCI distribution-spec).

Everything that reaches a storage path passes through these checks first, which is what keeps
any request from addressing a path outside the storage root: a valid name has no ``..``, no
empty component and no character outside ``[a-z0-9._/-]``.
"""

from __future__ import annotations

import re

from registry.api.errors import NAME_INVALID, TAG_INVALID, RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# registry:2 limits the whole name to 255 characters; the spec ties it to the hostname too.
NAME_MAX_LENGTH = 255


def is_valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX_LENGTH and NAME_RE.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return ``name`` or raise NAME_INVALID with a detail saying what is wrong."""
    if not name:
        raise RegistryError(NAME_INVALID, {"name": name, "reason": "empty name"})
    if len(name) > NAME_MAX_LENGTH:
        raise RegistryError(
            NAME_INVALID, {"name": name[:300], "reason": f"longer than {NAME_MAX_LENGTH}"}
        )
    if NAME_RE.fullmatch(name) is None:
        raise RegistryError(
            NAME_INVALID,
            {"name": name, "reason": f"does not match {NAME_RE.pattern}"},
        )
    return name


def check_tag(tag: str) -> str:
    if TAG_RE.fullmatch(tag) is None:
        raise RegistryError(TAG_INVALID, {"tag": tag[:300], "reason": "invalid tag"})
    return tag
