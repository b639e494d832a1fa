"""Load-aware strategies: least connections, power of two choices, and peak EWMA latency."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence, Set
from math import exp
from operator import attrgetter
from typing import final

from .._snapshot import Endpoint, Snapshot
from .._validation import check_key, check_number, check_positive_int
from ._base import Key, Picker, Strategy
from ._draw import draw_width, repeated_table, resolve_rng, table_width
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


def _pair_width(space: int) -> tuple[int, int]:
    """Bits and rejection limit for drawing one of ``space`` ordered pairs.

    30 bits (getrandbits' cheapest path, one-digit ints after it) while at most one draw in
    eight is rejected, up to 11,585 servers; ``draw_width`` beyond (and below 2,049 servers,
    where both agree).
    """
    if space <= 1 << 27:
        return 30, (1 << 30) // space * space
    return draw_width(space)


class _PairDraw:
    """Draws two distinct endpoints uniformly, without replacement: the P2C candidates.

    For pools of up to 64 servers every ordered pair sits in a one-draw table (see
    ``repeated_table``); larger pools draw one number encoding an ordered pair. The pickers
    inline ``pair`` in their ``pick`` (one Python frame per pick), from ``table`` or from
    ``state``; it stays here for retries.
    """

    __slots__ = (
        "_bits",
        "_limit",
        "_rng",
        "_width",
        "endpoints",
        "size",
        "space",
        "state",
        "table",
    )

    def __init__(self, endpoints: tuple[Endpoint, ...], rng: random.Random) -> None:
        self.endpoints = endpoints
        self.size = size = len(endpoints)
        self._rng = rng
        self._bits = rng.getrandbits
        self.space = max(size * (size - 1), 1)
        width = table_width(self.space)
        self.table: tuple[tuple[Endpoint, Endpoint], ...] | None = None
        if width is not None and size > 1:
            ordered = [(a, b) for a in endpoints for b in endpoints if a is not b]
            self.table = repeated_table(ordered, [1] * len(ordered), width)
            self._width, self._limit = width, len(self.table)
        else:
            self._width, self._limit = _pair_width(self.space)
        self.state = (self._bits, self._width, self._limit, self.space, size, endpoints)
        """What ``pair`` reads, in one tuple: one attribute read for an inlined draw."""

    def pair(self) -> tuple[Endpoint, Endpoint]:
        """Two distinct endpoints, every ordered pair equally likely."""
        draw = self._bits(self._width)
        while draw >= self._limit:
            draw = self._bits(self._width)
        if self.table is not None:
            return self.table[draw]
        draw %= self.space
        first, second = draw % self.size, draw // self.size
        # second ranges over size - 1 values: skipping first makes it distinct from it.
        return self.endpoints[first], self.endpoints[second + (second >= first)]

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


def _envoy_score(endpoint: Endpoint, weight: float, bias: float) -> float:
    """Envoy's least_request with unequal weights: weight / (load + 1) ** bias."""
    load = endpoint.load + 1
    return weight / load if bias == 1.0 else weight / load**bias


@final
class _TwoChoicesPicker(Picker):
    __slots__ = (
        "_bias",
        "_choices",
        "_draw",
        "_pair",
        "_table",
        "_weights",
    )

    def __init__(self, snapshot: Snapshot, choices: int, bias: float, rng: random.Random) -> None:
        self._weights = _weights_if_unequal(snapshot)
        self._bias = bias
        self._choices = min(choices, len(snapshot.endpoints))
        self._draw = draw = _PairDraw(snapshot.endpoints, rng)
        # The pair draw is inlined in pick for two choices: one Python call per pick.
        self._pair = draw.state if self._choices == 2 else None
        self._table = draw.table

    def pick(self, key: Key | None = None) -> str:
        """Return the less loaded of two servers sampled without replacement.

        O(1): one draw (two over a rejection, rarely), two loads compared; no lock.
        """
        if key is not None:
            check_key(key)
        pair = self._pair
        if pair is None:
            return self._pick_general()
        # _PairDraw.pair, inlined: the same draws give the same pairs.
        bits, width, limit, space, size, pool = pair
        draw = bits(width)
        while draw >= limit:
            draw = bits(width)
        table = self._table
        if table is not None:
            first, second = table[draw]
        else:
            draw %= space
            at = draw % size
            other = draw // size
            first, second = pool[at], pool[other + (other >= at)]
        weights = self._weights
        if weights is None:
            return (second if second.load < first.load else first).server
        bias = self._bias
        if bias == 1.0:  # weight / (load + 1), compared without dividing
            if weights[second] * (first.load + 1) > weights[first] * (second.load + 1):
                return second.server
            return first.server
        # _envoy_score, inlined; the first drawn wins a tie, as max() would give it.
        if weights[second] / (second.load + 1) ** bias > weights[first] / (first.load + 1) ** bias:
            return second.server
        return first.server

    def _pick_general(self) -> str:
        """More than two choices, or a single server."""
        if self._choices == 1:
            return self._draw.endpoints[0].server
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
        """Return a picker comparing sampled servers' loads."""
        return _TwoChoicesPicker(snapshot, self._choices, self._bias, self._rng)

    def __repr__(self) -> str:
        args = [f"choices={self._choices}"] if self._choices != 2 else []
        if self._bias != 1.0:
            args.append(f"active_request_bias={self._bias}")
        return f"PowerOfTwoChoicesStrategy({', '.join(args)})"


@final
class _PeakEWMAPicker(Picker):
    __slots__ = (
        "_clock",
        "_decay",
        "_default",
        "_draw",
        "_pair",
        "_single",
        "_table",
        "_weights",
    )

    def __init__(
        self, snapshot: Snapshot, decay: float, default: float, rng: random.Random
    ) -> None:
        self._weights = _weights_if_unequal(snapshot)
        self._single = snapshot.servers[0] if len(snapshot.servers) == 1 else None
        self._clock: Callable[[], float] = snapshot.clock
        self._decay = decay
        self._default = default
        self._draw = draw = _PairDraw(snapshot.endpoints, rng)
        # The pair draw is inlined in pick: one Python call per pick.
        self._pair = draw.state
        self._table = draw.table

    def pick(self, key: Key | None = None) -> str:
        """Return the cheaper of two servers sampled without replacement.

        Cost is the expected latency of one more request: the peak-EWMA latency (the default
        before any sample), decayed by the idle time since its last sample, times the load
        plus one. O(1), no lock.
        """
        if key is not None:
            check_key(key)
        if self._single is not None:
            return self._single
        # _PairDraw.pair and _cheaper, inlined: a pick stays one Python call, and the same
        # draws give the same pairs.
        bits, width, limit, space, size, pool = self._pair
        draw = bits(width)
        while draw >= limit:
            draw = bits(width)
        table = self._table
        if table is not None:
            first, second = table[draw]
        else:
            draw %= space
            at = draw % size
            other = draw // size
            first, second = pool[at], pool[other + (other >= at)]
        if first.latency is None and second.latency is None:
            # Neither measured yet: their costs differ only by age, so compare loads alone.
            first_cost: float = first.load + 1
            second_cost: float = second.load + 1
        else:
            # _cost, inlined for both.
            now = self._clock()
            decay, default = self._decay, self._default
            age = first.latency_at - now
            latency = default if first.latency is None else first.latency
            first_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (first.load + 1)
            age = second.latency_at - now
            latency = default if second.latency is None else second.latency
            second_cost = latency * exp((0.0 if age > 0.0 else age) / decay) * (second.load + 1)
        if self._weights is not None:
            first_cost /= self._weights[first]
            second_cost /= self._weights[second]
        return (second if second_cost < first_cost else first).server

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """The cheaper of two servers sampled without replacement among those not excluded.

        One server remaining: that one; none: a plain pick.
        """
        if key is not None:
            check_key(key)
        candidates = self._draw.excluding(2 if self._single is None else 1, exclude)
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
        """Return a picker comparing two sampled servers' latency cost."""
        return _PeakEWMAPicker(snapshot, self._decay, self._default, self._rng)

    def __repr__(self) -> str:
        args = []
        if self._decay != 10.0:
            args.append(f"decay={self._decay}")
        if self._default != 0.030:
            args.append(f"default_latency={self._default}")
        if self._failure_latency != 1.0:
            args.append(f"failure_latency={self._failure_latency}")
        return f"PeakEWMAStrategy({', '.join(args)})"
