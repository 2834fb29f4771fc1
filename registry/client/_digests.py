"""A digest a caller passed, checked before anything is sent: a malformed one is a
`Rejected` (``DIGEST_INVALID``, no status), like every other client failure a `ClientError`."""

from __future__ import annotations

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.client.errors import Rejected


def as_digest(value: Digest | str) -> Digest:
    """``value`` as a `Digest`; `Rejected` (code ``DIGEST_INVALID``) when it is not one."""
    if isinstance(value, Digest):
        return value
    try:
        return Digest.parse(value)
    except RegistryError as exc:
        raise Rejected(
            None, f"{value[:300]!r} is not a digest: {exc.message}", "DIGEST_INVALID"
        ) from None
