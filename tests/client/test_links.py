"""``Link`` headers: which URL a ``rel="next"`` names, resolved against the page asked."""

from __future__ import annotations

import pytest

from registry.client._client import _next_url

BASE = "https://registry.example/v2/a/referrers/sha256:aa"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (None, None),
        ("", None),
        ('</v2/a/referrers/sha256:aa?last=x>; rel="next"', f"{BASE}?last=x"),
        ("</v2/a/referrers/sha256:aa?last=x>; rel=next", f"{BASE}?last=x"),
        (
            '<https://other.example/v2/a?last=x>; rel="next"',
            "https://other.example/v2/a?last=x",
        ),
        (
            '</v2/a?last=p>; rel="prev", </v2/a?last=n>; rel="next"',
            "https://registry.example/v2/a?last=n",
        ),
        ('</v2/a?last=n>; title="t"; rel="last next"', "https://registry.example/v2/a?last=n"),
        ('</v2/a?last=p>; rel="prev"', None),
        ('</v2/a?last=p>; rel="nextish"', None),
    ],
)
def test_next_url(link: str | None, expected: str | None) -> None:
    assert _next_url(BASE, link) == expected
