"""
The contract between the HTTP layer and access control.

Every handler states the access it needs as `Access` values (Docker's token-scope vocabulary:
``repository:<name>:pull,push``, ``registry:catalog:*``) and asks the configured
`IAccessController`.  Handlers never look at credentials; controllers never look at storage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import attrs
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

PULL = "pull"
PUSH = "push"
DELETE = "delete"


@attrs.frozen
class Access:
    """One resource and the actions wanted on it."""

    type: str  # "repository" or "registry"
    name: str  # a repository name, or "catalog"
    actions: tuple[str, ...]

    def scope(self) -> str:
        """As written in a token scope / WWW-Authenticate challenge."""
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def repository(name: str, *actions: str) -> Access:
    return Access("repository", name, tuple(actions))


CATALOG = Access("registry", "catalog", ("*",))


@attrs.frozen
class Principal:
    """Who made the request: ``name`` None is anonymous."""

    name: str | None
    groups: tuple[str, ...] = ()


ANONYMOUS = Principal(None)


class IAccessController(Interface):
    """Decides, for each request, whether the caller gets the access it needs."""

    def authorize(
        request: IRequest, wanted: Sequence[Access], also: Sequence[Access] = ()
    ) -> Awaitable[Principal]:
        """
        Return the caller when every access in ``wanted`` is granted.  Otherwise raise
        `registry.api.errors.RegistryError`: UNAUTHORIZED (401, with the ``WWW-Authenticate``
        challenge in its ``headers``) when credentials are missing or wrong, DENIED (403) when
        the caller is known but lacks the access.

        ``also`` is access the request can use but does not need (a mount's source): it is
        named in a bearer challenge beside ``wanted``, so a client gets one token for both as
        with registry:2, and never checked here.
        """

    def may_pull(principal: Principal, name: str) -> bool:
        """
        Whether ``principal`` may pull ``name``, to filter a listing.  Only meaningful once
        `authorize` granted `CATALOG` on the same request: without a policy a token controller
        answers True for every name, because the token's catalog scope already said "all".
        """

    def pull_check(request: IRequest, principal: Principal) -> Callable[[str], bool]:
        """
        For a request `authorize` answered with ``principal``: whether it may pull a name,
        as `authorize` would answer ``repository(name, PULL)`` with the same credentials (so
        `GET /v2/NAME/tags/list` would be answered), without checking them again per name nor
        logging a refusal.  Unlike `may_pull` (what the catalog lists), a token grants pull
        only through its ``access`` claim, whether or not it lists the catalog.
        """


@implementer(IAccessController)
class AllowAll:
    """No authentication configured: everyone may do everything (registry:2's default)."""

    async def authorize(
        self, request: IRequest, wanted: Sequence[Access], also: Sequence[Access] = ()
    ) -> Principal:
        return ANONYMOUS

    def may_pull(self, principal: Principal, name: str) -> bool:
        return True

    def pull_check(self, request: IRequest, principal: Principal) -> Callable[[str], bool]:
        return lambda name: True
