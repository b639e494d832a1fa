"""Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table filled by server preferences."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Set
from itertools import chain, cycle, filterfalse, islice, repeat
from math import isqrt, lcm
from operator import add, floordiv, mod, mul, setitem, sub
from typing import final

from ..._snapshot import Endpoint, Snapshot
from .._base import Key, Picker, Strategy
from .._exclude import first_not_in
from ._bounded import Admission, BoundedPicker
from ._config import check_balance_factor, describe, resolve_rng
from ._keys import key_bytes, name_bytes, xxh64

__all__ = ["DEFAULT_TABLE_SIZE", "MAX_TABLE_SIZE", "MaglevStrategy", "is_prime", "maglev_table"]

DEFAULT_TABLE_SIZE = 65537
"""The paper's and Envoy's default table size: a prime well above 100 x the usual pool."""

MAX_TABLE_SIZE = 5_000_011
"""Envoy's upper bound on the table size (a prime); such a table takes 7 to 20 s to build."""

# The fill switches to its end game when max(TAIL * size / servers, sqrt(size) / 2) entries are
# left (see _fill): measured best at 10 to 10,000 servers for M = 65537.
_TAIL = 0.15


def is_prime(number: int) -> bool:
    """Whether ``number`` is prime (trial division: table sizes are at most a few million)."""
    if number < 2:
        return False
    if number % 2 == 0:
        return number == 2
    return all(number % divisor for divisor in range(3, isqrt(number) + 1, 2))


def _check_table_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"table_size must be an int, not {type(value).__name__}")
    if not 2 <= value <= MAX_TABLE_SIZE or not is_prime(value):
        raise ValueError(f"table_size must be a prime between 2 and {MAX_TABLE_SIZE}, got {value}")
    return value


def _turns(weights: tuple[float, ...], size: int) -> list[int] | None:
    """Which server takes each of the ``size`` turns of the fill, in order.

    Equal weights: None, for plain rotation, as in the paper. Otherwise Envoy's weighted
    Maglev: in round ``r`` (from 1) a server takes a turn only when ``r * weight`` has reached
    the weight it has already been served (its turns so far times the largest weight), so its
    ``j``-th turn (from 0) falls in round ``max(j + 1, ceil(j * top / weight))``; within a
    round servers go in order. Computed in exact integers, so the table is the same on every
    machine.
    """
    count = len(weights)
    if len(set(weights)) == 1:
        return None
    # Floats are binary fractions, and as_integer_ratio is exact and in lowest terms: over one
    # common denominator every weight is an exact integer.
    ratios = [weight.as_integer_ratio() for weight in weights]
    denominator = lcm(*{below for _, below in ratios})
    integers = [above * (denominator // below) for above, below in ratios]
    top = max(integers)
    # Servers of one weight take their turns in the same rounds: the work below is per weight
    # (pools have few), not per server.
    classes: dict[int, list[int]] = {}
    for server, weight in enumerate(integers):
        classes.setdefault(weight, []).append(server)
    members = [len(servers) for servers in classes.values()]

    def served(rounds: int) -> int:
        return sum(map(mul, members, (min(rounds, rounds * w // top + 1) for w in classes)))

    low, high = 1, size  # the heaviest server alone takes a turn in each of `size` rounds
    while low < high:
        middle = (low + high) // 2
        if served(middle) >= size:
            high = middle
        else:
            low = middle + 1
    # Each turn as round * count + server: sorting these plain ints orders turns by round, and
    # servers in order within a round (a server takes at most one turn per round), with no
    # key function to call per turn.
    turns: list[int] = []
    for weight, servers in classes.items():
        taken = min(low, low * weight // top + 1)
        if weight == top:
            rounds: Iterable[int] = range(1, taken + 1)
        else:  # round 1, then ceil(j * top / weight), which exceeds j, for j >= 1
            later = map(floordiv, range(top + weight - 1, taken * top, top), repeat(weight))
            rounds = chain((1,), later)
        base = list(map(mul, rounds, repeat(count)))
        turns += chain.from_iterable(map(map, repeat(add), repeat(base), map(repeat, servers)))
    turns.sort()
    return list(map(mod, islice(turns, size), repeat(count)))


def _fill(
    offsets: list[int], skips: list[int], names: list[str], turns: list[int] | None, size: int
) -> list[str]:
    """Each entry's owner: the paper's population loop, run in C iterators.

    On each turn a server takes the first entry of its permutation ``offset + j * skip (mod
    size)`` that is still free. Written as a Python loop that costs about 100 ns per probe and
    some ``size * ln(size)`` probes, most of them near the end when few entries are free: close
    to 100 ms at 1,000 servers. Three changes keep the exact result at a third of that:

    * No Python bytecode per probe or per turn. The table holds owners' names, or "" while
      free (names are never empty), so ``filterfalse(table.__getitem__, permutation)`` is a
      server's walk to its next free entry, and all turns run as one ``map`` that claims with
      ``operator.setitem``. The walks themselves are built by ``map`` too.
    * End game: once only ``left`` entries are free (see ``_TAIL``), each server that takes a
      turn sorts the entries still free, when it first needs one, by rank in its permutation
      (``(entry - offset) / skip mod size``) and walks that list instead. The entries it had
      not yet reached and that are still free are all in it, in permutation order, so it
      claims the same entries, minus the long walks over taken ones.
    * ``left`` is at least ``sqrt(size) / 2``: with many servers each takes a turn or two in
      the end game, and sorting ``left`` entries costs less than the walks it saves.
    """
    count = len(offsets)
    if count == 1:
        return [names[0]] * size
    table = [""] * size
    taken = table.__getitem__
    mods = repeat(size)  # one shared infinite iterator: every permutation reads it alike
    ends = map(add, offsets, map(mul, skips, mods))
    permutations = map(map, repeat(mod), map(range, offsets, ends, skips), repeat(mods))
    walks: list[Iterator[int]] = list(map(filterfalse, repeat(taken), permutations))
    left = max(int(_TAIL * size / count), isqrt(size) // 2)
    switch = max(size - left, 0)
    if turns is None:  # rotation: cycling saves two lookups per turn
        claimers: Iterator[Iterator[int]] = cycle(walks)
        owners: Iterator[str] = cycle(names)
        end = list(map(mod, range(switch, size), repeat(count)))
    else:
        claimers = map(walks.__getitem__, turns)
        owners = map(names.__getitem__, turns)
        end = turns[switch:]
    # map stops at the first exhausted argument before reading the next: owners stay in step.
    # operator.setitem, not table.__setitem__: a list's __setitem__ is a slot wrapper, which
    # costs some 25 ns more per call (1.6 ms over a 65537-entry fill).
    tables = repeat(table)  # shared by both claiming maps, as `mods` is by the walks
    deque(map(setitem, tables, map(next, islice(claimers, switch)), owners), maxlen=0)
    # The free entries, found by C scans for "" (each claim filled one, so `left` remain).
    remaining = [0] * (size - switch)
    at = -1
    for index in range(size - switch):
        at = remaining[index] = table.index("", at + 1)
    for server in set(end):
        walks[server] = _ranked(table, remaining, offsets[server], skips[server])
    claims = map(next, map(walks.__getitem__, end))
    deque(map(setitem, tables, claims, map(names.__getitem__, end)), maxlen=0)
    return table


def _ranked(table: list[str], remaining: list[int], offset: int, skip: int) -> Iterator[int]:
    """A server's walk over the end game's entries, in its permutation order.

    The entries are those of ``remaining`` still free at the server's first end-game turn,
    when this generator first runs: O(r log r) for the ``r`` entries then free.
    """
    size = len(table)
    taken = table.__getitem__
    free = list(filterfalse(taken, remaining))
    inverse = pow(skip, -1, size)
    ranks = map(mod, map(mul, map(sub, free, repeat(offset)), repeat(inverse)), repeat(size))
    by_rank = dict(zip(ranks, free, strict=True))
    yield from filterfalse(taken, map(by_rank.__getitem__, sorted(by_rank)))


def maglev_table(servers: tuple[str, ...], weights: tuple[float, ...], size: int) -> list[str]:
    """The Maglev lookup table of ``size`` entries for ``servers`` (non-empty, in any order).

    Server ``s`` has offset ``XXH64(s, seed 0) mod size`` and skip ``XXH64(s, seed 1) mod
    (size - 1) + 1``, as in Envoy. Servers take turns in name order, so the table does not
    depend on registration order. Unweighted, each owns ``floor(size / n)`` or
    ``ceil(size / n)`` entries. About 30 ms for 10 to 1,000 servers at ``size`` 65537.
    """
    if "" in servers:
        raise ValueError("server names must be non-empty")
    pairs = sorted(zip(servers, weights, strict=True))
    names = [server for server, _ in pairs]
    encoded = list(map(name_bytes, names))
    offsets = [xxh64(name, 0) % size for name in encoded]
    skips = [xxh64(name, 1) % (size - 1) + 1 for name in encoded]
    return _fill(offsets, skips, names, _turns(tuple(weight for _, weight in pairs), size), size)


@final
class _MaglevPicker(BoundedPicker):
    __slots__ = ("_count", "_rng", "_size", "_table")

    def __init__(
        self,
        table: list[str],
        servers: tuple[str, ...],
        rng: random.Random,
        admission: Admission | None,
    ) -> None:
        # Every server takes a turn in the fill's first round, so every one owns an entry.
        super().__init__(admission, servers)
        self._table = table
        self._size = len(table)
        self._count = len(servers)
        self._rng = rng

    def pick(self, key: Key | None = None) -> str:
        """Return the table entry at the key's XXH64 hash modulo the table size."""
        if type(key) is str:
            try:
                return self._table[xxh64(key.encode()) % self._size]
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                return self._table[self._hash(key) % self._size]
        if type(key) is bytes:
            return self._table[xxh64(key) % self._size]
        return self._table[self._hash(key) % self._size]

    def _hash(self, key: Key | None) -> int:
        if key is None:
            return self._rng.getrandbits(64)
        return xxh64(key_bytes(key))

    def _slot(self, key: Key | None) -> int:
        """The key's table entry, as ``pick`` finds it."""
        if type(key) is str:
            try:
                return xxh64(key.encode()) % self._size
            except UnicodeEncodeError:  # a lone surrogate: encoded as server names are
                pass
        elif type(key) is bytes:
            return xxh64(key) % self._size
        return self._hash(key) % self._size

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return the first entry not excluded along the table from the key's entry, wrapping.

        That is the key's next distinct server along the table past those it tried (the order
        bounded loads walk too), the same in every process. With every server excluded, the
        plain pick.
        """
        start = self._slot(key)
        server = self._table[start]
        if server not in exclude:
            return server
        # Usually fewer are excluded than the pool holds: then the length says they are not all.
        if len(exclude) >= len(self._reachable) and self.excludes_all(exclude):
            return server
        # Every server owns an entry and one is not excluded: the walk ends within the table.
        return first_not_in(self._table, self._size, start + 1, exclude)

    def acquire(
        self, key: Key | None, endpoints: Mapping[str, Endpoint], exclude: Set[str] = frozenset()
    ) -> Endpoint:
        """Pick and count a request; with a balance factor, skip servers at capacity.

        Bounded, a first attempt checks the key's own entry and walks the table only if that
        server is full: O(1) expected for a fixed balance factor, whatever the pool or table
        size. A retry walks as ``BoundedPicker.acquire`` does.
        """
        admission = self._admission
        # Unbounded first attempts never get here: the balancer runs them (acquire_is_pick).
        if admission is None or exclude:
            return super().acquire(key, endpoints, exclude)
        start = self._slot(key)
        return admission.admit_own(self._table[start], self._walk, start, endpoints)

    def candidates(self, key: Key | None) -> Iterator[str]:
        """Distinct servers along successive table entries from the key's entry."""
        return self._walk(self._slot(key))

    def _walk(self, start: int) -> Iterator[str]:
        """Distinct servers along the table from entry ``start``, wrapping round once.

        By index, so starting deep in the table skips nothing one by one; entries of servers
        already yielded are skipped in C. Ends once every server has been yielded (each owns
        an entry), so finding ``k`` distinct servers takes about ``n * ln(n / (n - k))`` steps.
        """
        table = self._table
        size = self._size
        count = self._count
        seen: set[str] = set()
        # The filter reads `seen` lazily, entry by entry, so it sees each server added below.
        along = map(table.__getitem__, chain(range(start, size), range(start)))
        for server in filterfalse(seen.__contains__, along):
            yield server
            seen.add(server)
            if len(seen) == count:
                return


@final
class MaglevStrategy(Strategy):
    """Maglev hashing: a key goes to the server in its entry of a precomputed lookup table.

    The table (``table_size`` entries, a prime, default 65537, at most 5,000,011, and no
    smaller than the pool) is filled by the servers taking turns, each claiming the next free
    entry in its own pseudo-random permutation (NSDI 2016, Algorithm 1). Unweighted, every
    server owns ``floor(M/N)`` or ``ceil(M/N)`` entries; with weights, entries are proportional
    to weight (Envoy's weighted Maglev: a server takes a turn only when its weight allows).
    A pool change moves the keys of the server removed (or to the server added) plus a few
    others: the price of perfect balance. At M = 65537 that extra is under 1% of all keys
    for pools of up to 100 servers (measured: 0.2% for one change among 10 servers, 0.6%
    among 100).

    ``key=None`` picks as if for a uniformly random key: a hash drawn from ``rng``.
    ``balance_factor`` (> 1, off by default) bounds loads on the lease path: a server holding
    ``ceil(balance_factor * (leases in flight + 1) * weight / total weight)`` or more
    admits no more, and the key goes to the next distinct server along the table. ``get``
    ignores it. A retry (``pick_excluding``) goes to the next distinct server along the table
    that it has not tried, so a retried key lands in the same place every time.

    The table is built when the pool changes (tens of ms, even for 1,000 servers); a pick is one
    hash and one index, with no lock. The strategy holds configuration only.
    """

    __slots__ = ("_balance_factor", "_rng", "_table_size")

    accepts_slow_start = False

    def __init__(
        self,
        *,
        table_size: int = DEFAULT_TABLE_SIZE,
        balance_factor: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._table_size = _check_table_size(table_size)
        self._balance_factor = check_balance_factor(balance_factor)
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker over the Maglev table of the snapshot's servers."""
        count = len(snapshot.servers)
        if count > self._table_size:
            raise ValueError(
                f"table_size={self._table_size} is smaller than the pool of {count} servers"
            )
        table = maglev_table(snapshot.servers, snapshot.weights, self._table_size)
        # The admission comes last: creating it takes the running total over to this
        # snapshot's servers, so nothing that can fail may follow it, and the picker still
        # published keeps its own total for as long as this build takes.
        admission = (
            None
            if self._balance_factor is None
            else Admission(self._balance_factor, snapshot, previous)
        )
        return _MaglevPicker(table, snapshot.servers, self._rng, admission)

    def __repr__(self) -> str:
        return describe(
            "MaglevStrategy",
            table_size=None if self._table_size == DEFAULT_TABLE_SIZE else self._table_size,
            balance_factor=self._balance_factor,
        )
