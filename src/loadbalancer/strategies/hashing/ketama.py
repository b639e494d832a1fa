"""libketama's continuum: ring points exactly as ``uhashring.HashRing(hash_fn="ketama")``."""

from __future__ import annotations

from fractions import Fraction
from itertools import chain, repeat

from ._keys import ketama_points, md5, name_bytes

__all__ = ["KETAMA_VNODES", "ketama_continuum", "ketama_counts", "ketama_ring", "server_points"]

KETAMA_VNODES = 40
"""libketama's hashes per server at the mean weight; each MD5 digest gives four points."""


def ketama_counts(weights: tuple[float, ...], vnodes: int = KETAMA_VNODES) -> list[int]:
    """How many hashes (of four points each) each server gets: see ``ketama_ring``."""
    total = sum(map(Fraction, weights))
    scale = vnodes * len(weights)
    # Fraction keeps the floor exact: for int weights it is uhashring's // on ints.
    return [int(scale * Fraction(weight) / total) for weight in weights]


def server_points(server: str, start: int, stop: int) -> list[int]:
    """The points of hashes ``start`` to ``stop`` of ``server``: MD5 of ``f"{server}-{k}"``.

    Each digest gives four little-endian points, in order; a server's points for ``count``
    hashes are those for ``0`` to ``count``, so a weight change adds or drops a tail of them.
    """
    prefix = name_bytes(f"{server}-")
    digests = (md5(prefix + str(index).encode()).digest() for index in range(start, stop))
    return list(chain.from_iterable(map(ketama_points, digests)))


def ketama_continuum(
    servers: tuple[str, ...], counts: list[int]
) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Each ring point's owner, and, for the points given more than once, who gives each.

    When several hashes give one point, the server latest in ``servers`` owns it, as in
    uhashring. The second mapping lists every server giving such a point (once per hash that
    gives it), so an edit of the ring can tell who owns it once some of them have left. O(total
    points) time and memory.
    """
    ring: dict[int, str] = {}
    claims: dict[int, list[str]] = {}
    for server, count in zip(servers, counts, strict=True):
        points = server_points(server, 0, count)
        if ring.keys().isdisjoint(points) and len(set(points)) == len(points):
            ring.update(zip(points, repeat(server)))
            continue
        # A collision: about three in a pool of 1,000 servers (160,000 32-bit points).
        for point in points:
            if point in claims:
                claims[point].append(server)
            elif point in ring:
                claims[point] = [ring[point], server]
            ring[point] = server
    return ring, claims


def ketama_ring(
    servers: tuple[str, ...], weights: tuple[float, ...], vnodes: int = KETAMA_VNODES
) -> tuple[list[int], list[str]]:
    """Return the sorted 32-bit ring points and the server owning each.

    Server ``s`` with weight ``w`` hashes ``f"{s}-{k}"`` for ``k`` below
    ``floor(vnodes * len(servers) * w / sum(weights))`` (uhashring's integer formula, computed
    exactly for float weights too), and each MD5 digest yields four little-endian points. When
    two servers produce the same point, the later one in ``servers`` owns it, as in uhashring.
    """
    ring, _ = ketama_continuum(servers, ketama_counts(weights, vnodes))
    # Points are below 2**32, so float keys are exact and take sort's fast comparison path.
    points = sorted(ring, key=float)
    return points, list(map(ring.__getitem__, points))
