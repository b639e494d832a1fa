"""Exact uniform draws from ``random.Random.getrandbits``, shared by the random strategies."""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import chain, repeat
from typing import TypeVar

__all__ = [
    "draw_width",
    "repeated_table",
    "resolve_rng",
    "table_width",
]

T = TypeVar("T")

# getrandbits(k) for k <= 30 returns a one-digit int, CPython's cheapest path.
_MIN_BITS = 30


def resolve_rng(rng: object) -> random.Random:
    """Return ``rng`` if it is a ``random.Random``, a fresh one if None, else raise naming it."""
    if rng is None:
        return random.Random()
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random instance, not {type(rng).__name__}")
    return rng


def draw_width(outcomes: int) -> tuple[int, int]:
    """Bits to draw for ``outcomes`` equally likely results, and the rejection limit.

    A draw at or above the limit (the largest multiple of ``outcomes`` that fits) is drawn
    again, so ``draw % outcomes`` has no modulo bias; with 8 spare bits that is rare.
    """
    width = max(_MIN_BITS, outcomes.bit_length() + 8)
    return width, (1 << width) // outcomes * outcomes


# One-draw tables have 2**3 times more slots than outcomes, so fewer than one draw in eight is
# redrawn, and at most 2**15 slots (256 KiB of references) however large the pool.
_SPARE_BITS = 3
_MAX_TABLE_BITS = 15


def table_width(total: int) -> int | None:
    """Bits to draw for a one-draw table over ``total`` outcomes, or None if it would be big."""
    width = max(total - 1, 1).bit_length() + _SPARE_BITS
    return width if width <= _MAX_TABLE_BITS else None


def repeated_table(items: Sequence[T], counts: Sequence[int], width: int) -> tuple[T, ...]:
    """Each item ``count`` times, the whole repeated to fill as much of ``2 ** width`` as fits.

    Draw ``getrandbits(width)``, redraw while the draw is ``>= len(table)``, and
    ``table[draw]`` is exactly distributed by ``counts``: one C-level step per pick.
    """
    once = tuple(chain.from_iterable(map(repeat, items, counts)))
    return once * ((1 << width) // len(once))
