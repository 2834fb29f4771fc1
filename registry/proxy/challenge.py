"""``WWW-Authenticate`` parsing lives in the client library; re-exported for old imports."""

from registry.client._challenge import Challenge, parse_challenges, pick_challenge

__all__ = ["Challenge", "parse_challenges", "pick_challenge"]
