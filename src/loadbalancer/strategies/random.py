"""Uniform random choice."""

from __future__ import annotations

import random
from typing import final

from .._snapshot import Snapshot
from .._validation import check_key
from ._base import Key, Picker, Strategy
from ._draw import check_rng, draw_width

__all__ = ["RandomStrategy"]


@final
class _RandomPicker(Picker):
    __slots__ = ("_bits", "_count", "_limit", "_servers", "_width")

    def __init__(self, servers: tuple[str, ...], rng: random.Random) -> None:
        self._servers = servers
        self._count = len(servers)
        self._bits = rng.getrandbits
        # The draw is inlined in pick: one Python call per pick.
        self._width, self._limit = draw_width(self._count)

    def pick(self, key: Key | None = None) -> str:
        """Return a server drawn uniformly at random."""
        if key is not None:
            check_key(key)
        draw = self._bits(self._width)
        while draw >= self._limit:
            draw = self._bits(self._width)
        return self._servers[draw % self._count]


@final
class RandomStrategy(Strategy):
    """A server drawn uniformly at random for every pick.

    ``rng`` is any ``random.Random``; pass a seeded one for reproducible picks. It is shared by
    every picker this strategy builds (``random.Random`` is safe to call from many threads).
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = random.Random() if rng is None else check_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker drawing uniformly over the snapshot's servers."""
        return _RandomPicker(snapshot.servers, self._rng)
