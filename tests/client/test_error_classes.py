"""
Every failure of the client is the `ClientError` subclass docs/client.md's error table names,
however the body is read and whatever the caller passed.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from registry.client import BadResponse, ClientError, Unavailable
from tests.client.conftest import ClientFactory
from tests.fakes.upstream import FakeUpstream


@pytest_twisted.ensureDeferred
async def test_read_of_a_blob_with_the_wrong_bytes_is_a_bad_response(
    fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """A body that does not hash to its digest is a BadResponse from `read()` as from
    `write_to()`: never Unavailable, which would tell the caller to try again."""
    image = fake.content.add_image("library/alpine", "latest", [4096])
    fake.switches.corrupt_blobs = True
    client = make_client(fake.url)
    blob = await client.blob("library/alpine", image.layers[0].digest)
    with pytest.raises(BadResponse) as info:
        await blob.read()
    assert not isinstance(info.value, Unavailable)
    assert f"not {image.layers[0].digest}" in str(info.value)
    assert isinstance(info.value, ClientError)
