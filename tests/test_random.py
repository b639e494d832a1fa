"""Random: uniform, reproducible with a seeded rng, and strict about its rng."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loadbalancer import LoadBalancer, RandomStrategy


def rand(seed: int, *servers: str) -> LoadBalancer:
    lb = LoadBalancer(strategy=RandomStrategy(rng=random.Random(seed)), max_servers=100)
    for server in servers:
        lb.register(server)
    return lb


def chi_square(counts: Counter[str], categories: int, draws: int) -> float:
    expected = draws / categories
    return sum((counts[c] - expected) ** 2 / expected for c in counts)


@pytest.mark.parametrize("size", [2, 3, 7, 10, 33])
def test_picks_are_uniform(size: int) -> None:
    servers = [f"s{i}" for i in range(size)]
    lb = rand(99, *servers)
    draws = 20_000 * size
    counts = Counter(lb.get() for _ in range(draws))
    assert set(counts) == set(servers)
    # 99.9th percentile of chi-square with up to 32 degrees of freedom is below 63.
    assert chi_square(counts, size, draws) < 63


def test_same_seed_same_picks() -> None:
    first = rand(5, "a", "b", "c", "d")
    second = rand(5, "a", "b", "c", "d")
    assert [first.get() for _ in range(100)] == [second.get() for _ in range(100)]


def test_different_seeds_differ() -> None:
    first = rand(5, "a", "b", "c", "d")
    second = rand(6, "a", "b", "c", "d")
    assert [first.get() for _ in range(100)] != [second.get() for _ in range(100)]


@pytest.mark.parametrize("rng", [42, "seed", random.random])
def test_rng_must_be_a_random_instance(rng: object) -> None:
    with pytest.raises(TypeError, match="rng"):
        RandomStrategy(rng=rng)  # type: ignore[arg-type]


def test_system_random_is_accepted() -> None:
    lb = LoadBalancer(strategy=RandomStrategy(rng=random.SystemRandom()))
    lb.register("a")
    lb.register("b")
    assert {lb.get() for _ in range(100)} == {"a", "b"}
