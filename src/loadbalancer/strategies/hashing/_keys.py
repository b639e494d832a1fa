"""Hash functions that place keys identically in every process, interpreter and machine."""

from __future__ import annotations

import hashlib
import importlib
import struct
from collections.abc import Callable
from typing import Protocol

import xxhash

from ..._validation import check_key

__all__ = ["ketama_points", "key_bytes", "md5", "name_bytes", "unpack_ketama", "xxh64"]

xxh64 = xxhash.xxh64_intdigest
"""XXH64 of bytes as an unsigned 64-bit int; seed 0 is what Envoy and gRPC hash keys with."""


class _Digest(Protocol):
    def digest(self) -> bytes: ...


def _fastest_md5() -> Callable[[bytes], _Digest]:
    """CPython's built-in MD5 if present, else hashlib's (same digests, slower on short keys)."""
    # hashlib.md5 goes through OpenSSL, which sets up an EVP context per call: on keys of a
    # few dozen bytes the built-in _md5 module hashes about three times faster.
    try:
        module = importlib.import_module("_md5")
    except ImportError:
        return hashlib.md5
    constructor: Callable[[bytes], _Digest] = module.md5
    return constructor


md5 = _fastest_md5()
"""MD5 constructor: ``md5(data).digest()``."""

unpack_ketama = struct.Struct("<I").unpack_from
"""The ketama hash of a key: the first four bytes of its MD5 digest, little-endian."""

ketama_points = struct.Struct("<4I").unpack
"""The four ketama ring points in one MD5 digest, one per 4-byte group, little-endian."""


def name_bytes(name: str) -> bytes:
    """A server name as UTF-8; lone surrogates pass through, so every valid name hashes."""
    return name.encode("utf-8", "surrogatepass")


def key_bytes(key: object) -> bytes:
    """Encode a key the hot paths do not: the slow branch, as bytes placed in every process.

    A ``str`` (subclass) is UTF-8 encoded with lone surrogates passed through, as server names
    are (the same bytes as plain UTF-8 for every string without one), a ``bytes`` subclass is
    hashed as its bytes, and anything else raises ``TypeError`` naming ``key``. The hot paths
    encode an exact ``str`` with ``str.encode()`` and come here only if that raises.
    """
    if isinstance(key, str):
        return key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return bytes(key)
    check_key(key)
    raise AssertionError("unreachable: check_key raises for every other type")
