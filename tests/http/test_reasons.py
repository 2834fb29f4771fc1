"""Every status the registry sends has its standard reason phrase (RFC 9110, RFC 6585)."""

from __future__ import annotations

from registry.api import errors
from registry.http import reasons

# Statuses sent other than through a registered error code: successes, the redirect to
# storage, the early 100, and the explicit ``status=`` overrides (413, 502, 503).
OTHER_STATUSES = {100, 200, 201, 202, 204, 206, 307, 413, 502, 503}


def test_every_status_sent_has_a_phrase() -> None:
    registered = {
        code.http_status for code in vars(errors).values() if isinstance(code, errors.ErrorCode)
    }
    assert {400, 401, 403, 404, 405, 416, 429, 500, 503} <= registered
    for status in registered | OTHER_STATUSES:
        assert reasons.phrase(status), status


def test_phrases_as_the_rfcs_name_them() -> None:
    assert reasons.phrase(429) == b"Too Many Requests"
    assert reasons.phrase(413) == b"Content Too Large"
    assert reasons.phrase(416) == b"Range Not Satisfiable"
    assert reasons.phrase(599) is None
