"""Rendezvous: highest score wins, minimal disruption, and weighted shares (logarithmic method)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import LoadBalancer
from loadbalancer.strategies.hashing import RendezvousStrategy

KEYS = [f"key-{i}" for i in range(3000)]


def hrw(servers: list[str] | Mapping[str, float]) -> LoadBalancer:
    lb = LoadBalancer(strategy=RendezvousStrategy(), max_servers=100)
    lb.replace(servers)
    return lb


def placement(lb: LoadBalancer, keys: list[str] = KEYS) -> list[str]:
    return [lb.get(key) for key in keys]


def expected_winner(key: str, weights: Mapping[str, float]) -> str:
    """The definition, spelled out: XXH64 of the key seeded with XXH64 of the server name."""

    def score(server: str) -> float:
        h = xxhash.xxh64_intdigest(key.encode(), xxhash.xxh64_intdigest(server.encode()))
        if len(set(weights.values())) == 1:
            return h
        return -weights[server] / math.log(((h >> 11) | 1) / 2**53)

    return max(sorted(weights), key=score)


@pytest.mark.parametrize("weighted", [False, True])
def test_picks_the_highest_score(weighted: bool) -> None:
    weights = {f"node-{i}": (1 + i % 4 if weighted else 1) for i in range(9)}
    lb = hrw(weights)
    assert placement(lb) == [expected_winner(key, weights) for key in KEYS]


names = st.lists(
    st.text("abcdefgh0123456789.:-", min_size=1, max_size=12), min_size=2, max_size=12, unique=True
)
weight_lists = st.lists(st.sampled_from([0.25, 1, 2, 5]), min_size=12, max_size=12)


@settings(max_examples=20, deadline=None)
@given(servers=names, weights=weight_lists, data=st.data())
def test_removing_a_server_moves_only_its_keys(
    servers: list[str], weights: list[float], data: st.DataObject
) -> None:
    pool = dict(zip(servers, weights, strict=False))
    before = placement(hrw(pool), KEYS[:1000])
    gone = data.draw(st.sampled_from(servers))
    after = placement(hrw({s: w for s, w in pool.items() if s != gone}), KEYS[:1000])
    assert all(old == new for old, new in zip(before, after, strict=True) if old != gone)
    assert gone not in after


@settings(max_examples=20, deadline=None)
@given(servers=names)
def test_adding_a_server_moves_about_its_share_all_to_it(servers: list[str]) -> None:
    before = placement(hrw(servers))
    after = placement(hrw([*servers, "newcomer"]))
    moved = [new for old, new in zip(before, after, strict=True) if old != new]
    assert set(moved) <= {"newcomer"}
    expected = len(KEYS) / (len(servers) + 1)
    # Only sampling noise: at least 230 expected keys, so +-35% is over 5 sigma.
    assert 0.65 * expected <= len(moved) <= 1.35 * expected


def test_unweighted_shares_are_even() -> None:
    lb = hrw([f"n{i}" for i in range(10)])
    rng = random.Random(5)
    counts = Counter(lb.get(rng.randbytes(10)) for _ in range(50_000))
    assert all(abs(c - 5000) < 300 for c in counts.values())  # 4.5 sigma


def test_weighted_shares_are_proportional() -> None:
    weights = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 0.5}
    lb = hrw(weights)
    rng = random.Random(8)
    draws = 60_000
    counts = Counter(lb.get(rng.randbytes(10)) for _ in range(draws))
    total = sum(weights.values())
    for server, weight in weights.items():
        assert counts[server] == pytest.approx(draws * weight / total, rel=0.06)


def test_equal_weights_map_like_no_weights() -> None:
    assert placement(hrw(dict.fromkeys("abcde", 3.0))) == placement(hrw(list("abcde")))


def test_changing_one_weight_moves_keys_only_to_or_from_that_server() -> None:
    pool = {f"n{i}": 1.0 + i for i in range(6)}
    before = placement(hrw(pool))
    after = placement(hrw({**pool, "n2": 9.0}))
    assert all(new == "n2" for old, new in zip(before, after, strict=True) if old != new)
