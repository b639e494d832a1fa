"""Weighted random (alias method) and smooth weighted round-robin (NGINX)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import LoadBalancer, WeightedRandomStrategy, WeightedRoundRobinStrategy


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
