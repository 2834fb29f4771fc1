"""
Content digests and the incremental hashers behind them.

Uploads hash inline while bytes stream to storage.  The hashers' state serialises in about a
hundred bytes, so a chunked upload can continue in another process (or on another instance
sharing S3) without re-reading what is already stored.  sha256 uses libcrypto where it can be
loaded (`registry.native.openssl_sha256`: same state format, and it releases the GIL so uploads
can hash on another core); sha512, and sha256 elsewhere, use ``rehashes``, imported at the
first such hasher (its extension is about 0.6 MiB resident, in every process that loads it).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Protocol

import attrs

from registry.api.errors import DIGEST_INVALID, RegistryError
from registry.native import openssl_sha256

_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[a-f0-9]+")
SUPPORTED_ALGORITHMS = tuple(_HEX_LENGTHS)


@attrs.frozen(order=True)
class Digest:
    """A validated ``algorithm:hex`` digest of a supported algorithm."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate; anything unsupported or malformed is DIGEST_INVALID."""
        match = _DIGEST_RE.fullmatch(text)
        if match is None:
            raise RegistryError(DIGEST_INVALID, {"digest": text[:300]}, "invalid digest format")
        algorithm, encoded = match.groups()
        expected = _HEX_LENGTHS.get(algorithm)
        if expected is None:
            raise RegistryError(
                DIGEST_INVALID,
                {"digest": text[:300], "supported": list(SUPPORTED_ALGORITHMS)},
                "unsupported digest algorithm",
            )
        if len(encoded) != expected or _HEX_RE.fullmatch(encoded) is None:
            raise RegistryError(
                DIGEST_INVALID, {"digest": text[:300]}, f"invalid {algorithm} digest"
            )
        return cls(algorithm, encoded)

    @classmethod
    def is_digest(cls, text: str) -> bool:
        """True when ``text`` looks like a digest (used to tell tags from digests)."""
        return ":" in text


class Hasher(Protocol):
    def update(self, data: bytes) -> None: ...
    def finalize(self) -> str: ...
    def serialize(self) -> bytes: ...


def _rehashes(algorithm: str) -> type[Hasher]:
    """The ``rehashes`` hasher class of ``algorithm`` (KeyError for another algorithm)."""
    import rehashes

    classes: dict[str, type[Hasher]] = {"sha256": rehashes.PySha256, "sha512": rehashes.PySha512}
    return classes[algorithm]


def releases_gil(algorithm: str) -> bool:
    """True when this algorithm's `Hasher.update` lets other threads run meanwhile."""
    return algorithm == "sha256" and openssl_sha256.load() is not None


def new_hasher(algorithm: str = "sha256") -> Hasher:
    if algorithm == "sha256" and (lib := openssl_sha256.load()) is not None:
        return openssl_sha256.OpenSSLSha256(lib)
    hasher: Hasher = _rehashes(algorithm)()
    return hasher


def restore_hasher(algorithm: str, state: bytes) -> Hasher:
    """Rebuild a hasher from `Hasher.serialize` output; ValueError when the state is unusable."""
    if algorithm == "sha256" and (lib := openssl_sha256.load()) is not None:
        return openssl_sha256.OpenSSLSha256.deserialize(lib, state)
    try:
        hasher_class: Any = _rehashes(algorithm)
        hasher: Hasher = hasher_class.deserialize(state)
    except Exception as exc:  # the extension raises its own error types
        raise ValueError(f"unusable {algorithm} hash state: {exc}") from exc
    return hasher


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    """One-shot digests (manifests, small blobs) need no saved state: hashlib does them."""
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


class DigestingHasher:
    """A hasher that remembers its algorithm, so callers can ask for the `Digest` at the end."""

    def __init__(self, algorithm: str = "sha256", state: bytes | None = None) -> None:
        self.algorithm = algorithm
        self._hasher = (
            restore_hasher(algorithm, state) if state is not None else new_hasher(algorithm)
        )

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def serialize(self) -> bytes:
        return self._hasher.serialize()

    def digest(self) -> Digest:
        """The digest of everything so far; the hasher stays usable (finalize works on a copy)."""
        copy = restore_hasher(self.algorithm, self._hasher.serialize())
        return Digest(self.algorithm, copy.finalize())
