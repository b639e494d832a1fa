"""Load-aware strategies: least connections, power of two choices, and peak EWMA latency."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence, Set
from math import exp
from operator import attrgetter
from typing import final

from .._snapshot import Endpoint, Snapshot
from .._validation import check_key, check_number, check_positive_int
from ._base import Key, Picker, Strategy
from ._draw import repeated_table, resolve_rng, table_width
from ._exclude import REDRAWS
from ._load_index import SMALLEST_WEIGHT, LoadIndex

__all__ = ["LeastConnectionsStrategy", "PeakEWMAStrategy", "PowerOfTwoChoicesStrategy"]

# Load is what these strategies compare: requests in flight plus failures in a row, so a server
# that fails fast (and so holds few requests) does not look idle. One attribute read, as
# in_flight was.
_load = attrgetter("load")


def _weights_if_unequal(snapshot: Snapshot) -> dict[Endpoint, float] | None:
    """Each endpoint's weight, or None when all are equal and weights cannot matter."""
    weights = snapshot.weights
    first = weights[0]
    # Counted in C, a tenth of a generator's cost; unequal pools mostly differ at the ends.
    if weights[-1] == first and weights.count(first) == len(weights):
        return None
    return dict(zip(snapshot.endpoints, weights, strict=True))


def _scan(
    endpoints: Sequence[Endpoint], weights: Sequence[float], random: Callable[[], float]
) -> Endpoint:
    """The least loaded endpoint per unit of weight, by a scan: O(n)."""
    # HAProxy's leastconn load, (load + 1) / weight: counting the request about to be
    # sent lets weights decide among idle servers too.
    lowest = math.inf
    best = endpoints[0]  # replaced by the first endpoint: every load is <= inf
    ties = 0
    for endpoint, weight in zip(endpoints, weights, strict=True):
        load = (endpoint.load + 1) / weight
        if load < lowest:
            lowest, best, ties = load, endpoint, 1
        elif load == lowest:
            # Ties go to a uniformly random one (reservoir sampling): always taking the
            # first is how a well-known router sent almost all its traffic to one backend.
            ties += 1
            if random() * ties < 1.0:
                best = endpoint
    return best


def _scan_excluding(
    endpoints: Sequence[Endpoint],
    weights: Sequence[float],
    random: Callable[[], float],
    exclude: Set[str],
) -> Endpoint | None:
    """``_scan`` among the endpoints whose servers are not in ``exclude``; None if none is."""
    lowest = math.inf
    best: Endpoint | None = None
    ties = 0
    for endpoint, weight in zip(endpoints, weights, strict=True):
        if endpoint.server in exclude:
            continue
        load = (endpoint.load + 1) / weight
        if load < lowest:
            lowest, best, ties = load, endpoint, 1
        elif load == lowest:
            ties += 1
            if random() * ties < 1.0:
                best = endpoint
    return best


# The in-bucket draw of ``pick``, inlined: 30 bits (getrandbits' cheapest path), exact with
# rejection for buckets of up to 2**22 endpoints (see draw_width); larger ones call draw_below.
_SPAN = 1 << 30
_WIDEST = 1 << 22

# Plain picks a retry tries before the exact search: a pick is uniform over the tied servers,
# so one not excluded is uniform over those not excluded; two tries settle most retries.
_RETRY_PICKS = 2


@final
class _IndexedLeastConnectionsPicker(Picker):
    __slots__ = ("_bits", "_endpoints", "_index", "_random", "_weights")

    def __init__(self, snapshot: Snapshot, rng: random.Random, previous: Picker | None) -> None:
        self._endpoints = snapshot.endpoints
        self._weights = snapshot.weights
        self._random = rng.random
        self._bits = rng.getrandbits
        if isinstance(previous, _IndexedLeastConnectionsPicker) and previous._index.hand_over(
            previous,
            self,
            (previous._endpoints, previous._weights),
            (snapshot.endpoints, snapshot.weights),
        ):
            self._index: LoadIndex = previous._index
        else:
            self._index = LoadIndex()
            self._index.fill(self, snapshot.endpoints, snapshot.weights)

    def pick(self, key: Key | None = None) -> str:
        """Return a server with the least load per unit of weight, ties uniformly at random.

        O(1) (O(tied weight classes) on a tie across weights), without a lock: the index is
        read optimistically, and an inconsistent read (a bucket emptied or changed meanwhile)
        takes the index's lock instead. The draws are ``LoadIndex.choose``'s.
        """
        if key is not None:
            check_key(key)
        index = self._index
        bucket = index.single
        try:
            if bucket is None:  # a tie across weight classes: one draw over all tied servers
                best = index.best
                ties = 0
                for bucket in best:  # a loop over a few buckets is cheaper than sum(map())
                    ties += len(bucket)
                if 1 < ties < _WIDEST:
                    draw = self._bits(30)
                    while draw >= _SPAN - _SPAN % ties:
                        draw = self._bits(30)
                    draw %= ties
                    for bucket in best:
                        if draw < len(bucket):
                            server = bucket[draw]
                            break
                        draw -= len(bucket)
                    else:  # the buckets shrank since they were counted
                        server = index.choose(self._bits)
                else:
                    server = index.choose(self._bits)
            else:
                ties = len(bucket)
                if ties == 1:
                    server = bucket[0]
                elif 1 < ties < _WIDEST:
                    draw = self._bits(30)
                    while draw >= _SPAN - _SPAN % ties:
                        draw = self._bits(30)
                    server = bucket[draw % ties]
                else:  # emptied meanwhile, or huge
                    server = index.choose(self._bits)
        except IndexError:  # a bucket shrank between its length and the draw
            server = index.choose(self._bits)
        if index.owner is not self:
            # A newer picker took the index over (or another index took our endpoints):
            # what was read may not be this snapshot's, so scan it.
            return _scan(self._endpoints, self._weights, self._random).server
        return server

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return the least loaded server per unit of weight among those not in ``exclude``.

        Ties are broken as in ``pick``; with every server excluded, a plain pick. First a
        plain pick or two, kept if not excluded: uniform over the tied servers not excluded,
        when there are any. Otherwise, under the index's lock, O(excluded + distinct
        weights): see ``LoadIndex.choose_excluding``.
        """
        if key is not None:
            check_key(key)
        for _ in range(_RETRY_PICKS):
            picked = self.pick()
            if picked not in exclude:
                return picked
        index = self._index
        server = index.choose_excluding(self._bits, exclude)
        if index.owner is not self:
            endpoint = _scan_excluding(self._endpoints, self._weights, self._random, exclude)
            server = None if endpoint is None else endpoint.server
        return self.pick(key) if server is None else server


@final
class _ScanningLeastConnectionsPicker(Picker):
    """Least connections by a scan, for weights below ``SMALLEST_WEIGHT``: O(n) per pick."""

    __slots__ = ("_endpoints", "_random", "_weights")

    def __init__(self, snapshot: Snapshot, rng: random.Random) -> None:
        self._endpoints = snapshot.endpoints
        self._weights = snapshot.weights
        self._random = rng.random

    def pick(self, key: Key | None = None) -> str:
        """Return a server with the least load per unit of weight."""
        if key is not None:
            check_key(key)
        return _scan(self._endpoints, self._weights, self._random).server

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return the least loaded server per unit of weight among those not in ``exclude``."""
        if key is not None:
            check_key(key)
        endpoint = _scan_excluding(self._endpoints, self._weights, self._random, exclude)
        return self.pick(key) if endpoint is None else endpoint.server


@final
class LeastConnectionsStrategy(Strategy):
    """The least loaded server, relative to its weight.

    Load is requests in flight plus failures in a row (``Endpoint.load``), so a server that
    fails fast does not look idle. Servers compare HAProxy's ``(load + 1) / weight``, so
    weights (and slow start) count even when servers are idle. In-flight counts come from leases
    (``lb.lease()``/``lb.acquire()``); ties are broken uniformly at random with ``rng``, over
    all tied servers. A retry (``pick_excluding``) takes the least loaded server not yet tried.

    Picks are O(1): an index (``LoadIndex``) keeps servers in buckets by weight and load,
    updated through ``Endpoint.listener`` as leases begin and end (O(1) each, plus
    O(distinct weights) when a weight's least load changes), with no lock on the pick; a tie
    across weights costs O(tied weights). A retry is a plain pick or two, or, when those
    are excluded, an exact search under the index's lock. A rebuild hands the index from the
    previous picker to the new one, re-indexing only the servers that changed. A picker that
    has been replaced (``lb.picker`` kept by a caller) scans its own pool, O(n). Weights below
    2**-960 (where keys could reach infinity) are scanned, O(n), as well.
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker over an index of the snapshot's loads, handed on from ``previous``."""
        if min(snapshot.weights) < SMALLEST_WEIGHT:
            return _ScanningLeastConnectionsPicker(snapshot, self._rng)
        return _IndexedLeastConnectionsPicker(snapshot, self._rng, previous)


_Bits = Callable[[int], int]
"""``random.Random.getrandbits``, as the pair draws call it."""


class _PairDraw(ABC):
    """Draws the P2C candidates from two or more endpoints, without replacement.

    The pickers inline ``pair`` in their ``pick`` (one Python frame per pick) from the
    subclass's ``state``, a tuple read with one attribute load; it stays here for retries.
    """

    __slots__ = ("_rng", "endpoints")

    def __init__(self, endpoints: tuple[Endpoint, ...], rng: random.Random) -> None:
        self.endpoints = endpoints
        self._rng = rng

    @abstractmethod
    def pair(self) -> tuple[Endpoint, Endpoint]:
        """Two distinct endpoints, every ordered pair equally likely."""

    def sample(self, count: int) -> list[Endpoint]:
        """``count`` distinct endpoints, for choice counts above two."""
        return self._rng.sample(self.endpoints, count)

    def excluding(self, count: int, exclude: Set[str]) -> Sequence[Endpoint]:
        """``count`` distinct endpoints whose servers are not in ``exclude``, in random order.

        Fewer when fewer remain (none: empty). Every set of ``count`` remaining endpoints is
        equally likely: samples holding an excluded server are rejected, up to ``REDRAWS``
        of them, and then the sample is drawn from the remaining endpoints directly.
        """
        if count == 2:
            pair = self.pair
            for _ in range(REDRAWS):
                first, second = pair()
                if first.server not in exclude and second.server not in exclude:
                    return first, second
        elif count > 2:
            for _ in range(REDRAWS):
                candidates = self.sample(count)
                if not any(endpoint.server in exclude for endpoint in candidates):
                    return candidates
        remaining = [endpoint for endpoint in self.endpoints if endpoint.server not in exclude]
        if len(remaining) <= count:
            self._rng.shuffle(remaining)  # ties go to the first: keep it random
            return remaining
        return self._rng.sample(remaining, count)


@final
class _PairTableDraw(_PairDraw):
    """Up to 64 servers: every ordered pair in a one-draw table (see ``repeated_table``)."""

    __slots__ = ("state",)

    def __init__(self, endpoints: tuple[Endpoint, ...], rng: random.Random, width: int) -> None:
        super().__init__(endpoints, rng)
        ordered = [(a, b) for a in endpoints for b in endpoints if a is not b]
        table = repeated_table(ordered, [1] * len(ordered), width)
        self.state: tuple[_Bits, int, int, tuple[tuple[Endpoint, Endpoint], ...]] = (
            rng.getrandbits,
            width,
            len(table),
            table,
        )
        """getrandbits, bits per draw, the table's length (a draw at or above it is drawn
        again) and the table."""

    def pair(self) -> tuple[Endpoint, Endpoint]:
        """Two distinct endpoints, every ordered pair equally likely: one table entry."""
        bits, width, limit, table = self.state
        draw = bits(width)
        while draw >= limit:
            draw = bits(width)
        return table[draw]


@final
class _TwoDraws(_PairDraw):
    """Larger pools: each candidate drawn alone, both again when they are the same endpoint.

    Two independent uniform draws, kept only when they differ, are uniform over the ordered
    pairs of distinct endpoints; they coincide in one pick in n. Two getrandbits calls cost less
    than splitting one draw into a pair: ``%`` and ``//`` are generic operators in CPython,
    each allocating an int, where indexing a tuple is not.
    """

    __slots__ = ("state",)

    def __init__(self, endpoints: tuple[Endpoint, ...], rng: random.Random) -> None:
        super().__init__(endpoints, rng)
        size = len(endpoints)
        # The endpoints repeated, so that few draws fall past the table and are drawn again:
        # fewer than one in eight while the table holds at most 2**15 references (4,096
        # servers), fewer than one in five beyond, the table under eight times the pool.
        width = table_width(size) or (size - 1).bit_length() + 2
        table = endpoints * ((1 << width) // size)
        self.state: tuple[_Bits, int, int, tuple[Endpoint, ...]] = (
            rng.getrandbits,
            width,
            len(table),
            table,
        )
        """getrandbits, bits per draw, the table's length (a draw at or above it is drawn
        again) and the table."""

    def pair(self) -> tuple[Endpoint, Endpoint]:
        """Two distinct endpoints, every ordered pair equally likely: two table entries."""
        bits, width, limit, table = self.state
        while True:
            at = bits(width)
            while at >= limit:
                at = bits(width)
            to = bits(width)
            while to >= limit:
                to = bits(width)
            first, second = table[at], table[to]
            if first is not second:
                return first, second


def _pair_draw(endpoints: tuple[Endpoint, ...], rng: random.Random) -> _PairTableDraw | _TwoDraws:
    """The cheaper exact pair draw for two or more endpoints: a pair table while it is small."""
    size = len(endpoints)
    width = table_width(size * (size - 1))
    return _TwoDraws(endpoints, rng) if width is None else _PairTableDraw(endpoints, rng, width)


@final
class _OneServerPicker(Picker):
    """A pool of one server, for P2C and peak EWMA: nothing to compare, and no other to retry."""

    __slots__ = ("_server",)

    def __init__(self, server: str) -> None:
        self._server = server

    def pick(self, key: Key | None = None) -> str:
        """Return the only server."""
        if key is not None:
            check_key(key)
        return self._server

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return the only server, tried or not."""
        return self.pick(key)


def _envoy_score(endpoint: Endpoint, weight: float, bias: float) -> float:
    """Envoy's least_request with unequal weights: weight / (load + 1) ** bias."""
    load = endpoint.load + 1
    return weight / load if bias == 1.0 else weight / load**bias


class _TwoChoicesPicker(Picker):
    """P2C over three or more choices; the base of the two-choice pickers, for retries.

    The two-choice pickers are specialised at build, by weights (equal or not) and by pair
    draw (table or two draws), so that a pick runs no test it does not need.
    """

    __slots__ = ("_bias", "_choices", "_draw", "_weights")

    def __init__(
        self,
        draw: _PairDraw,
        choices: int,
        bias: float,
        weights: dict[Endpoint, float] | None,
    ) -> None:
        self._draw = draw
        self._choices = choices
        self._bias = bias
        self._weights = weights

    def pick(self, key: Key | None = None) -> str:
        """Return the best of ``choices`` servers sampled without replacement: O(choices)."""
        if key is not None:
            check_key(key)
        return self._best(self._draw.sample(self._choices))

    def _best(self, candidates: Sequence[Endpoint]) -> str:
        """The winner among sampled candidates, ties to the first drawn (as ``pick`` inlines)."""
        weights = self._weights
        if weights is None:
            if len(candidates) == 2:  # a retry's usual case: no min() call
                first, second = candidates
                return (second if second.load < first.load else first).server
            return min(candidates, key=_load).server
        bias = self._bias
        return max(candidates, key=lambda e: _envoy_score(e, weights[e], bias)).server

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """The same comparison among servers not in ``exclude``: ``choices`` distinct ones.

        Samples holding an excluded server are rejected, up to ``REDRAWS`` of them, then the
        candidates are sampled from the remaining servers directly. With fewer remaining than
        ``choices``, all of them are compared (one remaining: that one); with none, a plain
        pick.
        """
        if key is not None:
            check_key(key)
        candidates = self._draw.excluding(self._choices, exclude)
        return self._best(candidates) if candidates else self.pick(key)


@final
class _PairTablePicker(_TwoChoicesPicker):
    """Two choices, equal weights, up to 64 servers."""

    __slots__ = ("_pairs",)

    def __init__(self, draw: _PairTableDraw, bias: float) -> None:
        super().__init__(draw, 2, bias, None)
        self._pairs = draw.state

    def pick(self, key: Key | None = None) -> str:
        """Return the less loaded of two servers sampled without replacement.

        Ties go to the first drawn. O(1): one draw (two over a rejection, rarely), two loads
        compared; no lock.
        """
        if key is not None:
            check_key(key)
        # _PairTableDraw.pair, inlined: the same draws give the same pairs.
        bits, width, limit, pairs = self._pairs
        draw = bits(width)
        while draw >= limit:
            draw = bits(width)
        first, second = pairs[draw]
        return (second if second.load < first.load else first).server


@final
class _TwoDrawPicker(_TwoChoicesPicker):
    """Two choices, equal weights, more than 64 servers."""

    __slots__ = ("_singles",)

    def __init__(self, draw: _TwoDraws, bias: float) -> None:
        super().__init__(draw, 2, bias, None)
        self._singles = draw.state

    def pick(self, key: Key | None = None) -> str:
        """Return the less loaded of two servers sampled without replacement.

        Ties go to the first drawn. O(1): two draws (more over a rejection, rarely), two
        loads compared; no lock.
        """
        if key is not None:
            check_key(key)
        # _TwoDraws.pair, inlined: the same draws give the same pairs.
        bits, width, limit, table = self._singles
        at = bits(width)
        while at >= limit:
            at = bits(width)
        to = bits(width)
        while to >= limit:
            to = bits(width)
        first, second = table[at], table[to]
        if first is second:  # once in n: both drawn again, as pair() goes on to do
            first, second = self._draw.pair()
        return (second if second.load < first.load else first).server


@final
class _WeightedPairTablePicker(_TwoChoicesPicker):
    """Two choices, unequal weights, up to 64 servers."""

    __slots__ = ("_pairs",)

    def __init__(self, draw: _PairTableDraw, bias: float, weights: dict[Endpoint, float]) -> None:
        super().__init__(draw, 2, bias, weights)
        self._pairs = (*draw.state, weights, bias)

    def pick(self, key: Key | None = None) -> str:
        """Return the higher ``weight / (load + 1) ** bias`` of two servers sampled.

        Sampled without replacement; ties go to the first drawn. O(1), no lock.
        """
        if key is not None:
            check_key(key)
        bits, width, limit, pairs, weights, bias = self._pairs
        draw = bits(width)
        while draw >= limit:
            draw = bits(width)
        first, second = pairs[draw]
        if bias == 1.0:  # weight / (load + 1), compared without dividing
            if weights[second] * (first.load + 1) > weights[first] * (second.load + 1):
                return second.server
            return first.server
        # _envoy_score, inlined; the first drawn wins a tie, as max() would give it.
        if weights[second] / (second.load + 1) ** bias > weights[first] / (first.load + 1) ** bias:
            return second.server
        return first.server


@final
class _WeightedTwoDrawPicker(_TwoChoicesPicker):
    """Two choices, unequal weights, more than 64 servers."""

    __slots__ = ("_singles",)

    def __init__(self, draw: _TwoDraws, bias: float, weights: dict[Endpoint, float]) -> None:
        super().__init__(draw, 2, bias, weights)
        self._singles = (*draw.state, weights, bias)

    def pick(self, key: Key | None = None) -> str:
        """Return the higher ``weight / (load + 1) ** bias`` of two servers sampled.

        Sampled without replacement; ties go to the first drawn. O(1), no lock.
        """
        if key is not None:
            check_key(key)
        bits, width, limit, table, weights, bias = self._singles
        at = bits(width)
        while at >= limit:
            at = bits(width)
        to = bits(width)
        while to >= limit:
            to = bits(width)
        first, second = table[at], table[to]
        if first is second:  # once in n: both drawn again, as pair() goes on to do
            first, second = self._draw.pair()
        if bias == 1.0:  # weight / (load + 1), compared without dividing
            if weights[second] * (first.load + 1) > weights[first] * (second.load + 1):
                return second.server
            return first.server
        # _envoy_score, inlined; the first drawn wins a tie, as max() would give it.
        if weights[second] / (second.load + 1) ** bias > weights[first] / (first.load + 1) ** bias:
            return second.server
        return first.server


@final
class PowerOfTwoChoicesStrategy(Strategy):
    """Envoy's least-request balancer: the less loaded of ``choices`` random servers.

    Load is requests in flight plus failures in a row (``Endpoint.load``), so a server that
    fails fast does not look idle. Candidates are sampled *without* replacement (Envoy samples
    with replacement, so with two hosts half its picks compare a host with itself:
    envoy#11004). With equal weights the less loaded wins (ties to the first drawn, itself
    random); with unequal weights the highest ``weight / (load + 1) ** active_request_bias``
    wins. A retry (``pick_excluding``) samples its candidates among the servers not yet tried.
    """

    __slots__ = ("_bias", "_choices", "_rng")

    def __init__(
        self,
        choices: int = 2,
        *,
        active_request_bias: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._choices = check_positive_int(choices, "choices")
        if self._choices < 2:
            raise ValueError(f"choices must be >= 2, got {choices}")
        self._bias = check_number(active_request_bias, "active_request_bias", at_least=0)
        self._rng = resolve_rng(rng)

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker comparing sampled servers' loads, specialised to the snapshot."""
        endpoints = snapshot.endpoints
        if len(endpoints) == 1:
            return _OneServerPicker(snapshot.servers[0])
        draw = _pair_draw(endpoints, self._rng)
        weights = _weights_if_unequal(snapshot)
        choices = min(self._choices, len(endpoints))
        if choices > 2:
            return _TwoChoicesPicker(draw, choices, self._bias, weights)
        if isinstance(draw, _PairTableDraw):
            if weights is None:
                return _PairTablePicker(draw, self._bias)
            return _WeightedPairTablePicker(draw, self._bias, weights)
        if weights is None:
            return _TwoDrawPicker(draw, self._bias)
        return _WeightedTwoDrawPicker(draw, self._bias, weights)

    def __repr__(self) -> str:
        args = [f"choices={self._choices}"] if self._choices != 2 else []
        if self._bias != 1.0:
            args.append(f"active_request_bias={self._bias}")
        return f"PowerOfTwoChoicesStrategy({', '.join(args)})"


class _PeakEWMAPicker(Picker):
    """Peak EWMA's retries and costs; the base of its pickers, specialised at build.

    By weights (equal or not) and pair draw (table or two draws), so that a pick runs no
    test it does not need.
    """

    __slots__ = ("_clock", "_decay", "_default", "_draw", "_weights")

    def __init__(
        self,
        snapshot: Snapshot,
        draw: _PairDraw,
        decay: float,
        default: float,
        weights: dict[Endpoint, float] | None,
    ) -> None:
        self._clock: Callable[[], float] = snapshot.clock
        self._draw = draw
        self._decay = decay
        self._default = default
        self._weights = weights

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """The cheaper of two servers sampled without replacement among those not excluded.

        One server remaining: that one; none: a plain pick.
        """
        if key is not None:
            check_key(key)
        candidates = self._draw.excluding(2, exclude)
        if len(candidates) == 2:
            return self._cheaper(candidates[0], candidates[1])
        return candidates[0].server if candidates else self.pick(key)

    def _cheaper(self, first: Endpoint, second: Endpoint) -> str:
        """The server of the cheaper endpoint, ties to ``first``: ``pick``'s comparison."""
        if first.latency is None and second.latency is None:
            first_cost: float = first.load + 1
            second_cost: float = second.load + 1
        else:
            now = self._clock()
            first_cost = self._cost(first, now)
            second_cost = self._cost(second, now)
        if self._weights is not None:
            first_cost /= self._weights[first]
            second_cost /= self._weights[second]
        return (second if second_cost < first_cost else first).server

    def _cost(self, endpoint: Endpoint, now: float) -> float:
        """Expected latency of one more request on ``endpoint``."""
        latency = self._default if endpoint.latency is None else endpoint.latency
        # Idle time pulls an estimate down (Finagle, Linkerd), so a server that was slow, or
        # has not been tried yet, is tried now and then, and regains traffic once it is fast.
        decay = exp(min(endpoint.latency_at - now, 0.0) / self._decay)
        return latency * decay * (endpoint.load + 1)


@final
class _PeakEWMAPairTablePicker(_PeakEWMAPicker):
    """Equal weights, up to 64 servers."""

    __slots__ = ("_pairs",)

    def __init__(
        self, snapshot: Snapshot, draw: _PairTableDraw, decay: float, default: float
    ) -> None:
        super().__init__(snapshot, draw, decay, default, None)
        self._pairs = draw.state

    def pick(self, key: Key | None = None) -> str:
        """Return the cheaper of two servers sampled without replacement.

        Cost is the expected latency of one more request: the peak-EWMA latency (the default
        before any sample), decayed by the idle time since its last sample, times the load
        plus one. O(1), no lock.
        """
        if key is not None:
            check_key(key)
        # _PairTableDraw.pair and _cheaper, inlined: a pick stays one Python call, and the
        # same draws give the same pairs.
        bits, width, limit, pairs = self._pairs
        draw = bits(width)
        while draw >= limit:
            draw = bits(width)
        first, second = pairs[draw]
        if first.latency is None and second.latency is None:
            # Neither measured yet: their costs differ only by age, so compare loads alone.
            return (second if second.load < first.load else first).server
        # _cost, inlined for both.
        now = self._clock()
        decay, default = self._decay, self._default
        age = first.latency_at - now
        latency = default if first.latency is None else first.latency
        first_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (first.load + 1)
        age = second.latency_at - now
        latency = default if second.latency is None else second.latency
        second_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (second.load + 1)
        return (second if second_cost < first_cost else first).server


@final
class _PeakEWMATwoDrawPicker(_PeakEWMAPicker):
    """Equal weights, more than 64 servers."""

    __slots__ = ("_singles",)

    def __init__(self, snapshot: Snapshot, draw: _TwoDraws, decay: float, default: float) -> None:
        super().__init__(snapshot, draw, decay, default, None)
        self._singles = draw.state

    def pick(self, key: Key | None = None) -> str:
        """Return the cheaper of two servers sampled without replacement.

        Cost as for ``_PeakEWMAPairTablePicker.pick``. O(1), no lock.
        """
        if key is not None:
            check_key(key)
        # _TwoDraws.pair and _cheaper, inlined: a pick stays one Python call, and the same
        # draws give the same pairs.
        bits, width, limit, table = self._singles
        at = bits(width)
        while at >= limit:
            at = bits(width)
        to = bits(width)
        while to >= limit:
            to = bits(width)
        first, second = table[at], table[to]
        if first is second:  # once in n: both drawn again, as pair() goes on to do
            first, second = self._draw.pair()
        if first.latency is None and second.latency is None:
            # Neither measured yet: their costs differ only by age, so compare loads alone.
            return (second if second.load < first.load else first).server
        # _cost, inlined for both.
        now = self._clock()
        decay, default = self._decay, self._default
        age = first.latency_at - now
        latency = default if first.latency is None else first.latency
        first_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (first.load + 1)
        age = second.latency_at - now
        latency = default if second.latency is None else second.latency
        second_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (second.load + 1)
        return (second if second_cost < first_cost else first).server


@final
class _WeightedPeakEWMAPairTablePicker(_PeakEWMAPicker):
    """Unequal weights, up to 64 servers."""

    __slots__ = ("_pairs",)

    def __init__(
        self,
        snapshot: Snapshot,
        draw: _PairTableDraw,
        decay: float,
        default: float,
        weights: dict[Endpoint, float],
    ) -> None:
        super().__init__(snapshot, draw, decay, default, weights)
        self._pairs = (*draw.state, weights)

    def pick(self, key: Key | None = None) -> str:
        """Return the cheaper of two servers sampled without replacement, per unit of weight.

        Cost as for ``_PeakEWMAPairTablePicker.pick``, divided by the weight. O(1), no lock.
        """
        if key is not None:
            check_key(key)
        bits, width, limit, pairs, weights = self._pairs
        draw = bits(width)
        while draw >= limit:
            draw = bits(width)
        first, second = pairs[draw]
        if first.latency is None and second.latency is None:
            first_cost: float = first.load + 1
            second_cost: float = second.load + 1
        else:
            now = self._clock()
            decay, default = self._decay, self._default
            age = first.latency_at - now
            latency = default if first.latency is None else first.latency
            first_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (first.load + 1)
            age = second.latency_at - now
            latency = default if second.latency is None else second.latency
            second_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (second.load + 1)
        first_cost /= weights[first]
        second_cost /= weights[second]
        return (second if second_cost < first_cost else first).server


@final
class _WeightedPeakEWMATwoDrawPicker(_PeakEWMAPicker):
    """Unequal weights, more than 64 servers."""

    __slots__ = ("_singles",)

    def __init__(
        self,
        snapshot: Snapshot,
        draw: _TwoDraws,
        decay: float,
        default: float,
        weights: dict[Endpoint, float],
    ) -> None:
        super().__init__(snapshot, draw, decay, default, weights)
        self._singles = (*draw.state, weights)

    def pick(self, key: Key | None = None) -> str:
        """Return the cheaper of two servers sampled without replacement, per unit of weight.

        Cost as for ``_PeakEWMAPairTablePicker.pick``, divided by the weight. O(1), no lock.
        """
        if key is not None:
            check_key(key)
        bits, width, limit, table, weights = self._singles
        at = bits(width)
        while at >= limit:
            at = bits(width)
        to = bits(width)
        while to >= limit:
            to = bits(width)
        first, second = table[at], table[to]
        if first is second:  # once in n: both drawn again, as pair() goes on to do
            first, second = self._draw.pair()
        if first.latency is None and second.latency is None:
            first_cost: float = first.load + 1
            second_cost: float = second.load + 1
        else:
            now = self._clock()
            decay, default = self._decay, self._default
            age = first.latency_at - now
            latency = default if first.latency is None else first.latency
            first_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (first.load + 1)
            age = second.latency_at - now
            latency = default if second.latency is None else second.latency
            second_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (second.load + 1)
        first_cost /= weights[first]
        second_cost /= weights[second]
        return (second if second_cost < first_cost else first).server


@final
class PeakEWMAStrategy(Strategy):
    """Finagle's and Linkerd's latency-aware balancer: power of two choices over cost.

    Cost is the peak-EWMA latency, decayed over ``decay`` seconds (default 10), times the
    load plus one, where load is requests in flight plus failures in a row
    (``Endpoint.load``); servers without a sample yet count ``default_latency`` (default
    30 ms, as Linkerd). Weights divide the cost. Latencies come from leases and
    ``done(latency=...)``, timed with the balancer's clock. A failed request counts as at least
    ``failure_latency`` seconds (default 1), and never lowers the estimate, so a server that
    fails fast never looks fast. A retry (``pick_excluding``) samples its two candidates among
    the servers not yet tried.
    """

    __slots__ = ("_decay", "_default", "_failure_latency", "_rng")

    def __init__(
        self,
        *,
        decay: float = 10.0,
        default_latency: float = 0.030,
        failure_latency: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._decay = check_number(decay, "decay", above=0)
        self._default = check_number(default_latency, "default_latency", above=0)
        self._failure_latency = check_number(failure_latency, "failure_latency", above=0)
        self._rng = resolve_rng(rng)

    @property
    def latency_decay(self) -> float:
        """Seconds over which latency estimates forget: this strategy's ``decay``."""
        return self._decay

    @property
    def failure_latency(self) -> float:
        """Seconds a failed request counts as at least: this strategy's ``failure_latency``.

        A failed request counts as at least this latency, and never lowers the estimate.
        """
        return self._failure_latency

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker comparing two sampled servers' latency cost, specialised to it."""
        endpoints = snapshot.endpoints
        if len(endpoints) == 1:
            return _OneServerPicker(snapshot.servers[0])
        draw = _pair_draw(endpoints, self._rng)
        weights = _weights_if_unequal(snapshot)
        decay, default = self._decay, self._default
        if isinstance(draw, _PairTableDraw):
            if weights is None:
                return _PeakEWMAPairTablePicker(snapshot, draw, decay, default)
            return _WeightedPeakEWMAPairTablePicker(snapshot, draw, decay, default, weights)
        if weights is None:
            return _PeakEWMATwoDrawPicker(snapshot, draw, decay, default)
        return _WeightedPeakEWMATwoDrawPicker(snapshot, draw, decay, default, weights)

    def __repr__(self) -> str:
        args = []
        if self._decay != 10.0:
            args.append(f"decay={self._decay}")
        if self._default != 0.030:
            args.append(f"default_latency={self._default}")
        if self._failure_latency != 1.0:
            args.append(f"failure_latency={self._failure_latency}")
        return f"PeakEWMAStrategy({', '.join(args)})"
