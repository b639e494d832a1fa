"""Uniform random choice."""

from __future__ import annotations

import random
from collections.abc import Sequence, Set
from typing import final

from .._snapshot import Snapshot
from .._validation import check_key
from ._base import Key, Picker, Strategy
from ._draw import resolve_rng, table_width
from ._exclude import REDRAWS, draw_remaining

__all__ = ["RandomStrategy", "TablePicker"]


@final
class TablePicker(Picker):
    """Picks ``table[draw]`` for one uniform random draw: the pick of every random strategy.

    A server's probability is its share of the table, so a table of each server once is
    uniform and one with a server ``w`` times is weighted. ``getrandbits(width)`` is redrawn
    while it is ``>= len(table)``, which keeps it exact. ``servers`` are the distinct servers
    and ``counts`` how often each fills the table once over (None: once each), for retries.
    """

    __slots__ = ("_bits", "_counts", "_limit", "_rng", "_servers", "_table", "_width")

    def __init__(
        self,
        table: tuple[str, ...],
        width: int,
        rng: random.Random,
        servers: tuple[str, ...],
        counts: Sequence[int] | None = None,
    ) -> None:
        self._table = table
        self._width = width
        self._limit = len(table)
        self._bits = rng.getrandbits
        self._rng = rng
        self._servers = servers
        self._counts = counts

    def pick(self, key: Key | None = None) -> str:
        """Return the server at a uniformly drawn position of the table."""
        if key is not None:
            check_key(key)
        draw = self._bits(self._width)
        while draw >= self._limit:
            draw = self._bits(self._width)
        return self._table[draw]

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return a server not in ``exclude``, drawn by the table's shares among those.

        Draws are rejected while they land on excluded servers, up to ``REDRAWS`` of them, then
        one exact draw among the rest follows: uniform or weight-proportional among the
        remaining servers, as ``pick`` is among all. With every server excluded, a plain pick.
        """
        for _ in range(REDRAWS):
            server = self.pick(key)
            if server not in exclude:
                return server
        return draw_remaining(self._rng, self._servers, self._counts, exclude) or server


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
            return TablePicker(servers, max(len(servers) - 1, 1).bit_length(), self._rng, servers)
        return TablePicker(servers * ((1 << width) // len(servers)), width, self._rng, servers)
