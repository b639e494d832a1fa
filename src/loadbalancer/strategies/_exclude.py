"""What the built-in pickers share to pick for a retry: among the servers not yet tried."""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterable, Sequence, Set
from itertools import accumulate, chain, filterfalse

__all__ = ["REDRAWS", "all_in", "draw_remaining", "first_not_in"]

REDRAWS = 8
"""How many draws a random picker rejects before drawing among the remaining servers exactly.

Rejection keeps a retry as cheap as a pick or two when few servers are excluded; the bound
caps its cost when the excluded servers hold most of the weight (one in 256 retries reaches
the exact draw when they hold half of it).
"""


def all_in(exclude: Set[str], servers: Sequence[str]) -> bool:
    """Whether every one of ``servers`` (distinct names) is in ``exclude``."""
    # A retry usually excludes fewer servers than the pool holds: then one length test answers.
    return len(exclude) >= len(servers) and all(map(exclude.__contains__, servers))


# Steps a walk takes in Python before it builds C iterators: most walks end in a step or two,
# and building the iterators costs as much as a dozen steps; a long walk then runs in C.
_SHORT_WALK = 8


def first_not_in(entries: Sequence[str], size: int, start: int, exclude: Set[str]) -> str:
    """The first of ``entries[:size]`` from ``start`` on, wrapping round, not in ``exclude``.

    One of them must not be in ``exclude``. ``start`` may be ``size``, which is entry 0.
    """
    at = start
    for _ in range(_SHORT_WALK):
        if at >= size:
            at -= size
        server = entries[at]
        if server not in exclude:
            return server
        at += 1
    at %= size
    walk = map(entries.__getitem__, chain(range(at, size), range(at)))
    return next(filterfalse(exclude.__contains__, walk))


def draw_remaining(
    rng: random.Random,
    servers: Iterable[str],
    weights: Iterable[float] | None,
    exclude: Set[str],
) -> str | None:
    """A server not in ``exclude``, drawn in proportion to its weight; None if there is none.

    ``weights`` of None mean equal weights. All-``int`` weights are drawn exactly with
    ``randrange`` (no float rounding), any others with ``rng.choices``. O(n).
    """
    if weights is None:
        names = [server for server in servers if server not in exclude]
        return names[rng.randrange(len(names))] if names else None
    pairs = [
        (server, weight)
        for server, weight in zip(servers, weights, strict=True)
        if server not in exclude
    ]
    if not pairs:
        return None
    names = [server for server, _ in pairs]
    shares = [weight for _, weight in pairs]
    if all(type(share) is int for share in shares):
        cumulative = list(accumulate(shares))
        return names[bisect(cumulative, rng.randrange(int(cumulative[-1])))]
    return rng.choices(names, shares)[0]
