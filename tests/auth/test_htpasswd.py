"""The htpasswd user database: hash kinds, reloads, timing-safe failures, the thread pool."""

from __future__ import annotations

import base64
import hashlib
import os
import threading

import bcrypt
import pytest
import pytest_twisted
from twisted.internet.task import Clock

from registry.auth import htpasswd as htpasswd_module
from registry.auth.htpasswd import Htpasswd, hash_password, parse_htpasswd
from tests.auth.conftest import LogCapture, reactor


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
    assert "plaintext" not in text  # never log what might be a password


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
    calls: list[object] = []
    real = htpasswd_module._check

    def counting(*args: object) -> bool:
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(htpasswd_module, "_check", counting)
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
