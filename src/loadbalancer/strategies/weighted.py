"""Weight-proportional strategies: weighted random (alias method) and NGINX's smooth WRR."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence, Set
from fractions import Fraction
from itertools import chain, compress, islice, repeat
from operator import ne, sub
from typing import final

from .._snapshot import Snapshot
from .._validation import check_key, check_positive_int
from ._base import Key, Picker, Strategy
from ._draw import repeated_table, resolve_rng, table_width
from ._exclude import REDRAWS, all_in, draw_remaining
from .random import TablePicker
from .round_robin import positions

__all__ = ["WeightedRandomStrategy", "WeightedRoundRobinStrategy"]

# Each alias-table column accepts its own server when the high bits of the draw fall below
# its threshold: 24 bits resolve a column's share to one part in 16 million.
_THRESHOLD_BITS = 24


def _alias_table(weights: Sequence[float], columns: int) -> tuple[list[float], list[int]]:
    """Vose's alias method over ``columns`` columns (extra columns carry zero weight).

    Returns, per column, the probability of keeping its own index and the index it aliases.
    """
    total = math.fsum(weights)
    scaled = [w * columns / total for w in weights] + [0.0] * (columns - len(weights))
    keep = [1.0] * columns
    alias = list(range(columns))
    small = [i for i, p in enumerate(scaled) if p < 1.0]
    large = [i for i, p in enumerate(scaled) if p >= 1.0]
    while small and large:
        low, high = small.pop(), large.pop()
        keep[low] = scaled[low]
        alias[low] = high
        scaled[high] -= 1.0 - scaled[low]
        (small if scaled[high] < 1.0 else large).append(high)
    # Whatever is left is 1.0 up to rounding: it keeps its own column.
    return keep, alias


@final
class _WeightedRandomPicker(Picker):
    # Vose's alias method: for weights without a small integer form.
    __slots__ = (
        "_alias",
        "_bits",
        "_mask",
        "_own",
        "_rng",
        "_servers",
        "_shift",
        "_threshold",
        "_weights",
        "_width",
    )

    def __init__(self, snapshot: Snapshot, rng: random.Random) -> None:
        servers = snapshot.servers
        # A power-of-two column count turns the column choice into a mask and the acceptance
        # test into a shift: one getrandbits call, no division, no rejection loop.
        self._shift = max(len(servers) - 1, 1).bit_length()
        columns = 1 << self._shift
        keep, alias = _alias_table(snapshot.weights, columns)
        scale = 1 << _THRESHOLD_BITS
        self._threshold = tuple(round(p * scale) for p in keep)
        padded = servers + (servers[0],) * (columns - len(servers))  # zero-weight columns
        self._own = padded
        self._alias = tuple(padded[i] for i in alias)
        self._mask = columns - 1
        self._width = self._shift + _THRESHOLD_BITS
        self._bits = rng.getrandbits
        self._rng = rng
        self._servers = servers
        self._weights = snapshot.weights

    def pick(self, key: Key | None = None) -> str:
        """Return a server drawn with probability proportional to its weight."""
        if key is not None:
            check_key(key)
        draw = self._bits(self._width)
        column = draw & self._mask
        if draw >> self._shift < self._threshold[column]:
            return self._own[column]
        return self._alias[column]

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return a server not in ``exclude``, drawn in proportion to its weight among those.

        Draws are rejected while they land on excluded servers, up to ``REDRAWS`` of them, then
        one exact draw among the rest follows. With every server excluded, a plain pick.
        """
        for _ in range(REDRAWS):
            server = self.pick(key)
            if server not in exclude:
                return server
        return draw_remaining(self._rng, self._servers, self._weights, exclude) or server


@final
class WeightedRandomStrategy(Strategy):
    """A server drawn with probability proportional to its weight; O(1) per pick.

    Built once per pool change. When the weights reduce to small integers (a total up to
    4096, such as 5:1:1 or 0.5:1.5) each server fills that share of a table and a pick is one
    random index into it; otherwise Vose's alias table, exact for any weights, costs a little
    more per pick. ``rng`` is any ``random.Random``.
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker drawing servers in proportion to the snapshot's weights."""
        integers = _small_integer_weights(snapshot.weights)
        width = None if integers is None else table_width(sum(integers))
        if integers is None or width is None:
            return _WeightedRandomPicker(snapshot, self._rng)
        table = repeated_table(snapshot.servers, integers, width)
        return TablePicker(table, width, self._rng, snapshot.servers, integers)


def _small_integer_weights(weights: Sequence[float]) -> list[int] | None:
    """The smallest integers in the same proportions, or None if the weights have none.

    Floats are read as fractions with denominators up to 1000 (0.1 is 1/10), accepted when
    that is the float to one part in a billion.
    """
    fractions = [Fraction(w).limit_denominator(1000) for w in weights]
    if any(abs(f - w) > 1e-9 * w for f, w in zip(fractions, weights, strict=True)):
        return None
    scale = math.lcm(*(f.denominator for f in fractions))
    integers = [int(f * scale) for f in fractions]
    divisor = math.gcd(*integers)
    return [i // divisor for i in integers]


def _apportion(weights: Sequence[float], turns: int) -> list[int]:
    """Split ``turns`` in proportion to ``weights`` by largest remainder, at least one each."""
    total = math.fsum(weights)
    spare = turns - len(weights)  # one turn each is reserved
    quotas = [w / total * spare for w in weights]
    shares = [1 + math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: quotas[i] - math.floor(quotas[i]))
    for i in by_remainder[len(weights) - (turns - sum(shares)) :]:
        shares[i] += 1
    return shares


def _smooth_cycle(servers: Sequence[str], weights: Sequence[int]) -> tuple[str, ...]:
    """One full cycle of NGINX's smooth weighted round-robin.

    NGINX, each turn: every server's current weight grows by its weight; the largest (the
    first of equals) is picked and loses the total. Weights 5, 1, 1 give a a b a c a a.

    The same sequence in O(turns x distinct weights) instead of O(turns x servers): servers of
    equal weight are always picked in index order (the one picked least so far leads, and
    among those the first), so each weight class needs only a cursor and the number of full
    rounds it has made. A class's leader has current weight ``weight * turn - total * rounds``.
    """
    total = sum(weights)
    members: dict[int, list[int]] = {}
    for index, weight in enumerate(weights):
        members.setdefault(weight, []).append(index)
    classes = list(members.items())
    cursors = [0] * len(classes)
    rounds = [0] * len(classes)
    cycle = []
    for turn in range(1, total + 1):
        best = 0
        best_current = best_index = -1
        for c, (weight, indices) in enumerate(classes):
            current = weight * turn - total * rounds[c]
            index = indices[cursors[c]]
            if current > best_current or (current == best_current and index < best_index):
                best, best_current, best_index = c, current, index
        cycle.append(servers[best_index])
        cursors[best] += 1
        if cursors[best] == len(classes[best][1]):
            cursors[best] = 0
            rounds[best] += 1
    return tuple(cycle)


def _run_ends(cycle: tuple[str, ...]) -> list[int]:
    """For each position of ``cycle``, the next position (cyclically) with another server.

    A retry walks the cycle by whole runs with it, so skipping a heavy server that was already
    tried (weights 1000:1 give runs of hundreds) is one step, not hundreds.
    """
    size = len(cycle)
    # Positions where a run starts, after the first: the server differs from the one before.
    starts = list(compress(range(1, size), map(ne, islice(cycle, 1, None), cycle)))
    if not starts:
        return [0] * size  # one server: never walked, a retry excluding it takes it anyway
    ends = [*starts, size]
    # The last run ends where the first starts, unless they are one run across the wrap.
    wrap = starts[0] if cycle[-1] == cycle[0] else 0
    lengths = map(sub, ends, [0, *starts])
    return list(chain.from_iterable(map(repeat, [*starts, wrap], lengths)))


@final
class _SmoothPicker(Picker):
    __slots__ = ("_after", "_next", "_positions", "_servers", "cycle")

    def __init__(self, cycle: tuple[str, ...], start: int, servers: tuple[str, ...]) -> None:
        self.cycle = cycle
        # Positions rather than servers are rotated, so a successor learns where this stopped.
        self._positions = positions(len(cycle), start)
        self._next: Callable[[], str] = map(cycle.__getitem__, self._positions).__next__
        self._servers = servers
        self._after = _run_ends(cycle)

    def next_position(self) -> int:
        """Take the next turn's position: where a successor picker should continue."""
        return next(self._positions)

    def pick(self, key: Key | None = None) -> str:
        """Return the server whose turn it is."""
        if key is not None:
            check_key(key)
        return self._next()

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Take the next turn; if its server is excluded, the next one in the cycle that is not.

        The cycle advances by one turn only, so retries do not skew the weighted shares. With
        every server excluded, the turn's own server.
        """
        if key is not None:
            check_key(key)
        at = next(self._positions)
        cycle = self.cycle
        server = cycle[at]
        if server not in exclude or all_in(exclude, self._servers):
            return server
        # Every server has a turn in the cycle, and one is not excluded: the walk ends.
        after = self._after
        at = after[at]
        while cycle[at] in exclude:
            at = after[at]
        return cycle[at]


@final
class WeightedRoundRobinStrategy(Strategy):
    """NGINX's smooth weighted round-robin: deterministic, proportional, no bursts.

    Weights 5, 1, 1 give ``a a b a c a a`` every cycle. The cycle is precomputed when the pool
    changes, so a pick is one C-level step. Weights are reduced to the smallest integers in
    the same proportions; a cycle longer than ``max_cycle`` turns (default 4096, at least 8 per
    server) is apportioned to that length, which bounds memory for any weights. After a pool
    change the new cycle continues at the same fraction of its length, so frequent changes do
    not favour the servers early in the cycle. Building a cycle costs O(turns x distinct
    weights): about 0.1 ms for 10 servers and 8 ms for 1,000 with weights 1-4.
    """

    __slots__ = ("_max_cycle",)

    def __init__(self, max_cycle: int = 4096) -> None:
        self._max_cycle = check_positive_int(max_cycle, "max_cycle")

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker stepping through one precomputed smooth-WRR cycle."""
        limit = max(self._max_cycle, 8 * len(snapshot.servers))
        integers = _small_integer_weights(snapshot.weights)
        if integers is None or sum(integers) > limit:
            integers = _apportion(snapshot.weights, limit)
        cycle = _smooth_cycle(snapshot.servers, integers)
        start = 0
        if isinstance(previous, _SmoothPicker):
            start = previous.next_position() * len(cycle) // len(previous.cycle)
        return _SmoothPicker(cycle, start, snapshot.servers)

    def __repr__(self) -> str:
        return (
            "WeightedRoundRobinStrategy()"
            if self._max_cycle == 4096
            else (f"WeightedRoundRobinStrategy(max_cycle={self._max_cycle})")
        )
