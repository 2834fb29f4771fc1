"""
The access controllers: htpasswd (Basic), token (Bearer) and client certificates.

Each answers one question per request, `IAccessController.authorize`: who is calling, and may
they have everything the handler needs?  The answer is a `Principal` or a `RegistryError`:

* 401 UNAUTHORIZED with a ``WWW-Authenticate`` challenge when credentials are missing or wrong
  (the challenge is what makes ``docker login`` and token fetching work);
* 403 DENIED when the caller is known but the policy does not grant the access;
* 429 TOOMANYREQUESTS, with ``Retry-After``, while a source address is cooling down after too
  many failed password logins (its credentials are then not even checked).

Failed logins are logged with the source address and the user name, never the password or
token.  Requests without credentials are not failures: Docker always tries anonymously first,
and skopeo and podman send empty Basic credentials (``Basic Og==``) to mean the same.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from registry.api.errors import DENIED, TOOMANYREQUESTS, UNAUTHORIZED, RegistryError
from registry.auth._request import (
    MalformedCredentials,
    authorization,
    basic_credentials,
    certificate_user,
    is_empty_basic,
    peer_certificate,
    source_address,
)
from registry.auth.htpasswd import Htpasswd
from registry.auth.interfaces import ANONYMOUS, PULL, Access, IAccessController, Principal
from registry.auth.policy import Policy, PolicySource
from registry.auth.ratelimit import FailureLimiter, fingerprint
from registry.auth.scopes import basic_challenge, bearer_challenge
from registry.http.forwarded import client_address

if TYPE_CHECKING:
    # Token auth (joserfc, cryptography's X.509) is imported only where it is configured.
    from registry.auth.token import TokenVerifier

_log = Logger()


def _denied(
    request: IRequest, policy: Policy, principal: Principal, wanted: Sequence[Access]
) -> None:
    # Only the actions refused: pushing where one may pull names the push, not the pull.
    refused = [
        Access(a.type, a.name, missing).scope()
        for a in wanted
        if (
            missing := tuple(
                action
                for action in a.actions
                if not policy.allows(principal, Access(a.type, a.name, (action,)))
            )
        )
    ]
    if refused:
        _log.info("denied {scopes} to {user!r}", scopes=" ".join(refused), user=principal.name)
        # The caller is known, only refused: the access log line names them too.
        request.principal_name = principal.name  # type: ignore[attr-defined]
        raise RegistryError(DENIED, {"denied": refused})


def _anonymous_allowed(policy: Policy | None, wanted: Sequence[Access]) -> bool:
    # `GET /v2/` asks for nothing; answering it with a challenge is what tells a client that
    # this registry has authentication (docker login depends on it).
    return bool(wanted) and policy is not None and all(policy.allows(ANONYMOUS, a) for a in wanted)


def access_detail(wanted: Sequence[Access]) -> list[dict[str, str]] | None:
    """A 401's ``detail`` as registry:2 writes it: an entry per resource and action asked
    for (clients print it after the message: "unauthorized: authentication required")."""
    entries = [
        {"Type": access.type, "Class": "", "Name": access.name, "Action": action}
        for access in wanted
        for action in access.actions
    ]
    return entries or None


class _Failures:
    """Counting, logging and refusing failed logins for one controller."""

    def __init__(self, limiter: FailureLimiter) -> None:
        self.limiter = limiter
        # source -> the fingerprints of the distinct credentials being checked for it now
        # (an entry lives only while a check runs: bounded by the connections).
        self._checking: dict[str, Counter[bytes]] = {}

    def check(self, request: IRequest) -> str:
        source = source_address(request)
        retry_after = self.limiter.retry_after(source)
        if retry_after is not None:
            raise RegistryError(
                TOOMANYREQUESTS,
                "too many failed logins from this address",
                headers={"Retry-After": str(retry_after)},
            )
        return source

    @contextlib.contextmanager
    def checking(self, source: str, attempt: bytes) -> Iterator[None]:
        """
        While ``attempt`` (credentials as sent) is checked for ``source``.  Each check in
        flight may yet fail, so a source gets only as many distinct credentials checked at
        once as it has failures left (the same credentials sent by parallel requests count
        once); more get 429 at once.  Without that, a guesser sending hundreds of guesses
        together had them all checked before the first failure was counted.
        """
        if not self.limiter.enabled:
            yield
            return
        mark = fingerprint(attempt)
        marks = self._checking.setdefault(source, Counter())
        if mark not in marks and len(marks) >= self.limiter.room(source):
            if not marks:
                del self._checking[source]
            raise RegistryError(
                TOOMANYREQUESTS,
                "too many logins being checked at once from this address",
                headers={"Retry-After": "1"},
            )
        marks[mark] += 1
        try:
            yield
        finally:
            marks[mark] -= 1
            if not marks[mark]:
                del marks[mark]
            if not marks:
                self._checking.pop(source, None)

    def failed(
        self,
        request: IRequest,
        source: str,
        user: str | None,
        reason: str,
        attempt: bytes = b"",
    ) -> None:
        _log.warn(
            "failed login for {user!r} from {peer}: {reason}",
            user=user,
            peer=client_address(request),
            reason=reason,
        )
        if self.limiter.record_failure(source, attempt):
            _log.warn(
                "{source} made {n} failed logins within {window}s: refusing logins for {cool}s",
                source=source,
                n=self.limiter.max_failures,
                window=self.limiter.window,
                cool=self.limiter.cooldown,
            )


@implementer(IAccessController)
class HtpasswdAccessController:
    """Basic authentication against an htpasswd file, then the policy."""

    def __init__(
        self,
        htpasswd: Htpasswd,
        policy: PolicySource,
        realm: str,
        limiter: FailureLimiter,
    ) -> None:
        self.htpasswd = htpasswd
        self.policy = policy
        self.realm = realm
        self._challenge = {"WWW-Authenticate": basic_challenge(realm)}
        self._failures = _Failures(limiter)

    def _unauthorized(self, wanted: Sequence[Access]) -> RegistryError:
        return RegistryError(UNAUTHORIZED, access_detail(wanted), headers=self._challenge)

    async def authorize(
        self, request: IRequest, wanted: Sequence[Access], also: Sequence[Access] = ()
    ) -> Principal:
        policy = self.policy.current()
        auth = authorization(request)
        if auth is None or auth[0] != "basic" or is_empty_basic(auth[1]):
            if _anonymous_allowed(policy, wanted):
                return ANONYMOUS
            raise self._unauthorized(wanted)
        source = self._failures.check(request)
        try:
            user, password = basic_credentials(auth[1])
        except MalformedCredentials as e:
            self._failures.failed(request, source, None, str(e))
            raise self._unauthorized(wanted) from None
        attempt = auth[1].encode()
        with self._failures.checking(source, attempt):
            verified = await self.htpasswd.verify(user, password)
        if not verified:
            self._failures.failed(request, source, user, "wrong password or unknown user", attempt)
            raise self._unauthorized(wanted)
        policy = self.policy.current()
        principal = policy.principal(user)
        _denied(request, policy, principal, wanted)
        return principal

    def may_pull(self, principal: Principal, name: str) -> bool:
        return self.policy.current().may_pull(principal, name)

    def pull_check(self, request: IRequest, principal: Principal) -> Callable[[str], bool]:
        # The password was checked by `authorize`; what remains is the policy's answer.
        policy = self.policy.current()
        return lambda name: policy.may_pull(principal, name)


@implementer(IAccessController)
class TokenAccessController:
    """
    Bearer tokens from a token server (Docker's token specification).  A token grants exactly
    what its ``access`` claim lists; with a policy, that is further intersected with what the
    policy grants the token's subject (and tokenless anonymous pulls follow the policy).

    Invalid tokens are logged but not counted as failed logins: a signed token cannot be
    guessed, so counting protects nothing, while one client with expired or garbage tokens
    would get every token user behind the same address refused with 429.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        realm: str,
        policy: PolicySource | None = None,
    ) -> None:
        self.verifier = verifier
        self.realm = realm
        self.service = verifier.service
        self.policy = policy

    def _unauthorized(self, wanted: Sequence[Access], error: str | None) -> RegistryError:
        challenge = bearer_challenge(self.realm, self.service, wanted, error)
        return RegistryError(
            UNAUTHORIZED, access_detail(wanted), headers={"WWW-Authenticate": challenge}
        )

    async def authorize(
        self, request: IRequest, wanted: Sequence[Access], also: Sequence[Access] = ()
    ) -> Principal:
        policy = self.policy.current() if self.policy is not None else None
        auth = authorization(request)
        if auth is None or auth[0] != "bearer" or not auth[1]:
            if _anonymous_allowed(policy, wanted):
                return ANONYMOUS
            raise self._unauthorized([*wanted, *also], None)
        from registry.auth.token import InvalidToken  # loaded already: the verifier needs it

        try:
            claims = self.verifier.verify(auth[1])
        except InvalidToken as e:
            _log.info(
                "refused a bearer token from {peer}: invalid token: {reason}",
                peer=client_address(request),
                reason=str(e),
            )
            raise self._unauthorized([*wanted, *also], "invalid_token") from None
        if not all(claims.grants(a) for a in wanted):
            raise self._unauthorized([*wanted, *also], "insufficient_scope")
        if policy is None:
            return Principal(claims.subject or None)
        principal = policy.principal(claims.subject or None)
        _denied(request, policy, principal, wanted)
        return principal

    def may_pull(self, principal: Principal, name: str) -> bool:
        # Without a policy the token server decided, and a token that lists the catalog
        # (registry:catalog:*) sees all of it, as with registry:2.
        return self.policy is None or self.policy.current().may_pull(principal, name)

    def pull_check(self, request: IRequest, principal: Principal) -> Callable[[str], bool]:
        # As `authorize`: the token's access claim, then the policy if there is one.  The
        # token is verified once here, not once per name.
        policy = self.policy.current() if self.policy is not None else None
        auth = authorization(request)
        if auth is None or auth[0] != "bearer" or not auth[1]:
            if policy is None:
                return lambda name: False
            return lambda name: policy.may_pull(ANONYMOUS, name)
        from registry.auth.token import InvalidToken  # loaded already: the verifier needs it

        try:
            claims = self.verifier.verify(auth[1])
        except InvalidToken:
            return lambda name: False

        def check(name: str) -> bool:
            if not claims.grants(Access("repository", name, (PULL,))):
                return False
            return policy is None or policy.may_pull(principal, name)

        return check


@implementer(IAccessController)
class ClientCertificateAccessController:
    """
    Mutual TLS: a client certificate verified against ``[http] clientcas`` makes its subject CN
    the principal, subject to the policy.  Requests without one go to ``fallback`` (htpasswd or
    token), or, without a fallback, are anonymous (policy permitting) or refused with 403.
    """

    def __init__(self, policy: PolicySource, fallback: IAccessController | None = None) -> None:
        self.policy = policy
        self.fallback = fallback

    async def authorize(
        self, request: IRequest, wanted: Sequence[Access], also: Sequence[Access] = ()
    ) -> Principal:
        cert = peer_certificate(request)
        user = certificate_user(cert) if cert is not None else None
        if user is None:
            if self.fallback is not None:
                return await self.fallback.authorize(request, wanted, also)
            policy = self.policy.current()
            if not wanted or _anonymous_allowed(policy, wanted):
                return ANONYMOUS
            raise RegistryError(DENIED, "a client certificate is required")
        policy = self.policy.current()
        principal = policy.principal(user)
        _denied(request, policy, principal, wanted)
        return principal

    def may_pull(self, principal: Principal, name: str) -> bool:
        # The fallback shares this policy (make_access_controller insists), so one answer fits
        # principals from either side.
        return self.policy.current().may_pull(principal, name)

    def pull_check(self, request: IRequest, principal: Principal) -> Callable[[str], bool]:
        # Whoever answered `authorize` answers this: the fallback when there is no certificate.
        cert = peer_certificate(request)
        if self.fallback is not None and (cert is None or certificate_user(cert) is None):
            return self.fallback.pull_check(request, principal)
        policy = self.policy.current()
        return lambda name: policy.may_pull(principal, name)
