"""The Bearer token cache lives in the client library; re-exported for old imports."""

from registry.client._tokens import MAX_TOKENS, Token, TokenCache, TokenKey, clamp_expires_in

__all__ = ["MAX_TOKENS", "Token", "TokenCache", "TokenKey", "clamp_expires_in"]
