"""Tag listing and its pagination."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from registry.api.digests import digest_of
from registry.api.errors import NAME_UNKNOWN, PAGINATION_NUMBER_INVALID, RegistryError
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.driver import IStorageDriver
from registry.storage.pagination import paginate, parse_count
from registry.storage.tags import ITagStore, TagStore
from tests.storage.manifest_fixtures import blobs, driver

__all__ = ["blobs", "driver"]

NAME = "library/alpine"
TAGS = ["3.18", "3.19", "3.20", "edge", "latest", "Latest", "v1", "v10", "v2"]


@pytest.fixture
def tags(driver: IStorageDriver) -> TagStore:
    return TagStore(driver)


async def make_tags(tags: TagStore, names: list[str]) -> None:
    for tag in names:
        await tags.set(NAME, tag, digest_of(tag.encode()))


def test_provides_interface(tags: TagStore) -> None:
    assert verifyObject(ITagStore, tags)


@pytest_twisted.ensureDeferred
async def test_sorted_and_paginated(tags: TagStore) -> None:
    await make_tags(tags, list(reversed(TAGS)))
    expected = sorted(TAGS)
    assert await tags.list_tags(NAME) == (expected, False)
    assert await tags.list_tags(NAME, n=3) == (expected[:3], True)
    assert await tags.list_tags(NAME, "3", expected[2]) == (expected[3:6], True)
    assert await tags.list_tags(NAME, 3, expected[5]) == (expected[6:], False)
    assert await tags.list_tags(NAME, 100) == (expected, False)
    assert await tags.list_tags(NAME, len(expected)) == (expected, False)
    assert await tags.list_tags(NAME, len(expected) - 1) == (expected[:-1], True)
    # ``last`` need not be a tag; it is a position.
    assert await tags.list_tags(NAME, None, "v") == (["v1", "v10", "v2"], False)
    assert await tags.list_tags(NAME, None, "zzz") == ([], False)
    assert await tags.list_tags(NAME, None, "") == (expected, False)
    assert await tags.list_tags(NAME, "", None) == (expected, False)


@pytest_twisted.ensureDeferred
async def test_n_zero_is_empty(tags: TagStore) -> None:
    await make_tags(tags, TAGS)
    assert await tags.list_tags(NAME, 0) == ([], False)
    assert await tags.list_tags(NAME, "0") == ([], False)


@pytest.mark.parametrize("n", [-1, "-1", "abc", "1.5", "1e3", " 2", True, "\u0661", "9" * 40])
@pytest_twisted.ensureDeferred
async def test_bad_n(tags: TagStore, n: object) -> None:
    await make_tags(tags, TAGS)
    with pytest.raises(RegistryError) as info:
        await tags.list_tags(NAME, n)  # type: ignore[arg-type]
    assert info.value.code is PAGINATION_NUMBER_INVALID
    assert info.value.status == 400


@pytest_twisted.ensureDeferred
async def test_unknown_repository(tags: TagStore) -> None:
    with pytest.raises(RegistryError) as info:
        await tags.list_tags("nobody/here")
    assert info.value.code is NAME_UNKNOWN


@pytest_twisted.ensureDeferred
async def test_repository_without_tags(tags: TagStore, blobs: BlobStore) -> None:
    digest = await blobs.put_small(b"layer")
    await blobs.link(NAME, digest)
    assert await tags.list_tags(NAME) == ([], False)
    await make_tags(tags, ["only"])
    assert await tags.remove(NAME, "only")
    assert await tags.list_tags(NAME) == ([], False)


@pytest_twisted.ensureDeferred
async def test_resolve_set_remove(tags: TagStore, driver: IStorageDriver) -> None:
    one, two = digest_of(b"1"), digest_of(b"2")
    assert await tags.resolve(NAME, "x") is None
    await tags.set(NAME, "x", one)
    await tags.set(NAME, "x", two)
    assert await tags.resolve(NAME, "x") == two
    assert await tags.tags_for(NAME, two) == ["x"]
    assert await tags.tags_for(NAME, one) == []
    await driver.put_content(layout.tag_current_link(NAME, "x"), b"sha256:zz")
    assert await tags.resolve(NAME, "x") is None
    assert await tags.remove(NAME, "x")
    assert not await tags.remove(NAME, "x")


def test_max_page_clamps() -> None:
    assert parse_count("500", maximum=100) == 100
    assert parse_count(50, maximum=100) == 50
    assert parse_count(None, maximum=100) is None


@given(
    st.lists(st.text("ab01.-_", min_size=1, max_size=4), unique=True),
    st.integers(1, 5),
)
def test_pages_cover_everything_once(items: list[str], n: int) -> None:
    items = sorted(items)
    seen: list[str] = []
    last = None
    for _ in range(len(items) + 2):
        page, more = paginate(items, n, last)
        assert len(page) <= n
        seen += page
        if not more:
            break
        last = page[-1]
    assert seen == items
