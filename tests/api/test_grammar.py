"""Names, digests, routes, ranges: the parsers every request goes through."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.api.names import NAME_RE, is_valid_name
from registry.http.ranges import RangeNotSatisfiable, parse_content_range, parse_range
from registry.http.routes import Kind, parse_route

HEX = "a" * 64


@pytest.mark.parametrize(
    ("rest", "kind", "name", "reference"),
    [
        ("", Kind.BASE, "", ""),
        ("_catalog", Kind.CATALOG, "", ""),
        ("a/blobs/uploads/", Kind.UPLOADS, "a", ""),
        ("a/blobs/uploads", Kind.UPLOADS, "a", ""),
        ("a/blobs/uploads/blobs/uploads/", Kind.UPLOADS, "a/blobs/uploads", ""),
        ("a/blobs/uploads/abc-123", Kind.UPLOAD, "a", "abc-123"),
        ("x/y/z/tags/list", Kind.TAGS, "x/y/z", ""),
        ("m/manifests/latest", Kind.MANIFEST, "m", "latest"),
        ("manifests/manifests/manifests", Kind.MANIFEST, "manifests", "manifests"),
        (f"b/blobs/sha256:{HEX}", Kind.BLOB, "b", f"sha256:{HEX}"),
        (f"r/referrers/sha256:{HEX}", Kind.REFERRERS, "r", f"sha256:{HEX}"),
    ],
)
def test_routes(rest: str, kind: Kind, name: str, reference: str) -> None:
    route = parse_route(rest)
    assert (route.kind, route.name, route.reference) == (kind, name, reference)


@pytest.mark.parametrize(
    ("rest", "code"),
    [
        ("x/y", "NOT_FOUND"),
        ("A/manifests/x", "NAME_INVALID"),
        ("a/manifests/-x", "TAG_INVALID"),
        ("a/blobs/sha1:abc", "DIGEST_INVALID"),
        ("a/blobs/uploads/../x", "NOT_FOUND"),
        ("../../etc/manifests/x", "NAME_INVALID"),
        ("a/blobs/uploads/-bad", "BLOB_UPLOAD_UNKNOWN"),
    ],
)
def test_bad_routes(rest: str, code: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_route(rest)
    assert caught.value.code.value == code


@given(st.text(max_size=300))
def test_routes_never_fail_unexpectedly(rest: str) -> None:
    """Whatever the path, the parser answers a route or a RegistryError (never a crash)."""
    try:
        route = parse_route(rest)
    except RegistryError:
        return
    if route.name:
        assert is_valid_name(route.name)
        assert ".." not in route.name.split("/")


@settings(max_examples=40)  # generating from the name grammar is slow
@given(st.from_regex(NAME_RE, fullmatch=True))
def test_valid_names_have_no_path_escape(name: str) -> None:
    assert all(part not in ("", ".", "..") for part in name.split("/"))


def test_digest_parse() -> None:
    assert str(Digest.parse(f"sha256:{HEX}")) == f"sha256:{HEX}"
    assert Digest.parse("sha512:" + "b" * 128).algorithm == "sha512"
    for bad in ("sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 32, "sha256", ":", ""):
        with pytest.raises(RegistryError):
            Digest.parse(bad)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=50-1000", 100, (50, 99)),
        ("items=0-9", 100, None),
        ("bytes=0-9,20-29", 100, None),
        ("BYTES=0-9", 100, (0, 9)),
        ("bytes=0000000000000000000000000005-", 100, (5, 99)),
        ("bytes=0-" + "9" * 5000, 100, (0, 99)),
        ("bytes=-" + "9" * 5000, 100, (0, 99)),
        ("bytes=\u0661-\u0662", 100, None),  # only ASCII digits are digits
    ],
)
def test_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=100-",
        "bytes=200-300",
        "bytes=-0",
        "bytes=" + "9" * 5000 + "-",
        "bytes=1" + "0" * 30 + "-",
        "bytes=9-0",  # reversed: rejected as registry:2 does
        "bytes=50-49",
        "bytes=" + "9" * 5000 + "-5",
    ],
)
def test_range_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**12))
def test_range_is_total(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        first, last = result
        assert 0 <= first <= last < size


_DIGITS = "0123456789"
# Short positions, and long ones (past int()'s 4300-digit limit) with digits around a run.
positions = st.one_of(
    st.text(_DIGITS, min_size=1, max_size=40),
    st.builds(
        lambda head, run, tail: head + run[0] * run[1] + tail,
        st.text(_DIGITS, max_size=3),
        st.tuples(st.sampled_from(_DIGITS), st.integers(min_value=4290, max_value=6000)),
        st.text(_DIGITS, max_size=3),
    ),
)


def _value(digits: str) -> int:
    """The oracle: the exact number, whatever its length."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return int(digits)
    finally:
        sys.set_int_max_str_digits(limit)


@given(positions, st.one_of(st.just(""), positions), st.integers(min_value=0, max_value=2**63))
def test_range_of_any_length_is_answered(first: str, last: str, size: int) -> None:
    """
    Positions of any length: a result within the size, or unsatisfiable exactly when the
    first position is at or past the end (RFC 9110 14.1.1) or the last is before the first
    (an invalid range, rejected); never another exception.
    """
    try:
        result = parse_range(f"bytes={first}-{last}", size)
    except RangeNotSatisfiable:
        assert _value(first) >= size or (last and _value(last) < _value(first))
        return
    assert result is not None
    end = min(_value(last), size - 1) if last else size - 1
    assert result == (_value(first), end)


def test_content_range() -> None:
    assert parse_content_range("0-9") == (0, 9)
    assert parse_content_range("bytes 10-19/*") == (10, 19)
    for bad in ("9-0", "x", "-1-5", ""):
        with pytest.raises(ValueError):
            parse_content_range(bad)
