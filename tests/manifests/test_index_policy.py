"""`IndexPolicy`: which children of a pushed index must exist (registry:2 v3's semantics)."""

from __future__ import annotations

from typing import Any

import pytest

from registry.api import mediatypes as mt
from registry.api.digests import digest_of
from registry.manifests import IndexPolicy
from registry.manifests.model import Descriptor


def child(platform: dict[str, Any] | None) -> Descriptor:
    return Descriptor(mt.OCI_IMAGE_MANIFEST, digest_of(b"x"), 1, platform=platform)


AMD64 = child({"os": "linux", "architecture": "amd64"})
ARM_V7 = child({"os": "linux", "architecture": "arm", "variant": "v7"})
WINDOWS = child({"os": "windows", "architecture": "amd64"})
NO_PLATFORM = child(None)
ALL = (AMD64, ARM_V7, WINDOWS, NO_PLATFORM)


@pytest.mark.parametrize(
    ("words", "required"),
    [
        ((), ALL),
        (("all",), ALL),
        (("none",), ()),
        (("linux/amd64",), (AMD64,)),
        # Only os and architecture are compared, as registry:2 does: any arm variant.
        (("linux/arm", "windows/amd64"), (ARM_V7, WINDOWS)),
    ],
)
def test_required_children(words: tuple[str, ...], required: tuple[Descriptor, ...]) -> None:
    policy = IndexPolicy.from_words(words)
    assert tuple(c for c in ALL if policy.must_exist(c)) == required


@pytest.mark.parametrize("word", ["linux", "linux/arm/v7", "/amd64", "linux/"])
def test_malformed_platforms_are_refused(word: str) -> None:
    with pytest.raises(ValueError, match="os/architecture"):
        IndexPolicy.from_words([word])
