"""
The libcrypto sha256: same digests as hashlib, states interchangeable with ``rehashes`` (so
uploads saved by either continue with the other), and hashing that lets other threads run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading

import pytest
import rehashes
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.api.digests import new_hasher, releases_gil, restore_hasher
from registry.native import openssl_sha256

LIB = openssl_sha256.load()
needs_libcrypto = pytest.mark.skipif(
    LIB is None and not sys.platform.startswith("linux"),
    reason="libcrypto is only loaded on Linux",
)


@needs_libcrypto
def test_loaded_on_linux() -> None:
    # The project runs on Linux with CPython's own libcrypto present: falling back to
    # rehashes there would silently put all upload hashing back on the reactor thread.
    assert LIB is not None
    assert releases_gil("sha256")
    assert isinstance(new_hasher("sha256"), openssl_sha256.OpenSSLSha256)
    assert not releases_gil("sha512")


pieces = st.lists(st.binary(max_size=300), max_size=12)


@needs_libcrypto
@settings(max_examples=200, deadline=None)
@given(pieces)
def test_state_is_byte_identical_to_rehashes(parts: list[bytes]) -> None:
    ours = openssl_sha256.OpenSSLSha256(LIB)
    theirs = rehashes.PySha256()
    for part in parts:
        ours.update(part)
        theirs.update(part)
        assert ours.serialize() == theirs.serialize()
    assert ours.finalize() == theirs.finalize() == hashlib.sha256(b"".join(parts)).hexdigest()


@needs_libcrypto
@settings(max_examples=200, deadline=None)
@given(pieces, pieces)
def test_resumes_across_implementations(first: list[bytes], second: list[bytes]) -> None:
    expected = hashlib.sha256(b"".join(first + second)).hexdigest()
    saved_by_rehashes = rehashes.PySha256()
    saved_by_us = openssl_sha256.OpenSSLSha256(LIB)
    for part in first:
        saved_by_rehashes.update(part)
        saved_by_us.update(part)
    ours = openssl_sha256.OpenSSLSha256.deserialize(LIB, saved_by_rehashes.serialize())
    theirs = rehashes.PySha256.deserialize(saved_by_us.serialize())
    for part in second:
        ours.update(part)
        theirs.update(part)
    assert ours.finalize() == expected
    assert theirs.finalize() == expected


@needs_libcrypto
def test_any_buffer_is_hashed() -> None:
    hasher = new_hasher("sha256")
    hasher.update(bytearray(b"ab"))
    hasher.update(memoryview(b"xcdx")[1:3])
    assert hasher.finalize() == hashlib.sha256(b"abcd").hexdigest()


@needs_libcrypto
def test_finalize_leaves_the_hasher_usable() -> None:
    hasher = new_hasher("sha256")
    hasher.update(b"abc")
    assert hasher.finalize() == hashlib.sha256(b"abc").hexdigest()
    hasher.update(b"def")
    assert hasher.finalize() == hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize(
    "state",
    [
        b"",
        b"\x00" * 103,
        b"\x00" * 105,
        b"\x00" * 40 + b"\x40" + b"\x00" * 63,  # buffered length 64: not below a block
    ],
)
def test_unusable_states_are_refused(state: bytes) -> None:
    with pytest.raises(ValueError):
        restore_hasher("sha256", state)


@needs_libcrypto
def test_update_lets_other_threads_run() -> None:
    """
    While a worker thread hashes, the main thread gets to run Python code.  The interpreter's
    periodic GIL hand-over is pushed beyond the test's length, so the main thread can only run
    while the worker is inside `update` if `update` itself releases the GIL: with a hasher
    that holds it (rehashes), the main thread runs only once the worker's loop is over.  No
    clock is read: what is checked is who ran when, not how fast.
    """
    hasher = new_hasher("sha256")
    chunk = os.urandom(1024 * 1024)
    rounds = 4096  # far more hashing than it takes the main thread to be scheduled
    entering = threading.Event()
    stop = threading.Event()
    done = threading.Event()
    hashed = [0]

    def hash_until_stopped() -> None:
        entering.set()
        for _ in range(rounds):
            if stop.is_set():
                break
            hasher.update(chunk)
            hashed[0] += 1
        done.set()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        worker = threading.Thread(target=hash_until_stopped)
        worker.start()
        entering.wait()  # blocks, so the worker runs; we come back once it lets go of the GIL
        ran_while_hashing = not done.is_set()
        stop.set()
    finally:
        sys.setswitchinterval(previous)
    worker.join()
    assert ran_while_hashing, "the main thread ran only after the worker had finished hashing"
    expected = hashlib.sha256()
    for _ in range(hashed[0]):
        expected.update(chunk)
    assert hasher.finalize() == expected.hexdigest()
