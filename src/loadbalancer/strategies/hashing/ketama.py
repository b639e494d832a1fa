"""libketama's continuum: ring points exactly as ``uhashring.HashRing(hash_fn="ketama")``."""

from __future__ import annotations

from fractions import Fraction
from itertools import chain, repeat
from operator import methodcaller

from ._keys import ketama_points, md5, name_bytes

__all__ = ["KETAMA_VNODES", "ketama_counts", "ketama_ring"]

_digest = methodcaller("digest")

KETAMA_VNODES = 40
"""libketama's hashes per server at the mean weight; each MD5 digest gives four points."""


def ketama_counts(weights: tuple[float, ...], vnodes: int = KETAMA_VNODES) -> list[int]:
    """How many hashes (of four points each) each server gets: see ``ketama_ring``."""
    total = sum(map(Fraction, weights))
    scale = vnodes * len(weights)
    # Fraction keeps the floor exact: for int weights it is uhashring's // on ints.
    return [int(scale * Fraction(weight) / total) for weight in weights]


def ketama_ring(
    servers: tuple[str, ...], weights: tuple[float, ...], vnodes: int = KETAMA_VNODES
) -> tuple[list[int], list[str]]:
    """Return the sorted 32-bit ring points and the server owning each.

    Server ``s`` with weight ``w`` hashes ``f"{s}-{k}"`` for ``k`` below
    ``floor(vnodes * len(servers) * w / sum(weights))`` (uhashring's integer formula, computed
    exactly for float weights too), and each MD5 digest yields four little-endian points. When
    two servers produce the same point, the later one in ``servers`` owns it, as in uhashring.
    """
    counts = ketama_counts(weights, vnodes)
    suffixes = [str(index).encode() for index in range(max(counts))]
    ring: dict[int, str] = {}
    for server, count in zip(servers, counts, strict=True):
        digests = map(_digest, map(md5, map(name_bytes(f"{server}-").__add__, suffixes[:count])))
        ring.update(zip(chain.from_iterable(map(ketama_points, digests)), repeat(server)))
    # Points are below 2**32, so float keys are exact and take sort's fast comparison path.
    points = sorted(ring, key=float)
    return points, list(map(ring.__getitem__, points))
