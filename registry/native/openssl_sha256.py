"""
SHA-256 through libcrypto's low-level API, called with ctypes.

Why: an upload's digest is computed while the bytes stream in, and that hash is the largest
share of a push's CPU time.  ``rehashes`` holds the GIL while it hashes, so hashing on a
second core stalls the reactor; ``hashlib`` releases the GIL but its state cannot be saved, and
a chunked upload must be able to continue in another process.  libcrypto's ``SHA256_CTX`` is a
plain struct: ctypes calls drop the GIL for the duration of ``SHA256_Update``, and the struct's
fields convert exactly to the ``rehashes`` state format, so states saved by either
implementation resume in the other (and in uploads stored before this module existed).

`load` returns None where libcrypto 3 or 1.1 cannot be found; callers then use ``rehashes``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
import sys
from typing import Any

# struct SHA256state_st { u32 h[8]; u32 Nl, Nh; u32 data[16]; unsigned num, md_len; }
_CTX_SIZE = 112
_H = struct.Struct("=8I")
_BIT_COUNT = struct.Struct("=2I")
_TAIL = struct.Struct("=2I")
_DATA_OFFSET = 40
_TAIL_OFFSET = 104
_BLOCK = 64
# The rehashes (RustCrypto sha2) state: u32 h[8] little-endian, u64 block count, u8 buffered
# length, 63 buffer bytes.
_REHASHES_HEAD = struct.Struct("<8IQB")
_REHASHES_SIZE = _REHASHES_HEAD.size + _BLOCK - 1
_LIBRARY_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1")


class OpenSSLSha256:
    """A resumable sha256 hasher whose `update` runs without the GIL."""

    __slots__ = ("_ctx", "_lib")

    def __init__(self, lib: Any, ctx: ctypes.Array[ctypes.c_char] | None = None) -> None:
        self._lib = lib
        if ctx is None:
            ctx = ctypes.create_string_buffer(_CTX_SIZE)
            if lib.SHA256_Init(ctx) != 1:
                raise RuntimeError("SHA256_Init failed")
        self._ctx = ctx

    def update(self, data: bytes) -> None:
        if type(data) is not bytes:  # ctypes passes only bytes without a copy
            data = bytes(data)
        if data and self._lib.SHA256_Update(self._ctx, data, len(data)) != 1:
            raise RuntimeError("SHA256_Update failed")

    def finalize(self) -> str:
        """The hex digest; this hasher stays usable (the final step runs on a copy)."""
        copy = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        if self._lib.SHA256_Final(out, copy) != 1:
            raise RuntimeError("SHA256_Final failed")
        return out.raw.hex()

    def serialize(self) -> bytes:
        raw = self._ctx.raw
        words = _H.unpack_from(raw, 0)
        low, high = _BIT_COUNT.unpack_from(raw, 32)
        buffered, _ = _TAIL.unpack_from(raw, _TAIL_OFFSET)
        total_bytes = ((high << 32) | low) // 8
        blocks = (total_bytes - buffered) // _BLOCK
        pending = raw[_DATA_OFFSET : _DATA_OFFSET + buffered]
        return (
            _REHASHES_HEAD.pack(*words, blocks, buffered) + pending + bytes(_BLOCK - 1 - buffered)
        )

    @classmethod
    def deserialize(cls, lib: Any, state: bytes) -> OpenSSLSha256:
        if len(state) != _REHASHES_SIZE:
            raise ValueError(f"a sha256 state is {_REHASHES_SIZE} bytes, not {len(state)}")
        *words, blocks, buffered = _REHASHES_HEAD.unpack_from(state, 0)
        if buffered >= _BLOCK:
            raise ValueError(f"buffered length {buffered} is not below {_BLOCK}")
        bits = (blocks * _BLOCK + buffered) * 8
        if bits >= 1 << 64:
            raise ValueError("length out of range")
        pending = state[_REHASHES_HEAD.size : _REHASHES_HEAD.size + buffered]
        raw = (
            _H.pack(*words)
            + _BIT_COUNT.pack(bits & 0xFFFFFFFF, bits >> 32)
            + pending
            + bytes(_BLOCK - buffered)
            + _TAIL.pack(buffered, 32)
        )
        return cls(lib, ctypes.create_string_buffer(raw, _CTX_SIZE))


def _open_library() -> Any:
    if not sys.platform.startswith("linux"):
        # Elsewhere the system libcrypto may be a stub that aborts the process when loaded
        # by name (macOS), so only the known Linux sonames are tried.
        return None
    for name in _LIBRARY_NAMES:
        try:
            return ctypes.CDLL(name)  # CDLL releases the GIL around every call
        except OSError:
            continue
    found = ctypes.util.find_library("crypto")
    if found is None:
        return None
    try:
        return ctypes.CDLL(found)
    except OSError:
        return None


def _declare(lib: Any) -> bool:
    try:
        functions = (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final)
    except AttributeError:
        return False
    init, update, final = functions
    init.argtypes = [ctypes.c_void_p]
    update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    for function in functions:
        function.restype = ctypes.c_int
    return True


def _self_test(lib: Any) -> bool:
    """The struct layout is an assumption about the library: check it against known answers."""
    try:
        hasher = OpenSSLSha256(lib)
        hasher.update(b"abc" * 30)
        resumed = OpenSSLSha256.deserialize(lib, hasher.serialize())
        resumed.update(b"def")
    except (RuntimeError, ValueError):
        return False
    return resumed.finalize() == _known_answer(b"abc" * 30 + b"def") and OpenSSLSha256(
        lib
    ).finalize() == _known_answer(b"")


def _known_answer(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_cached: list[Any] = []


def load() -> Any:
    """The usable libcrypto handle, or None; decided once per process."""
    if not _cached:
        lib = _open_library()
        _cached.append(lib if lib is not None and _declare(lib) and _self_test(lib) else None)
    return _cached[0]
