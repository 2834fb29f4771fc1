"""
What keeps the UI from being turned against its users: headers on every page, and the checks a
state-changing request (a delete) must pass.

* A Content Security Policy that allows only the UI's own script and stylesheet (no inline
  code, no other origin), no framing, forms posting only here.
* A delete is a POST that must come from this origin (``Origin``, or ``Referer`` when a browser
  sends no ``Origin``) and carry a CSRF token: an HMAC of the user's name under a random key
  kept in storage, so a page of another site can neither read it nor forge it, while every
  instance sharing the storage accepts it (behind a load balancer, across restarts).
* The "Deleted X." note after a delete is asked for by the redirect with a proof made with
  the same key (`deleted_proof`): a link anyone else made cannot put words on the page or claim
  a delete that did not happen, and nothing is remembered per delete.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from urllib.parse import urlsplit

import attrs
from twisted.web.iweb import IRequest

from registry.api.errors import DENIED, RegistryError
from registry.auth.interfaces import Principal
from registry.http.forwarded import origin
from registry.http.headers import request_header
from registry.storage import layout
from registry.storage.driver import IStorageDriver, PathNotFoundError

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def set_page_headers(request: IRequest, cache: str = "no-store") -> None:
    for name, value in PAGE_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader("Cache-Control", cache)


def request_origin(request: IRequest) -> str:
    """
    ``scheme://host[:port]`` the browser used, as it writes it in ``Origin``: the request's
    own, or what a trusted reverse proxy reports (``[http] trusted_proxies``).
    """
    seen = origin(request)
    return f"{seen.scheme}://{seen.host or ''}".lower()


def check_same_origin(request: IRequest) -> None:
    """Refuse (403) a request that a browser did not send from one of our own pages."""
    expected = request_origin(request)
    sent = request_header(request, "origin")
    if sent is not None and sent != "null":
        if sent.lower() != expected:
            raise RegistryError(DENIED, {"reason": "cross-origin request"})
        return
    referer = request_header(request, "referer")
    if referer:
        parts = urlsplit(referer)
        if f"{parts.scheme}://{parts.netloc}".lower() == expected:
            return
    raise RegistryError(DENIED, {"reason": "the request's origin could not be verified"})


# How long the redirect after a delete may show its note: long enough for the browser to
# follow it, short enough that a link copied from the address bar soon says nothing.
DELETED_TTL = 60
# Instances sharing the storage may disagree about the time by this much.
_CLOCK_SKEW = 5


def deleted_proof(key: bytes, user: str | None, name: str, reference: str, when: int) -> str:
    """
    ``WHEN.HMAC``: that ``user`` deleted ``reference`` of ``name`` at ``when`` (seconds since
    the epoch).  JSON keeps the fields apart whatever characters a user name holds.
    """
    message = json.dumps(["ui-deleted", user or "", name, reference, when]).encode("utf-8")
    return f"{when}.{hmac.new(key, message, hashlib.sha256).hexdigest()}"


# The key CSRF tokens are made with, kept in storage so that every instance sharing it (and
# the next start) accepts the tokens of the others.
KEY_PATH = f"{layout.OWN}/ui/csrf-key"
KEY_SIZE = 32


@attrs.define
class CsrfTokens:
    driver: IStorageDriver
    _key: bytes | None = None

    async def _load(self) -> bytes:
        if self._key is not None:
            return self._key
        try:
            key = await self.driver.get_content(KEY_PATH)
        except PathNotFoundError:
            key = b""
        if len(key) < KEY_SIZE:
            await self.driver.put_content(KEY_PATH, os.urandom(KEY_SIZE))
            # Read back: when two instances start at once, both end up with the last one.
            key = await self.driver.get_content(KEY_PATH)
        self._key = key
        return key

    async def token(self, principal: Principal) -> str:
        subject = (principal.name or "").encode("utf-8")
        key = await self._load()
        return hmac.new(key, b"ui-delete\0" + subject, hashlib.sha256).hexdigest()

    async def check(self, principal: Principal, token: str | None) -> None:
        if not token or not hmac.compare_digest(token, await self.token(principal)):
            raise RegistryError(DENIED, {"reason": "missing or invalid CSRF token"})

    async def deleted_proof(
        self, principal: Principal, name: str, reference: str, now: float
    ) -> str:
        """The proof a delete's redirect carries (`deleted_proof`)."""
        return deleted_proof(await self._load(), principal.name, name, reference, int(now))

    async def proves_deleted(
        self, principal: Principal, name: str, reference: str, proof: str | None, now: float
    ) -> bool:
        """Whether ``proof`` is one `deleted_proof` gave ``principal`` for this delete, in the
        last `DELETED_TTL` seconds."""
        when, _, _ = (proof or "").partition(".")
        if not when.isascii() or not when.isdigit() or len(when) > 12:
            return False
        if not -_CLOCK_SKEW <= now - int(when) <= DELETED_TTL:
            return False
        expected = deleted_proof(await self._load(), principal.name, name, reference, int(when))
        return hmac.compare_digest(proof or "", expected)
