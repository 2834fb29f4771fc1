"""The htpasswd user database: hash kinds, reloads, timing-safe failures, the thread pool."""

from __future__ import annotations

import base64
import hashlib
import os
import threading

import bcrypt
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from registry.auth import htpasswd as htpasswd_module
from registry.auth.htpasswd import Htpasswd, hash_password, parse_htpasswd
from tests.auth.conftest import LogCapture, reactor


def counted_checks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The real checks, each recorded (its arguments) in the list returned."""
    calls: list[object] = []
    real = htpasswd_module._check

    def counting(*args: object) -> bool:
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(htpasswd_module, "_check", counting)
    return calls


def _bcrypt(pw: str, prefix: str = "$2b$") -> str:
    return prefix + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()[4:]


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def test_parse_kinds_and_refusals(logs: LogCapture) -> None:
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    entries = parse_htpasswd(
        "\n".join(
            [
                "# comment",
                "",
                f"alice:{_bcrypt('a', '$2y$')}",
                f"bob:{sha}",
                "carol:$apr1$abc$defghijklmnopqrstuvwx.",
                "dave:plaintext",
                "not a line",
                f"alice:{_bcrypt('other')}",
            ]
        )
    )
    assert set(entries) == {"alice", "bob"}
    text = logs.text()
    assert "'carol'" in text and "Apache MD5 ($apr1$)" in text
    assert "'dave'" in text and "crypt(3) or plain text" in text
    assert ":7: not a user:hash line" in text
    assert "'alice' appears again" in text
    assert (
        "htpasswd:4: user 'bob' has an unsalted SHA-1 ({SHA}) hash: it can log in (registry:2"
        " refuses such users), but a copy of the file gives the password away quickly; re-hash"
        " it with bcrypt (htpasswd -B)"
    ) in text
    assert "plaintext" not in text  # never log what might be a password


@pytest_twisted.ensureDeferred
async def test_a_file_without_users_is_a_warning(
    tmp_path: os.PathLike[str], threadpool, logs: LogCapture
) -> None:
    """A registry nobody can log in to must not look healthy in its log."""
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, "# no one yet\n")
    db = Htpasswd(path, reactor(), threadpool, Clock(), cache_seconds=0)
    assert await db.verify("alice", "pw") is False
    said = [(e["log_level"].name, formatEvent(e)) for e in logs.events if "users" in formatEvent(e)]
    assert said == [("warn", f"loaded 0 users from {path}: no user can log in")]


@pytest.mark.parametrize("prefix", ["$2y$", "$2b$", "$2a$"])
@pytest_twisted.ensureDeferred
async def test_bcrypt_variants(tmp_path: os.PathLike[str], threadpool, prefix: str) -> None:
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, f"alice:{_bcrypt('s3cret', prefix)}\n")
    db = Htpasswd(path, reactor(), threadpool, Clock(), cache_seconds=0)
    assert await db.verify("alice", "s3cret") is True
    assert await db.verify("alice", "s3cret ") is False
    assert await db.verify("alice", "") is False
    assert await db.verify("nobody", "s3cret") is False


@pytest_twisted.ensureDeferred
async def test_sha_and_long_password(tmp_path: os.PathLike[str], threadpool) -> None:
    path = os.path.join(tmp_path, "htpasswd")
    long = "x" * 100
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    _write(path, f"bob:{sha}\nlong:{hash_password(long, rounds=4)}\n")
    db = Htpasswd(path, reactor(), threadpool, Clock(), cache_seconds=0)
    assert await db.verify("bob", "pw") is True
    assert await db.verify("bob", "pW") is False
    # bcrypt reads 72 bytes; a longer password must not raise.
    assert await db.verify("long", long) is True
    assert await db.verify("long", "y" * 100) is False


@pytest_twisted.ensureDeferred
async def test_verification_runs_off_the_reactor_thread(
    tmp_path: os.PathLike[str], threadpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = htpasswd_module._check

    def spy(*args: object) -> bool:
        seen.append(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(htpasswd_module, "_check", spy)
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, f"alice:{_bcrypt('a')}\n")
    db = Htpasswd(path, reactor(), threadpool, Clock(), cache_seconds=0)
    assert await db.verify("alice", "a")
    assert await db.verify("ghost", "a") is False  # unknown users cost a bcrypt too
    assert len(seen) == 2
    assert all(name != threading.main_thread().name for name in seen)


@pytest_twisted.ensureDeferred
async def test_reload_on_change_at_most_once_a_second(
    tmp_path: os.PathLike[str], threadpool
) -> None:
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, f"alice:{_bcrypt('one')}\n")
    clock = Clock()
    db = Htpasswd(path, reactor(), threadpool, clock, cache_seconds=0)
    assert await db.verify("alice", "one")
    _write(path, f"alice:{_bcrypt('two')}\nbob:{_bcrypt('b')}\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    # Within the same second the old file still answers ...
    clock.advance(0.5)
    assert await db.verify("alice", "one")
    # ... after it, the new one does.
    clock.advance(0.6)
    assert await db.verify("alice", "two")
    assert not await db.verify("alice", "one")
    assert await db.verify("bob", "b")
    os.unlink(path)
    clock.advance(1.1)
    assert db.users() == frozenset()  # a missing file lets nobody in


@pytest_twisted.ensureDeferred
async def test_success_cache_expires_and_is_cleared_on_reload(
    tmp_path: os.PathLike[str], threadpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counted_checks(monkeypatch)
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, f"alice:{_bcrypt('a')}\n")
    clock = Clock()
    db = Htpasswd(path, reactor(), threadpool, clock, cache_seconds=60)
    assert await db.verify("alice", "a")
    assert await db.verify("alice", "a")
    assert len(calls) == 1
    assert not await db.verify("alice", "b")  # a wrong password is never served from cache
    assert len(calls) == 2
    clock.advance(61)
    assert await db.verify("alice", "a")
    assert len(calls) == 3
    _write(path, f"alice:{_bcrypt('new')}\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    clock.advance(2)
    assert not await db.verify("alice", "a")


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_refused_again_without_a_bcrypt(
    tmp_path: os.PathLike[str], threadpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the remembered failure expires, or the file changes (the password may be
    right now)."""
    calls = counted_checks(monkeypatch)
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, f"alice:{_bcrypt('a')}\n")
    clock = Clock()
    db = Htpasswd(path, reactor(), threadpool, clock, cache_seconds=60)
    for _ in range(5):
        assert not await db.verify("alice", "wrong")
        assert not await db.verify("ghost", "wrong")
    assert len(calls) == 2
    assert await db.verify("alice", "a")  # other credentials are checked
    assert len(calls) == 3
    clock.advance(61)
    assert not await db.verify("alice", "wrong")
    assert len(calls) == 4
    _write(path, f"alice:{_bcrypt('wrong')}\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    clock.advance(2)
    assert await db.verify("alice", "wrong")
    assert len(calls) == 5


@pytest_twisted.ensureDeferred
async def test_parallel_checks_of_the_same_credentials_share_one_bcrypt(
    tmp_path: os.PathLike[str], threadpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending the same credentials with every request of a pull, many at once."""
    calls = counted_checks(monkeypatch)
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, f"alice:{_bcrypt('a')}\n")
    db = Htpasswd(path, reactor(), threadpool, Clock(), cache_seconds=0)
    right = [Deferred.fromCoroutine(db.verify("alice", "a")) for _ in range(8)]
    wrong = [Deferred.fromCoroutine(db.verify("alice", "b")) for _ in range(8)]
    assert await gatherResults(right) == [True] * 8
    assert await gatherResults(wrong) == [False] * 8
    assert len(calls) == 2


@pytest_twisted.ensureDeferred
async def test_an_unknown_user_is_checked_as_some_user_of_the_file_would_be(
    tmp_path: os.PathLike[str], threadpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not always as the file's most common bcrypt cost: then a user with another cost, or
    a ``{SHA}`` user, answered in another time than a name that does not exist."""
    profiles: dict[str, object] = {}
    real = htpasswd_module._check

    def recording(entry: object, password: bytes, unknown: object) -> bool:
        profiles.setdefault(password.decode(), unknown)
        assert profiles[password.decode()] == unknown  # the same name, the same profile
        return real(entry, password, unknown)  # type: ignore[arg-type]

    monkeypatch.setattr(htpasswd_module, "_check", recording)
    path = os.path.join(tmp_path, "htpasswd")
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(b"s").digest()).decode()
    _write(path, f"alice:{_bcrypt('a')}\nbob:{_bcrypt('b')}\ncarol:{sha}\n")
    db = Htpasswd(path, reactor(), threadpool, Clock(), cache_seconds=0)
    for _round in range(2):
        for n in range(60):
            assert not await db.verify(f"ghost-{n}", f"ghost-{n}")
    seen = list(profiles.values())
    assert set(seen) == {("bcrypt", 4), ("sha", 0)}, set(seen)
    # In proportion to the file's users (two bcrypt, one {SHA}): far from all one kind.
    assert 5 <= seen.count(("sha", 0)) <= 40, seen.count(("sha", 0))


@pytest_twisted.ensureDeferred
async def test_a_check_shared_by_parallel_requests_outlives_the_first_one_leaving(
    tmp_path: os.PathLike[str], threadpool
) -> None:
    """The request that started a check goes away (its client left: its Deferred is
    cancelled): the others waiting on the same check still get its answer, not the
    cancellation."""
    path = os.path.join(tmp_path, "htpasswd")
    _write(path, f"alice:{_bcrypt('a')}\n")
    db = Htpasswd(path, reactor(), threadpool, Clock(), cache_seconds=0)
    first = Deferred.fromCoroutine(db.verify("alice", "a"))
    second = Deferred.fromCoroutine(db.verify("alice", "a"))
    first.cancel()
    with pytest.raises(CancelledError):
        await first
    assert await second is True
