"""
An Apache htpasswd file as a user database.

Supported hashes: bcrypt (``$2y$``, ``$2b$``, ``$2a$``: what ``htpasswd -B`` writes and the only
kind registry:2 accepts) and ``{SHA}`` (``htpasswd -s``; weak, accepted for migrations).  Any
other kind (``$apr1$``, crypt, plain text) is refused with a warning naming the user, because a
silently ignored line looks like a forgotten password to whoever is debugging a login.

The file is re-read when it changes (checked at most once a second), so adding or revoking a
user needs no restart.  bcrypt is deliberately slow (tens of milliseconds), so every check runs
in a thread pool, never on the reactor thread.  Docker sends Basic credentials with every
request of a pull, so a verified password is remembered for a short while (keyed by an HMAC
with a per-process secret, never the password itself) to avoid one bcrypt per layer; so is a
wrong one (the same credentials sent again are refused without a bcrypt), and parallel
requests with the same credentials share one check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import Counter, OrderedDict
from typing import Literal

import attrs
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from registry.auth._watch import FileWatcher
from registry.client._inflight import Inflight
from registry.config import file_problem

_log = Logger()

# bcrypt only looks at the first 72 bytes; classic implementations (and the hashes they wrote)
# truncate silently, the Python binding raises instead.  Truncating keeps old hashes working.
_BCRYPT_MAX = 72
_DEFAULT_BCRYPT_COST = 10
# How many failed credentials are remembered (the oldest forgotten first): memory stays
# bounded whatever a client sends.
_FAILED_REMEMBERED = 4096


@attrs.frozen
class _Entry:
    kind: Literal["bcrypt", "sha"]
    hashed: bytes


def _hash_kind(hashed: str) -> str:
    """A name for a hash we refuse, for the warning."""
    for prefix, name in (
        ("$apr1$", "Apache MD5 ($apr1$)"),
        ("$1$", "MD5-crypt ($1$)"),
        ("$5$", "SHA-256-crypt ($5$)"),
        ("$6$", "SHA-512-crypt ($6$)"),
        ("{SSHA}", "salted SHA-1 ({SSHA})"),
        ("$", "unknown crypt scheme"),
    ):
        if hashed.startswith(prefix):
            return name
    return "crypt(3) or plain text"


def parse_htpasswd(text: str, source: str = "htpasswd") -> dict[str, _Entry]:
    """Parse htpasswd lines; unusable lines are logged and skipped, never fatal."""
    entries: dict[str, _Entry] = {}
    # Lines end at "\n" (and "\r\n"), as for Apache and registry:2: ``splitlines`` would also
    # split a name at U+2028 or a C1 control, and that user could not log in.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            _log.warn(
                "{source}:{lineno}: not a user:hash line, ignored", source=source, lineno=lineno
            )
            continue
        if user in entries:
            # Apache uses the first matching line; so do we, but say so.
            _log.warn(
                "{source}:{lineno}: user {user!r} appears again, later line ignored",
                source=source,
                lineno=lineno,
                user=user,
            )
            continue
        if hashed.startswith(("$2y$", "$2b$", "$2a$")):
            entries[user] = _Entry("bcrypt", hashed.encode("ascii", "replace"))
        elif hashed.startswith("{SHA}"):
            entries[user] = _Entry("sha", hashed[5:].encode("ascii", "replace"))
            # Accepted for migrations from Apache or nginx files; registry:2 refuses these
            # users, so a file brought over from it can let in accounts it had shut out.
            _log.warn(
                "{source}:{lineno}: user {user!r} has an unsalted SHA-1 ({{SHA}}) hash: it can"
                " log in (registry:2 refuses such users), but a copy of the file gives the"
                " password away quickly; re-hash it with bcrypt (htpasswd -B)",
                source=source,
                lineno=lineno,
                user=user,
            )
        else:
            _log.warn(
                "{source}:{lineno}: user {user!r} has an unsupported {kind} hash and cannot log "
                "in; use bcrypt (htpasswd -B)",
                source=source,
                lineno=lineno,
                user=user,
                kind=_hash_kind(hashed),
            )
    return entries


def _bcrypt_cost(hashed: bytes) -> int:
    try:
        return int(hashed[4:6])
    except ValueError:
        return _DEFAULT_BCRYPT_COST


# How a stand-in check for an unknown user is done: the kind of hash and its bcrypt cost.
_Profile = tuple[Literal["bcrypt", "sha"], int]


def _profile(entry: _Entry) -> _Profile:
    return (entry.kind, _bcrypt_cost(entry.hashed) if entry.kind == "bcrypt" else 0)


def _check(entry: _Entry | None, password: bytes, unknown: _Profile) -> bool:
    """Runs in a worker thread: the slow part."""
    import bcrypt  # loaded by Htpasswd() already, in the reactor thread

    if entry is None:
        # Spend the time a real check of that profile spends, so that response timing does
        # not tell which user names exist (registry:2 does a dummy bcrypt, of one cost).
        if unknown[0] == "sha":
            hmac.compare_digest(base64.b64encode(hashlib.sha1(password).digest()), b"")
        else:
            bcrypt.hashpw(password[:_BCRYPT_MAX], bcrypt.gensalt(unknown[1]))
        return False
    if entry.kind == "bcrypt":
        try:
            return bcrypt.checkpw(password[:_BCRYPT_MAX], entry.hashed)
        except ValueError:  # a malformed hash in the file
            return False
    digest = base64.b64encode(hashlib.sha1(password).digest())
    return hmac.compare_digest(digest, entry.hashed)


class Htpasswd:
    """A live view of an htpasswd file; `verify` is the only question it answers."""

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        clock: IReactorTime,
        cache_seconds: float = 60.0,
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._threadpool = threadpool
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._watcher = FileWatcher(path, clock)
        self._entries: dict[str, _Entry] = {}
        # The file's users' profiles and how many have each: an unknown user name is checked
        # as one of them, picked by a keyed hash of the name (`_unknown_profile`).
        self._profiles: list[tuple[_Profile, int]] = []
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[str, tuple[bytes, float]] = {}
        # Credentials that failed (the same HMAC) -> until when they are answered False
        # without a bcrypt: a client repeating a wrong password (a stale one, or someone
        # keeping the cores busy with one header) costs a lookup, not tens of milliseconds.
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        # Credentials being checked now (one entry per check in flight: bounded by the
        # connections, whatever the cap says).
        self._checks: Inflight[bytes, bool] = Inflight(max_keys=1 << 20)
        # bcrypt (0.7 MiB resident) only where an htpasswd file is configured, loaded here
        # rather than by the first check's worker thread.
        import bcrypt  # noqa: F401

        self._reload()

    def users(self) -> frozenset[str]:
        self._reload()
        return frozenset(self._entries)

    def _reload(self) -> None:
        if not self._watcher.changed():
            return
        self._cache.clear()
        self._failed.clear()  # a password changed in the file may be right now
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            # Fail closed, whatever stops the read (deleted, now a directory, its folder
            # replaced by a file, no permission): nobody logs in until the file is readable,
            # rather than the last user list (with a revoked user in it) staying in force.
            _log.error(
                "htpasswd file unusable, no user can log in: {problem}",
                problem=file_problem(exc, self.path),
            )
            self._entries = {}
            return
        self._entries = parse_htpasswd(text, self.path)
        self._profiles = sorted(Counter(_profile(e) for e in self._entries.values()).items())
        if self._entries:
            _log.info("loaded {n} users from {path}", n=len(self._entries), path=self.path)
        else:  # a registry nobody can log in to must not look healthy in its log
            _log.warn("loaded 0 users from {path}: no user can log in", path=self.path)

    def _unknown_profile(self, user: str) -> _Profile:
        """How to check ``user`` if it is unknown: the profile of one of the file's users,
        in proportion to how many have it, always the same for the same name (a name asked
        again must not time differently) and not predictable without this process's key.
        So an unknown name times as some user of the file would, whatever the mix of hash
        kinds and bcrypt costs in it, rather than as its most common cost."""
        total = sum(count for _kind, count in self._profiles)
        if not total:
            return ("bcrypt", _DEFAULT_BCRYPT_COST)
        digest = hmac.new(self._cache_key, b"unknown\0" + user.encode(), "sha256").digest()
        pick = int.from_bytes(digest[:8], "big") % total
        for kind, count in self._profiles:
            if pick < count:
                return kind
            pick -= count
        return self._profiles[-1][0]

    def _cache_digest(self, user: str, password: bytes) -> bytes:
        return hmac.new(self._cache_key, user.encode() + b"\0" + password, "sha256").digest()

    async def verify(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s; never raises for wrong input."""
        self._reload()
        pw = password.encode("utf-8")
        now = self._clock.seconds()
        key = self._cache_digest(user, pw)
        cached = self._cache.get(user)
        if cached is not None:
            digest, expires = cached
            if now < expires and hmac.compare_digest(digest, key):
                return True
        failed_until = self._failed.get(key)
        if failed_until is not None:
            if now < failed_until:
                return False  # known wrong: no bcrypt for it again
            del self._failed[key]
        # Parallel requests with the same credentials share one check; one that is cancelled
        # (its client left) drops out, and the check goes on for the others.
        return await self._checks.run(key, lambda: self._check_once(key, user, pw, now))

    async def _check_once(self, key: bytes, user: str, pw: bytes, now: float) -> bool:
        """The bcrypt for ``key`` in the thread pool, its answer remembered."""
        entry = self._entries.get(user)
        ok: bool = await deferToThreadPool(
            self._reactor, self._threadpool, _check, entry, pw, self._unknown_profile(user)
        )
        if self._cache_seconds > 0 and self._entries.get(user) is entry:
            if ok:
                self._cache[user] = (key, now + self._cache_seconds)
            else:
                self._failed[key] = now + self._cache_seconds
                while len(self._failed) > _FAILED_REMEMBERED:
                    self._failed.popitem(last=False)
        return ok


def hash_password(password: str, rounds: int = 10) -> str:
    """An htpasswd bcrypt hash (for tests and tooling; ``htpasswd -nB`` does the same)."""
    import bcrypt

    return bcrypt.hashpw(password.encode()[:_BCRYPT_MAX], bcrypt.gensalt(rounds)).decode()


__all__ = ["Htpasswd", "hash_password", "parse_htpasswd"]
