"""Weighted random (alias method) and smooth weighted round-robin (NGINX)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import (
    Endpoint,
    LoadBalancer,
    Snapshot,
    WeightedRandomStrategy,
    WeightedRoundRobinStrategy,
)
from loadbalancer.strategies.weighted import CUMULATIVE_ABOVE


def weighted(
    strategy: WeightedRandomStrategy | WeightedRoundRobinStrategy, **weights: float
) -> LoadBalancer:
    lb = LoadBalancer(strategy=strategy, max_servers=100)
    lb.replace(weights)
    return lb


# -- weighted random -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 5, "b": 1, "c": 1},
        {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5},
        {"a": 0.1, "b": 0.3},
        {"a": 1000, "b": 1},
        {f"s{i}": i + 1 for i in range(17)},
        {"a": 1.0001, "b": 1, "c": 3.3333},  # no small integer form: the alias table
        {"a": 10**6, "b": 1},  # a total too large for a table: the alias table
    ],
)
def test_weighted_random_shares_are_proportional(weights: dict[str, float]) -> None:
    lb = weighted(WeightedRandomStrategy(rng=random.Random(3)), **weights)
    draws = 200_000
    counts = Counter(lb.get() for _ in range(draws))
    total = sum(weights.values())
    chi_square = sum(
        (counts[s] - draws * w / total) ** 2 / (draws * w / total) for s, w in weights.items()
    )
    # The 99.9th percentile of chi-square with 16 degrees of freedom is 39.3.
    assert chi_square < 40


@pytest.mark.parametrize(
    ("weights", "picker"),
    [
        ({"a": 5, "b": 1, "c": 1}, "TablePicker"),
        ({"a": 1.0001, "b": 1}, "_WeightedRandomPicker"),
    ],
)
def test_weighted_random_uses_a_table_only_for_small_integer_weights(
    weights: dict[str, float], picker: str
) -> None:
    lb = weighted(WeightedRandomStrategy(rng=random.Random(3)), **weights)
    assert type(lb.picker).__name__ == picker


def test_weighted_random_single_server() -> None:
    lb = weighted(WeightedRandomStrategy(rng=random.Random(3)), only=2.5)
    assert {lb.get() for _ in range(100)} == {"only"}


def test_weighted_random_follows_set_weight() -> None:
    lb = weighted(WeightedRandomStrategy(rng=random.Random(3)), a=1, b=1)
    lb.set_weight("a", 99)
    counts = Counter(lb.get() for _ in range(10_000))
    assert 0.98 < counts["a"] / 10_000 < 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1000), min_size=1, max_size=40))
def test_alias_table_reproduces_the_weights_exactly(weights: list[float]) -> None:
    from loadbalancer.strategies.weighted import _alias_table

    columns = 1 << max(len(weights) - 1, 1).bit_length()
    keep, alias = _alias_table(weights, columns)
    share = [0.0] * columns
    for column in range(columns):
        share[column] += keep[column] / columns
        share[alias[column]] += (1 - keep[column]) / columns
    total = sum(weights)
    for i, w in enumerate(weights):
        assert share[i] == pytest.approx(w / total, abs=1e-9)
    assert sum(share[len(weights) :]) == pytest.approx(0, abs=1e-9)


# -- smooth weighted round-robin ---------------------------------------------------------------


def test_smooth_wrr_matches_nginx() -> None:
    lb = weighted(WeightedRoundRobinStrategy(), a=5, b=1, c=1)
    assert "".join(lb.get() for _ in range(14)) == "aabacaa" * 2


def test_smooth_wrr_equal_weights_is_round_robin() -> None:
    lb = weighted(WeightedRoundRobinStrategy(), a=2, b=2, c=2)
    assert [lb.get() for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_smooth_wrr_reduces_weights_by_their_gcd_and_handles_fractions() -> None:
    lb = weighted(WeightedRoundRobinStrategy(), a=10, b=20)
    assert [lb.get() for _ in range(3)] == ["b", "a", "b"]
    lb = weighted(WeightedRoundRobinStrategy(), a=1.5, b=0.5)
    assert [lb.get() for _ in range(4)] == ["a", "a", "b", "a"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_smooth_wrr_cycle_is_exact_and_has_no_bursts(weights: list[int]) -> None:
    servers = {f"s{i}": w for i, w in enumerate(weights)}
    lb = weighted(WeightedRoundRobinStrategy(), **servers)
    cycle = sum(weights)
    picks = [lb.get() for _ in range(cycle)]
    assert Counter(picks) == Counter(servers)
    # No bursts: at no point in the cycle is a server a whole pick ahead of its fair share.
    total = sum(weights)
    seen: Counter[str] = Counter()
    for turn, server in enumerate(picks, start=1):
        seen[server] += 1
        assert seen[server] - turn * servers[server] / total < 1


def test_smooth_wrr_memory_is_bounded_for_huge_weights() -> None:
    lb = weighted(WeightedRoundRobinStrategy(max_cycle=1000), a=10**6, b=3 * 10**5 + 7)
    picker: Any = lb.picker  # white-box: the smooth picker's cycle
    assert len(picker.cycle) == 1000
    counts = Counter(lb.get() for _ in range(1000))
    assert counts["a"] == pytest.approx(1000 * 10 / 13, abs=2)


def test_smooth_wrr_continues_at_the_same_fraction_after_a_change() -> None:
    # Rebuilding after every pick must not restart the cycle, which would starve b and c.
    lb = weighted(WeightedRoundRobinStrategy(), a=5, b=1, c=1)
    picks = []
    for i in range(70):
        picks.append(lb.get())
        lb.set_weight("c", 1 if i % 2 else 1.0)  # same weights, new picker every time
    assert Counter(picks) == {"a": 50, "b": 10, "c": 10}


def test_smooth_wrr_is_exact_under_threads() -> None:
    lb = weighted(WeightedRoundRobinStrategy(), a=5, b=1, c=1)
    threads, cycles = 8, 300
    start = threading.Barrier(threads)
    counts: list[Counter[str]] = []

    def worker() -> None:
        start.wait()
        counts.append(Counter(lb.get() for _ in range(7 * cycles)))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert sum(counts, Counter()) == {
        "a": 5 * cycles * threads,
        "b": cycles * threads,
        "c": cycles * threads,
    }


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_smooth_wrr_rejects_a_bad_max_cycle(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_cycle"):
        WeightedRoundRobinStrategy(max_cycle=value)  # type: ignore[arg-type]


def test_reprs() -> None:
    assert repr(WeightedRoundRobinStrategy()) == "WeightedRoundRobinStrategy()"
    assert (
        repr(WeightedRoundRobinStrategy(max_cycle=10)) == "WeightedRoundRobinStrategy(max_cycle=10)"
    )
    assert repr(WeightedRandomStrategy()) == "WeightedRandomStrategy()"


def nginx_smooth_cycle(weights: list[int]) -> list[int]:
    """NGINX's loop, transcribed: the reference the fast cycle must equal."""
    total = sum(weights)
    current = [0] * len(weights)
    picks = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = current.index(max(current))
        current[best] -= total
        picks.append(best)
    return picks


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=12))
def test_smooth_wrr_cycle_is_nginxs_exactly(weights: list[int]) -> None:
    from loadbalancer.strategies.weighted import _smooth_cycle

    servers = [str(i) for i in range(len(weights))]
    assert [int(s) for s in _smooth_cycle(servers, weights)] == nginx_smooth_cycle(weights)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=60)
    | st.lists(st.sampled_from([1, 2, 3, 7, 8, 50]), min_size=1, max_size=40)
    | st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=30)
)
def test_smooth_wrr_cycle_is_nginxs_with_many_equal_weights(weights: list[int]) -> None:
    # Long runs of one weight class, and heavier classes catching up mid-run, ties included.
    from loadbalancer.strategies.weighted import _smooth_cycle

    servers = [str(i) for i in range(len(weights))]
    assert [int(s) for s in _smooth_cycle(servers, weights)] == nginx_smooth_cycle(weights)


def test_smooth_wrr_apportioned_cycle_is_nginxs() -> None:
    from loadbalancer.strategies.weighted import _apportion, _smooth_cycle

    rng = random.Random(5)
    for size in (3, 10, 40):
        shares = _apportion([rng.uniform(0.5, 4) for _ in range(size)], 1000)
        servers = [str(i) for i in range(size)]
        assert [int(s) for s in _smooth_cycle(servers, shares)] == nginx_smooth_cycle(shares)


# -- the old, straightforward forms: references the faster ones must equal ---------------------


def old_small_integer_weights(weights: list[float]) -> list[int] | None:
    import math
    from fractions import Fraction

    fractions = [Fraction(w).limit_denominator(1000) for w in weights]
    if any(abs(f - w) > 1e-9 * w for f, w in zip(fractions, weights, strict=True)):
        return None
    scale = math.lcm(*(f.denominator for f in fractions))
    integers = [int(f * scale) for f in fractions]
    divisor = math.gcd(*integers)
    return [i // divisor for i in integers]


def old_apportion(weights: list[float], turns: int) -> list[int]:
    import math

    total = math.fsum(weights)
    spare = turns - len(weights)
    quotas = [w / total * spare for w in weights]
    shares = [1 + math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: quotas[i] - math.floor(quotas[i]))
    for i in by_remainder[len(weights) - (turns - sum(shares)) :]:
        shares[i] += 1
    return shares


def old_run_ends(cycle: tuple[str, ...]) -> list[int]:
    from itertools import chain, compress, islice, repeat
    from operator import ne, sub

    size = len(cycle)
    starts = list(compress(range(1, size), map(ne, islice(cycle, 1, None), cycle)))
    if not starts:
        return [0] * size
    ends = [*starts, size]
    wrap = starts[0] if cycle[-1] == cycle[0] else 0
    lengths = map(sub, ends, [0, *starts])
    return list(chain.from_iterable(map(repeat, [*starts, wrap], lengths)))


_weight_values = (
    st.integers(min_value=1, max_value=1_000_000)
    | st.floats(min_value=1e-9, max_value=1_000_000)
    | st.builds(
        lambda n, d: n / d,
        st.integers(min_value=1, max_value=5000),
        st.integers(min_value=1, max_value=1200),
    )
    | st.sampled_from([0.1, 0.5, 1.0, 1.5, 2, 2.0, 3, 1 / 3, 1e-9, 1_000_000, 999_999.5])
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_weight_values, min_size=1, max_size=30).flatmap(lambda ws: st.permutations(ws * 2))
)
def test_small_integer_weights_equal_the_old_way(weights: list[float]) -> None:
    from loadbalancer.strategies.weighted import _small_integer_weights

    assert _small_integer_weights(weights) == old_small_integer_weights(weights)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_weight_values, min_size=1, max_size=40),
    st.integers(min_value=0, max_value=5000),
)
def test_apportion_equals_the_old_way(weights: list[float], extra: int) -> None:
    from loadbalancer.strategies.weighted import _apportion

    turns = max(8 * len(weights), len(weights) + extra)
    assert _apportion(weights, turns) == old_apportion(weights, turns)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=30))
def test_run_ends_equal_the_old_way(cycle: list[str]) -> None:
    from loadbalancer.strategies.weighted import _run_ends

    assert _run_ends(tuple(cycle)) == old_run_ends(tuple(cycle))


@pytest.mark.parametrize("kind", ["1-4", "floats", "fractions"])
@pytest.mark.parametrize("size", [1, 10, 300])
def test_rebuilt_pickers_pick_as_before(kind: str, size: int) -> None:
    # The same tables, so the same picks for the same seed, and the same smooth cycle.
    from loadbalancer.strategies.weighted import _apportion, _small_integer_weights

    rng = random.Random(size)
    weights: list[float]
    if kind == "1-4":
        weights = [1 + i % 4 for i in range(size)]
    elif kind == "floats":
        weights = [rng.uniform(0.5, 4) for _ in range(size)]
    else:
        weights = [rng.choice([0.1, 0.25, 1.5, 2]) for _ in range(size)]
    integers = _small_integer_weights(weights)
    assert integers == old_small_integer_weights(weights)
    assert _apportion(weights, 8 * size + 5) == old_apportion(weights, 8 * size + 5)
    servers = {f"s{i}": w for i, w in enumerate(weights)}
    lb = LoadBalancer(strategy=WeightedRoundRobinStrategy(), max_servers=size)
    lb.replace(servers)
    picker: Any = lb.picker
    shares = integers if integers is not None and sum(integers) <= 4096 else None
    if shares is None:
        shares = _apportion(weights, max(4096, 8 * size))
    expected = [f"s{i}" for i in nginx_smooth_cycle(shares)]
    assert list(picker.cycle) == expected


def old_alias_table(weights: list[float], columns: int) -> tuple[list[float], list[int]]:
    import math

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
    return keep, alias


@settings(max_examples=500, deadline=None)
@given(st.lists(_weight_values, min_size=1, max_size=70), st.integers(min_value=0, max_value=2))
def test_alias_table_equals_the_old_way(weights: list[float], spare: int) -> None:
    from loadbalancer.strategies.weighted import _alias_table

    columns = 1 << (max(len(weights) - 1, 1).bit_length() + spare)
    assert _alias_table(weights, columns) == old_alias_table(weights, columns)


class _Draws(random.Random):
    """A Random whose random() returns the values given to ``then`` in turn."""

    def then(self, values: list[float]) -> _Draws:
        # Not through the constructor: on 3.10, Random.__new__ seeds with its arguments.
        self._values = iter(values)
        return self

    def random(self) -> float:
        return next(self._values)


def snapshot_of(weights: dict[str, float]) -> Snapshot:
    return Snapshot.of(tuple(Endpoint(s, w) for s, w in weights.items()), lambda: 0.0)


def _large_pool(size: int) -> dict[str, float]:
    return {f"s{i}": 1 + i % 4 for i in range(size)}  # weights 1-4: no table at this size


def test_large_pools_draw_from_cumulative_weights_and_small_ones_do_not() -> None:
    above = WeightedRandomStrategy().build(snapshot_of(_large_pool(CUMULATIVE_ABOVE + 1)))
    at = WeightedRandomStrategy().build(snapshot_of(_large_pool(CUMULATIVE_ABOVE)))
    assert type(above).__name__ == "_CumulativePicker"
    assert type(at).__name__ != "_CumulativePicker"


def test_a_cumulative_draw_lands_on_the_server_whose_interval_holds_it() -> None:
    weights = _large_pool(CUMULATIVE_ABOVE + 1)
    total = sum(weights.values())
    servers = list(weights)
    # 0 is the first server's; exactly the first server's weight (1) starts the second's
    # interval; a draw that rounds up to the total still lands on the last server.
    draws = [0.0, 1 / total, 3 / total, 1.0 - 2**-53, 1.0]
    picker = WeightedRandomStrategy(_Draws(0).then(draws)).build(snapshot_of(weights))
    picked = [picker.pick() for _ in draws]
    assert picked == [servers[0], servers[1], servers[2], servers[-1], servers[-1]]


def test_cumulative_draws_follow_the_weights_and_retries_skip_the_tried() -> None:
    weights = _large_pool(3000)
    picker = WeightedRandomStrategy(random.Random(7)).build(snapshot_of(weights))
    picks = 100_000
    by_weight = Counter(weights[picker.pick()] for _ in range(picks))
    total = sum(weights.values())
    for weight in (1, 2, 3, 4):
        share = weight * sum(1 for w in weights.values() if w == weight) / total
        assert by_weight[weight] == pytest.approx(picks * share, rel=0.03)
    tried = set(list(weights)[:2990])  # all but ten tried: the retry draws among those ten
    assert all(picker.pick_excluding(None, tried) not in tried for _ in range(200))
