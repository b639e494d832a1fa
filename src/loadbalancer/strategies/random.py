"""Uniform random choice."""

from __future__ import annotations

import random
from typing import final

from .._snapshot import Snapshot
from .._validation import check_key
from ._base import Key, Picker, Strategy
from ._draw import resolve_rng, table_width

__all__ = ["RandomStrategy", "TablePicker"]


@final
class TablePicker(Picker):
    """Picks ``table[draw]`` for one uniform random draw: the pick of every random strategy.

    A server's probability is its share of the table, so a table of each server once is
    uniform and one with a server ``w`` times is weighted. ``getrandbits(width)`` is redrawn
    while it is ``>= len(table)``, which keeps it exact.
    """

    __slots__ = ("_bits", "_limit", "_table", "_width")

    def __init__(self, table: tuple[str, ...], width: int, rng: random.Random) -> None:
        self._table = table
        self._width = width
        self._limit = len(table)
        self._bits = rng.getrandbits

    def pick(self, key: Key | None = None) -> str:
        """Return the server at a uniformly drawn position of the table."""
        if key is not None:
            check_key(key)
        draw = self._bits(self._width)
        while draw >= self._limit:
            draw = self._bits(self._width)
        return self._table[draw]


@final
class RandomStrategy(Strategy):
    """A server drawn uniformly at random for every pick.

    ``rng`` is any ``random.Random``; pass a seeded one for reproducible picks. It is shared by
    every picker this strategy builds (``random.Random`` is safe to call from many threads).
    """

    __slots__ = ("_rng",)

    accepts_slow_start = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker drawing uniformly over the snapshot's servers."""
        servers = snapshot.servers
        width = table_width(len(servers))
        if width is None:  # a huge pool: the servers alone, redrawn less than half the time
            return TablePicker(servers, max(len(servers) - 1, 1).bit_length(), self._rng)
        return TablePicker(servers * ((1 << width) // len(servers)), width, self._rng)
