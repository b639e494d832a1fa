"""Weight-proportional strategies: weighted random (alias method) and NGINX's smooth WRR."""

from __future__ import annotations

import math
import random
from bisect import bisect
from collections.abc import Callable, Sequence, Set
from fractions import Fraction
from itertools import accumulate, compress, islice, repeat
from operator import add, eq, ge, lt, mul, sub, truediv
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
    # w * columns / total for each w, at C speed (the same operations, in the same order).
    scaled = list(map(truediv, map(mul, weights, repeat(columns)), repeat(total)))
    scaled += [0.0] * (columns - len(weights))
    keep = [1.0] * columns
    alias = list(range(columns))
    small = list(compress(range(columns), map(lt, scaled, repeat(1.0))))
    large = list(compress(range(columns), map(ge, scaled, repeat(1.0))))
    # Each step pairs the last small column with the last large one, and the large one goes
    # back last (onto either list), so it is the next step's: it is kept in hand instead.
    if small and large:
        high = large.pop()
        rest = scaled[high]
        while small:
            low = small.pop()
            share = scaled[low]
            keep[low] = share
            alias[low] = high
            rest -= 1.0 - share
            if rest < 1.0:
                scaled[high] = rest
                small.append(high)
                if not large:
                    break
                high = large.pop()
                rest = scaled[high]
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


CUMULATIVE_ABOVE = 2048
"""Pools larger than this draw by binary search over cumulative weights, not an alias table.

An alias table costs a Python step per server to build (6 ms at 10,000 servers), which every
pool change pays; cumulative weights are built in C (about 4 dict copies of the pool), and a
pick's binary search is then 11 to 14 C-level comparisons more than a table lookup.
"""


@final
class _CumulativePicker(Picker):
    # Large pools: P(server i) = weight_i / total, as x = random() * total falls in
    # [cumulative[i - 1], cumulative[i]).
    __slots__ = ("_cumulative", "_last", "_random", "_rng", "_servers", "_total", "_weights")

    def __init__(self, snapshot: Snapshot, rng: random.Random) -> None:
        self._cumulative = list(accumulate(snapshot.weights))
        self._total = self._cumulative[-1]
        # A product that rounds up to the total itself still lands on the last server.
        self._last = len(snapshot.servers) - 1
        self._random = rng.random
        self._rng = rng
        self._servers = snapshot.servers
        self._weights = snapshot.weights

    def pick(self, key: Key | None = None) -> str:
        """Return a server drawn with probability proportional to its weight."""
        if key is not None:
            check_key(key)
        return self._servers[bisect(self._cumulative, self._random() * self._total, 0, self._last)]

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """As the alias picker's: rejected draws, then one exact draw among the rest."""
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
    more per pick. Pools of more than ``CUMULATIVE_ABOVE`` (2,048) servers whose weights need
    no such table draw by binary search over cumulative weights instead (O(log n) per pick,
    in C), so that a pool change there stays cheap. ``rng`` is any ``random.Random``.
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker drawing servers in proportion to the snapshot's weights."""
        # Each server takes at least one entry of a table, so a pool larger than the largest
        # table has none: the weights are not even read for one.
        fits = table_width(len(snapshot.servers)) is not None
        integers = _small_integer_weights(snapshot.weights) if fits else None
        width = None if integers is None else table_width(sum(integers))
        if integers is None or width is None:
            if len(snapshot.servers) > CUMULATIVE_ABOVE:
                return _CumulativePicker(snapshot, self._rng)
            return _WeightedRandomPicker(snapshot, self._rng)
        table = repeated_table(snapshot.servers, integers, width)
        return TablePicker(table, width, self._rng, snapshot.servers, integers)


def _small_integer_weights(weights: Sequence[float]) -> list[int] | None:
    """The smallest integers in the same proportions, or None if the weights have none.

    Floats are read as fractions with denominators up to 1000 (0.1 is 1/10), accepted when
    that is the float to one part in a billion. Each distinct weight is read once, and the
    first that has no such fraction settles it: pools have few distinct weights.
    """
    distinct = dict.fromkeys(weights)
    if all(type(w) is int or w.is_integer() for w in distinct):
        integers = {w: int(w) for w in distinct}  # whole numbers are their own fractions
    else:
        fractions: dict[float, Fraction] = {}
        for w in distinct:
            f = fractions[w] = Fraction(w).limit_denominator(1000)
            if abs(f - w) > 1e-9 * w:
                return None
        scale = math.lcm(*(f.denominator for f in fractions.values()))
        integers = {w: int(f * scale) for w, f in fractions.items()}
    divisor = math.gcd(*integers.values())
    reduced = {w: i // divisor for w, i in integers.items()}
    return list(map(reduced.__getitem__, weights))


def _apportion(weights: Sequence[float], turns: int) -> list[int]:
    """Split ``turns`` in proportion to ``weights`` by largest remainder, at least one each."""
    total = math.fsum(weights)
    spare = turns - len(weights)  # one turn each is reserved
    quotas = [w / total * spare for w in weights]
    floors = list(map(math.floor, quotas))
    shares = [1 + f for f in floors]
    remainders = list(map(sub, quotas, floors))
    by_remainder = sorted(range(len(weights)), key=remainders.__getitem__)
    for i in by_remainder[len(weights) - (turns - sum(shares)) :]:
        shares[i] += 1
    return shares


def _smooth_cycle(servers: Sequence[str], weights: Sequence[int]) -> tuple[str, ...]:
    """One full cycle of NGINX's smooth weighted round-robin.

    NGINX, each turn: every server's current weight grows by its weight; the largest (the
    first of equals) is picked and loses the total. Weights 5, 1, 1 give a a b a c a a.

    The same sequence without a step per turn and server. Servers of equal weight are always
    picked in index order (the one picked least so far leads, and among those the first), so
    each weight class needs only a cursor and the number of full rounds it has made: its
    leader has current weight ``weight * turn - total * rounds``, and the leaders' index
    breaks ties. Once a class leads, it keeps the lead, taking its members in turn, until its
    round ends or a heavier class catches up (a lighter one only falls further behind), and
    the turn that happens is solved for. So the cost is one scan over the classes per run of
    one class, plus one slice: O(turns) at C speed for few distinct weights, and never more
    than a scan per turn, O(turns x distinct weights), the worst case.
    """
    total = sum(weights)
    size = len(weights)
    members: dict[int, list[int]] = {}
    for index, weight in enumerate(weights):
        members.setdefault(weight, []).append(index)
    rates = sorted(members)  # lightest first: the classes after one are the heavier
    groups = [members[rate] for rate in rates]
    class_of = [0] * size
    for c, group in enumerate(groups):
        for index in group:
            class_of[index] = c
    names = [[servers[index] for index in group] for group in groups]  # what the runs take
    cursors = [0] * len(groups)
    rounds = [0] * len(groups)
    # A leader's key, size * current - index, orders by current weight, then the first index:
    # keys are slopes * turn + intercepts, and the largest is the turn's pick, found at C speed.
    slopes = [size * rate for rate in rates]
    intercepts = [-group[0] for group in groups]
    step = size * total  # what a class's leader key loses when its round ends
    order: list[str] = []
    turn = 1
    while turn <= total:
        key = max(map(add, map(turn.__mul__, slopes), intercepts))
        index = -key % size
        best = class_of[index]
        group, cursor = groups[best], cursors[best]
        end = turn + len(group) - cursor  # the turn after the round ends
        if end == turn + 1:  # the round's last member: a run of one
            order.append(servers[index])
            cursors[best] = 0
            rounds[best] += 1
            intercepts[best] = -step * rounds[best] - group[0]
            turn = end
            continue
        rate = rates[best]
        offset = total * rounds[best]
        # Only a heavier class can catch up: a lighter one falls further behind.
        for c in range(best + 1, len(rates)):
            gain = rates[c] - rate
            behind = total * rounds[c] - offset
            # The first turn after this one where class c is level or ahead.
            level = max(turn + 1, -(-behind // gain))
            if level >= end:
                continue
            if gain * level == behind and groups[c][cursors[c]] > group[cursor + level - turn]:
                level += 1  # level, but second on the tie: ahead one turn later
            end = min(end, level)
        taken = end - turn
        order += names[best][cursor : cursor + taken]
        cursor += taken
        if cursor == len(group):
            cursor = 0
            rounds[best] += 1
        cursors[best] = cursor
        intercepts[best] = -step * rounds[best] - group[cursor]
        turn = end
    return tuple(order)


def _run_ends(cycle: tuple[str, ...]) -> list[int]:
    """For each position of ``cycle``, the next position (cyclically) with another server.

    A retry walks the cycle by whole runs with it, so skipping a heavy server that was already
    tried (weights 1000:1 give runs of hundreds) is one step, not hundreds.
    """
    size = len(cycle)
    after = [*range(1, size), 0]  # runs of one: the next position
    # Positions whose server is the next one's too, last first: each ends where the next does.
    for at in reversed(list(compress(range(size - 1), map(eq, cycle, islice(cycle, 1, None))))):
        after[at] = after[at + 1]
    if cycle[-1] == cycle[0]:
        # One run across the wrap: the last run ends where the first does (with one server,
        # never walked: a retry excluding it takes it anyway).
        first_end = after[0]
        at = size - 1
        while at >= 0 and after[at] == 0:
            after[at] = first_end
            at -= 1
    return after


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
    not favour the servers early in the cycle. Building a cycle costs about O(turns) while
    a weight class's members take whole runs of turns (0.02 ms for 10 servers and 0.3 ms for
    1,000 with weights 1-4), and at worst O(turns x distinct weights) at C speed.
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
