"""
From configuration values to one `IAccessController`.

Kept here rather than in ``registry/tap.py`` so the rules about which settings go together (and
the refusal of combinations that would silently weaken access control) live beside the code
they configure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.python.threadpool import ThreadPool

from registry.auth.interfaces import AllowAll, IAccessController
from registry.config import file_problem

if TYPE_CHECKING:
    from registry.auth.policy import PolicySource


@attrs.frozen
class AuthSettings:
    """The ``[auth]``, ``[auth.htpasswd]`` and ``[auth.token]`` keys (see docs/auth.md)."""

    policy: str | None = None
    anonymous_pull: tuple[str, ...] = ()
    client_certificate_users: bool = False
    max_failures: int = 10
    failure_window: float = 60.0
    cooldown: float = 60.0
    htpasswd_path: str | None = None
    htpasswd_realm: str = "Registry Realm"
    htpasswd_cache_seconds: float = 60.0
    token_realm: str | None = None
    token_service: str | None = None
    token_issuer: str | None = None
    token_rootcertbundle: str | None = None
    token_jwks: str | None = None
    # Whether a client certificate can reach the registry at all: some listener is ssl: and
    # [http] clientauth asks for certificates.
    client_certificates_possible: bool = True

    @property
    def enabled(self) -> bool:
        return bool(
            self.htpasswd_path or self.token_realm or self.client_certificate_users or self.policy
        )


@contextlib.contextmanager
def _reading(key: str, path: str) -> Iterator[None]:
    """Start-up reads a file a key names: a failure is a `ValueError` naming the key (the
    one line start-up prints), whatever library read it."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise ValueError(f"{key}: {file_problem(exc, path)}") from None


def _challenge_values(settings: AuthSettings) -> None:
    """What goes into a challenge (``WWW-Authenticate``) must be sendable there: a control
    character (a line break from a continued line in the file, say) would fail every
    request that needs a challenge."""
    from registry.auth.scopes import quote

    for key, value in (
        ("[auth.token] realm", settings.token_realm),
        ("[auth.token] service", settings.token_service),
        ("[auth.htpasswd] realm", settings.htpasswd_realm if settings.htpasswd_path else None),
    ):
        if value is None:
            continue
        try:
            quote(value)
        except ValueError:
            raise ValueError(f"{key}: contains a control character: {value!r}") from None


def make_access_controller(
    settings: AuthSettings,
    reactor: IReactorFromThreads,
    clock: IReactorTime,
    threadpool: ThreadPool,
) -> IAccessController:
    """
    The controller for ``settings``; `AllowAll` when no authentication is configured.
    ``threadpool`` runs bcrypt; the caller owns it (start it with the service, stop it after).
    Raises ValueError for incomplete or conflicting settings.
    """
    token_keys = [
        key
        for key, value in (
            ("service", settings.token_service),
            ("issuer", settings.token_issuer),
            ("rootcertbundle", settings.token_rootcertbundle),
            ("jwks", settings.token_jwks),
        )
        if value
    ]
    if settings.htpasswd_path and (settings.token_realm or token_keys):
        raise ValueError("configure either [auth.htpasswd] or [auth.token], not both")
    if token_keys and not settings.token_realm:
        # Token settings without the realm would otherwise leave authentication off: an open
        # registry where its operator meant a closed one.
        raise ValueError(f"[auth.token] needs realm (set: {', '.join(token_keys)})")
    _challenge_values(settings)
    if not settings.enabled:
        if settings.anonymous_pull:
            raise ValueError("[auth] anonymous_pull needs an authentication method")
        return AllowAll()
    # Imported here: a registry without authentication loads none of it.
    from registry.auth.controllers import (
        ClientCertificateAccessController,
        HtpasswdAccessController,
        TokenAccessController,
    )
    from registry.auth.htpasswd import Htpasswd
    from registry.auth.policy import Policy, PolicyFile
    from registry.auth.ratelimit import FailureLimiter

    policy: PolicySource | None
    if settings.policy:
        with _reading("[auth] policy", settings.policy):
            policy = PolicyFile(settings.policy, clock, settings.anonymous_pull)
    elif settings.token_realm and not settings.anonymous_pull:
        policy = None  # the token server decides everything, as with registry:2
    else:
        policy = Policy.allow_authenticated(settings.anonymous_pull)
    inner: IAccessController | None = None
    if settings.htpasswd_path:
        assert policy is not None
        # Readable now, or start-up says so: a missing file would deny every login until it
        # appears (as it does when deleted while serving), which is a mistake to say at once.
        with (
            _reading("[auth.htpasswd] path", settings.htpasswd_path),
            open(settings.htpasswd_path, "rb") as readable,
        ):
            readable.read(1)  # start-up, before the reactor runs: blocking is fine
        htpasswd = Htpasswd(
            settings.htpasswd_path, reactor, threadpool, clock, settings.htpasswd_cache_seconds
        )
        # Only passwords are counted: a signed token cannot be guessed (see controllers).
        limiter = FailureLimiter(
            clock, settings.max_failures, settings.failure_window, settings.cooldown
        )
        inner = HtpasswdAccessController(htpasswd, policy, settings.htpasswd_realm, limiter)
    elif settings.token_realm:
        missing = [
            key
            for key, value in (
                ("service", settings.token_service),
                ("issuer", settings.token_issuer),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"[auth.token] needs {', '.join(missing)}")
        if not (settings.token_rootcertbundle or settings.token_jwks):
            raise ValueError("[auth.token] needs rootcertbundle or jwks")
        assert settings.token_service and settings.token_issuer
        # Imported here: joserfc and cryptography's X.509 cost memory only where tokens are on.
        from registry.auth.token import TokenVerifier, load_certificates, load_key_set

        roots = []
        if settings.token_rootcertbundle:
            with _reading("[auth.token] rootcertbundle", settings.token_rootcertbundle):
                roots = load_certificates(settings.token_rootcertbundle)
        keyset = None
        if settings.token_jwks:
            with _reading("[auth.token] jwks", settings.token_jwks):
                keyset = load_key_set(settings.token_jwks)
        verifier = TokenVerifier(
            settings.token_issuer, settings.token_service, clock, roots, keyset
        )
        inner = TokenAccessController(verifier, settings.token_realm, policy)
    if settings.client_certificate_users:
        if inner is None and not settings.client_certificates_possible:
            # No password, no token, and no certificate can arrive: nobody could log in, and
            # an operator who meant mTLS would be running a registry that only serves
            # anonymous pulls without knowing it (docs/auth.md: refused at start-up).
            raise ValueError(
                "[auth] client_certificate_users = true, but no listener asks for client "
                "certificates (needs an ssl: listener and [http] clientauth = optional or "
                "required) and neither [auth.htpasswd] nor [auth.token] is set: nobody could "
                "log in"
            )
        if policy is None:
            raise ValueError("client_certificate_users with token auth needs an [auth] policy")
        return ClientCertificateAccessController(policy, inner)
    if inner is None:
        raise ValueError("[auth] policy is set but no htpasswd, token or client certificates")
    return inner


def anonymous_pull_from(value: str | Sequence[str]) -> tuple[str, ...]:
    """Config helper: ``"a/*, b/**"`` or a list, as a tuple of patterns."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(p.strip() for p in items if p.strip())
