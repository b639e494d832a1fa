"""Picks for retries (``Picker.pick_excluding``): among the servers not tried, in each
strategy's own terms, and the plain pick when every server has been tried."""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from collections.abc import Callable, Sequence, Set

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadbalancer import (
    Endpoint,
    Key,
    LeastConnectionsStrategy,
    MaglevStrategy,
    PeakEWMAStrategy,
    Picker,
    PowerOfTwoChoicesStrategy,
    RandomStrategy,
    RendezvousStrategy,
    RingHashStrategy,
    RoundRobinStrategy,
    Snapshot,
    Strategy,
    WeightedRandomStrategy,
    WeightedRoundRobinStrategy,
)
from loadbalancer.strategies import round_robin
from loadbalancer.strategies.hashing._bounded import BoundedPicker
from loadbalancer.strategies.hashing._keys import md5
from loadbalancer.strategies.weighted import _run_ends

from .conformance import STRATEGY_FACTORIES


def build(
    strategy: Strategy,
    servers: Sequence[str],
    weights: Sequence[float] | None = None,
    clock: Callable[[], float] = lambda: 0.0,
) -> tuple[Picker, dict[str, Endpoint]]:
    """A picker over fresh endpoints, and the endpoints by server."""
    endpoints = tuple(
        Endpoint(server, 1 if weights is None else weights[i]) for i, server in enumerate(servers)
    )
    picker = strategy.build(Snapshot.of(endpoints, clock))
    return picker, {endpoint.server: endpoint for endpoint in endpoints}


def key_bytes(key: Key) -> bytes:
    return key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key


def chi_square(counts: Counter[str], expected: dict[str, float]) -> float:
    draws = sum(counts.values())
    total = sum(expected.values())
    return sum(
        (counts[s] - draws * w / total) ** 2 / (draws * w / total) for s, w in expected.items()
    )


# -- every strategy: the contract -------------------------------------------------------------

names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=5)
keys = st.one_of(st.none(), st.text(max_size=12), st.binary(max_size=12))


@st.composite
def pools(draw: st.DrawFn) -> tuple[list[str], list[float], frozenset[str], list[int]]:
    """Servers, their weights, a non-empty exclude (with names outside the pool), loads."""
    servers = draw(st.lists(names, min_size=1, max_size=7, unique=True))
    weights = draw(
        st.lists(
            st.one_of(st.integers(1, 5), st.floats(0.1, 10)),
            min_size=len(servers),
            max_size=len(servers),
        )
    )
    tried = draw(st.sets(st.sampled_from(servers)))
    foreign = draw(st.sets(st.sampled_from(["not-in-pool", "gone:80"]), max_size=2))
    exclude = frozenset(tried | foreign)
    if not exclude:
        exclude = frozenset({"not-in-pool"})
    loads = draw(st.lists(st.integers(0, 3), min_size=len(servers), max_size=len(servers)))
    return servers, weights, exclude, loads


@pytest.mark.parametrize("name", sorted(STRATEGY_FACTORIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=pools(), key=keys)
def test_a_retry_avoids_the_servers_tried_while_another_remains(
    name: str,
    pool: tuple[list[str], list[float], frozenset[str], list[int]],
    key: Key | None,
) -> None:
    servers, weights, exclude, loads = pool
    picker, endpoints = build(STRATEGY_FACTORIES[name](), servers, weights)
    for server, load in zip(servers, loads, strict=True):
        for _ in range(load):
            endpoints[server].begin()
    remaining = set(servers) - exclude
    for _ in range(3):  # rotations move on: every turn must keep the contract
        chosen = picker.pick_excluding(key, exclude)
        assert chosen in endpoints
        if remaining:
            assert chosen not in exclude
    before = {server: endpoint.in_flight for server, endpoint in endpoints.items()}
    leased = picker.acquire(key, endpoints, exclude)
    assert leased.server in endpoints
    if remaining:
        assert leased.server not in exclude
    after = {server: endpoint.in_flight for server, endpoint in endpoints.items()}
    assert after == {**before, leased.server: before[leased.server] + 1}


@pytest.mark.parametrize("name", sorted(STRATEGY_FACTORIES))
def test_with_every_server_excluded_a_retry_is_a_plain_pick(name: str) -> None:
    servers = ["a", "b", "c"]
    picker, endpoints = build(STRATEGY_FACTORIES[name](), servers)
    for key in [None, "k1", b"k2"]:
        assert picker.pick_excluding(key, frozenset({"a", "b", "c", "zz"})) in servers
        assert picker.acquire(key, endpoints, frozenset(servers)).server in servers
    # For a key, the plain pick is the key's own server.
    twin, _ = build(STRATEGY_FACTORIES[name](), servers)
    if isinstance(picker, BoundedPicker):
        assert picker.pick_excluding("k1", frozenset(servers)) == twin.pick("k1")


@pytest.mark.parametrize("name", sorted(STRATEGY_FACTORIES))
def test_excluding_only_servers_outside_the_pool_is_a_plain_pick(name: str) -> None:
    servers = ["a", "b", "c"]
    picker, _ = build(STRATEGY_FACTORIES[name](), servers)
    twin, _ = build(STRATEGY_FACTORIES[name](), servers)
    outside = frozenset({"gone", "elsewhere"})
    # Same seed, same state: the retry draws as the plain pick does (rejection accepts at once).
    assert [picker.pick_excluding("k", outside) for _ in range(20)] == [
        twin.pick("k") for _ in range(20)
    ]


@pytest.mark.parametrize("key", ["k", b"k", None])
@pytest.mark.parametrize("name", sorted(STRATEGY_FACTORIES))
def test_keys_are_type_checked_on_the_retry_path(name: str, key: Key | None) -> None:
    picker, _ = build(STRATEGY_FACTORIES[name](), ["a", "b"])
    assert picker.pick_excluding(key, frozenset({"a"})) == "b"
    with pytest.raises(TypeError, match="key"):
        picker.pick_excluding(42, frozenset({"a"}))  # type: ignore[arg-type]


# -- hashing: the next server in the key's own order -----------------------------------------

HASHING: dict[str, Callable[[], Strategy]] = {
    "ring": RingHashStrategy,
    "ketama": lambda: RingHashStrategy(hash="ketama"),
    "maglev": lambda: MaglevStrategy(table_size=1009),
    "rendezvous": RendezvousStrategy,
    "ring_bounded": lambda: RingHashStrategy(balance_factor=1.25),
    "maglev_bounded": lambda: MaglevStrategy(table_size=1009, balance_factor=1.25),
}

hash_keys = st.one_of(st.text(max_size=16), st.binary(max_size=16))


@st.composite
def hashed_pools(draw: st.DrawFn) -> tuple[list[str], list[int], frozenset[str]]:
    servers = draw(st.lists(names, min_size=1, max_size=7, unique=True))
    weights = draw(st.lists(st.integers(1, 4), min_size=len(servers), max_size=len(servers)))
    exclude = draw(st.sets(st.sampled_from([*servers, "not-in-pool"]), min_size=1))
    return servers, weights, frozenset(exclude)


@pytest.mark.parametrize("name", sorted(HASHING))
@settings(max_examples=60, deadline=None)
@given(pool=hashed_pools(), key=hash_keys)
def test_a_retried_key_goes_to_the_first_server_of_its_order_not_tried(
    name: str, pool: tuple[list[str], list[int], frozenset[str]], key: Key
) -> None:
    servers, weights, exclude = pool
    picker, _ = build(HASHING[name](), servers, weights)
    # Another process, another registration order: the same answer.
    twin, _ = build(HASHING[name](), servers[::-1], weights[::-1])
    chosen = picker.pick_excluding(key, exclude)
    assert twin.pick_excluding(key, exclude) == chosen
    assert isinstance(picker, BoundedPicker)
    order = list(picker.candidates(key))
    remaining = [server for server in order if server not in exclude]
    assert chosen == (remaining[0] if remaining else picker.pick(key))


def ring_order(picker: Picker, position: int) -> list[str]:
    """Owners clockwise from ``position``, found by a linear scan of the ring."""
    points: list[int] = picker._points  # type: ignore[attr-defined]
    names: tuple[str, ...] = picker._names  # type: ignore[attr-defined]
    owners = [names[slot] for slot in picker._owners[:-1]]  # type: ignore[attr-defined]
    first = next((i for i, point in enumerate(points) if point > position), 0)
    return owners[first:] + owners[:first]


@settings(max_examples=60, deadline=None)
@given(pool=hashed_pools(), key=hash_keys)
def test_ring_retry_is_the_first_owner_clockwise_not_tried(
    pool: tuple[list[str], list[int], frozenset[str]], key: Key
) -> None:
    servers, weights, exclude = pool
    xxh64_ring, _ = build(RingHashStrategy(), servers, weights)
    ketama, _ = build(RingHashStrategy(hash="ketama"), servers, weights)
    data = key_bytes(key)
    positions = {
        xxh64_ring: xxhash.xxh64_intdigest(data),
        ketama: struct.unpack("<I", md5(data).digest()[:4])[0],
    }
    for picker, position in positions.items():
        clockwise = [server for server in ring_order(picker, position) if server not in exclude]
        expected = clockwise[0] if clockwise else picker.pick(key)
        assert picker.pick_excluding(key, exclude) == expected


@settings(max_examples=60, deadline=None)
@given(pool=hashed_pools(), key=hash_keys)
def test_ring_and_rendezvous_retries_are_picks_on_the_pool_without_the_servers_tried(
    pool: tuple[list[str], list[int], frozenset[str]], key: Key
) -> None:
    # Their placement of a key depends only on each server's own name and weight, so skipping
    # the servers tried is the same as removing them.
    servers, weights, exclude = pool
    kept = [(s, w) for s, w in zip(servers, weights, strict=True) if s not in exclude]
    for strategy in [RingHashStrategy, RendezvousStrategy]:
        picker, _ = build(strategy(), servers, weights)
        if kept:
            without, _ = build(strategy(), [s for s, _ in kept], [w for _, w in kept])
            assert picker.pick_excluding(key, exclude) == without.pick(key)
        else:
            assert picker.pick_excluding(key, exclude) == picker.pick(key)


def test_maglev_retry_walks_the_table_from_the_keys_entry() -> None:
    picker, _ = build(MaglevStrategy(table_size=1009), ["a", "b", "c", "d"])
    table: list[str] = picker._table  # type: ignore[attr-defined]
    for i in range(200):
        key = f"user-{i}"
        entry = xxhash.xxh64_intdigest(key.encode()) % len(table)
        along = table[entry:] + table[:entry]
        own = along[0]
        second = next(server for server in along if server != own)
        third = next(server for server in along if server not in {own, second})
        assert picker.pick(key) == own
        assert picker.pick_excluding(key, frozenset({own})) == second
        assert picker.pick_excluding(key, frozenset({own, second})) == third
        assert picker.pick_excluding(key, frozenset({second})) == own


def test_rendezvous_retry_takes_the_next_highest_score() -> None:
    servers = [f"s{i}" for i in range(6)]
    picker, _ = build(RendezvousStrategy(), servers)
    for i in range(200):
        key = f"user-{i}".encode()
        seeds = {s: xxhash.xxh64_intdigest(s.encode()) for s in servers}
        ranked = sorted(servers, key=lambda s: xxhash.xxh64_intdigest(key, seeds[s]), reverse=True)
        assert picker.pick_excluding(key, frozenset(ranked[:1])) == ranked[1]
        assert picker.pick_excluding(key, frozenset(ranked[:3])) == ranked[3]


@pytest.mark.parametrize("name", sorted(HASHING))
def test_retries_without_a_key_spread_over_the_servers_not_tried(name: str) -> None:
    # key=None is a random key: retries spread like first attempts, over the rest.
    servers = [f"10.0.0.{i}:80" for i in range(5)]
    picker, _ = build(HASHING[name](), servers)
    counts = Counter(picker.pick_excluding(None, frozenset(servers[:2])) for _ in range(3000))
    assert set(counts) == set(servers[2:])
    assert min(counts.values()) > 300


def test_a_ring_too_large_for_buckets_retries_in_the_same_order() -> None:
    # Above 2**17 points the pick binary-searches: the retry must agree with that path too.
    picker, _ = build(RingHashStrategy(vnodes=40_000), ["a", "b", "c", "d", "e"])
    assert len(picker._points) > 1 << 17  # type: ignore[attr-defined]
    assert isinstance(picker, BoundedPicker)
    for i in range(300):
        key = f"k{i}"
        own = picker.pick(key)
        order = list(picker.candidates(key))
        assert order[0] == own
        assert picker.pick_excluding(key, frozenset({own})) == order[1]


@pytest.mark.parametrize("factor", [None, 1.25])
def test_ketama_servers_without_a_point_serve_retries_once_all_others_are_tried(
    factor: float | None,
) -> None:
    # floor(40 x 3 x 1 / 201) = 0 hashes: no key maps to c or d, but a retry may go there.
    strategy = RingHashStrategy(hash="ketama", balance_factor=factor)
    picker, endpoints = build(strategy, ["d", "big", "c"], [1, 199, 1])
    assert {picker.pick(f"k{i}") for i in range(100)} == {"big"}
    assert picker.pick_excluding("k", frozenset({"big"})) == "c"  # name order: c before d
    assert picker.pick_excluding("k", frozenset({"big", "c"})) == "d"
    assert picker.pick_excluding("k", frozenset({"big", "c", "d"})) == "big"
    assert picker.acquire("k", endpoints, frozenset({"big"})).server == "c"
    assert picker.acquire("k", endpoints, frozenset({"big", "c", "d"})).server == "big"


# -- bounded loads ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ring_bounded", "maglev_bounded", "rendezvous_bounded"])
def test_bounded_admission_walks_the_keys_order_past_the_servers_tried(name: str) -> None:
    factories: dict[str, Callable[[], Strategy]] = {
        **HASHING,
        "rendezvous_bounded": lambda: RendezvousStrategy(balance_factor=1.25),
    }
    servers = [f"s{i}" for i in range(5)]
    picker, endpoints = build(factories[name](), servers)
    assert isinstance(picker, BoundedPicker)
    order = list(picker.candidates("hot"))
    tried = frozenset(order[:2])
    # Idle: the first server not tried has room.
    assert picker.acquire("hot", endpoints, tried).server == order[2]
    # Fill order[2] to capacity: the next one not tried takes the request instead.
    while True:
        total = sum(e.in_flight for e in endpoints.values())
        capacity = math.ceil(1.25 * (total + 1) / len(servers))
        if endpoints[order[2]].in_flight >= capacity:
            break
        endpoints[order[2]].begin()
    assert picker.acquire("hot", endpoints, tried).server == order[3]
    # Every server tried: admission among all, in the key's order (order[0] has room).
    assert picker.acquire("hot", endpoints, frozenset(servers)).server == order[0]


def test_bounded_retry_with_every_other_server_full_stays_off_the_servers_tried() -> None:
    servers = ["a", "b", "c"]
    picker, endpoints = build(RendezvousStrategy(balance_factor=1.25), servers)
    assert isinstance(picker, BoundedPicker)
    order = list(picker.candidates("hot"))
    for _ in range(10):
        endpoints[order[2]].begin()  # the only server not tried, far over capacity
    leased = picker.acquire("hot", endpoints, frozenset(order[:2]))
    assert leased.server == order[2]
    assert endpoints[order[2]].in_flight == 11


# -- rotations: one turn, then the next server not tried -------------------------------------


@pytest.mark.parametrize("counter", [False, True])
def test_round_robin_retry_takes_one_turn_and_walks_on(
    counter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if counter:  # the free-threaded rotation
        monkeypatch.setattr(round_robin, "_CYCLE_IS_THREAD_SAFE", False)
    picker, _ = build(RoundRobinStrategy(), ["a", "b", "c", "d"])
    # a's turn, a was tried: b. The rotation moved one turn, so b's turn comes next.
    assert picker.pick_excluding(None, frozenset({"a"})) == "b"
    assert picker.pick() == "b"
    assert picker.pick_excluding(None, frozenset({"c", "d"})) == "a"  # c's turn, wrapping
    assert picker.pick() == "d"
    assert picker.pick_excluding(None, frozenset({"a", "b", "c", "d"})) == "a"  # all: the turn
    assert [picker.pick() for _ in range(4)] == ["b", "c", "d", "a"]


def test_each_round_robin_retry_advances_the_rotation_by_one_turn() -> None:
    picker, _ = build(RoundRobinStrategy(), ["a", "b", "c", "d"])
    retries = [picker.pick_excluding(None, frozenset({"a", "b"})) for _ in range(7)]
    # Turns a b c d a b c: a's and b's turns walk on to c, the others are their own.
    assert retries == ["c", "c", "c", "d", "c", "c", "c"]
    assert picker.pick() == "d"  # turn 7


def test_smooth_wrr_retry_takes_one_turn_and_walks_the_cycle() -> None:
    picker, _ = build(WeightedRoundRobinStrategy(), ["a", "b", "c"], [5, 1, 1])
    assert picker.cycle == ("a", "a", "b", "a", "c", "a", "a")  # type: ignore[attr-defined]
    assert picker.pick_excluding(None, frozenset({"a"})) == "b"  # turn 0 (a): on to turn 2
    assert picker.pick() == "a"  # turn 1
    assert picker.pick() == "b"  # turn 2
    assert picker.pick_excluding(None, frozenset({"a"})) == "c"  # turn 3 (a): on to turn 4
    assert picker.pick_excluding(None, frozenset({"a", "c"})) == "b"  # turn 4: wraps to 2
    assert picker.pick_excluding(None, frozenset({"a", "b", "c"})) == "a"  # turn 5: all
    assert picker.pick() == "a"  # turn 6
    assert picker.pick() == "a"  # turn 0 again


def test_smooth_wrr_run_ends_skip_whole_runs_and_wrap() -> None:
    cycle = ("a", "a", "b", "a", "c", "a", "a")
    # The run of a at 5-6 continues at 0-1 across the wrap, so it ends at 2 too.
    assert _run_ends(cycle) == [2, 2, 3, 4, 5, 2, 2]
    assert _run_ends(("a", "b", "b")) == [1, 0, 0]
    assert _run_ends(("a",)) == [0]


def test_smooth_wrr_retry_off_a_heavy_server_lands_on_the_light_one() -> None:
    picker, _ = build(WeightedRoundRobinStrategy(), ["heavy", "light"], [10**6, 1])
    cycle: tuple[str, ...] = picker.cycle  # type: ignore[attr-defined]
    assert Counter(cycle)["light"] == 1
    assert {picker.pick_excluding(None, frozenset({"heavy"})) for _ in range(100)} == {"light"}


# -- random strategies: the same distribution over the servers not tried ---------------------


@pytest.mark.parametrize(("size", "tried"), [(5, 2), (10, 8), (4, 1)])
def test_random_retry_is_uniform_over_the_servers_not_tried(size: int, tried: int) -> None:
    servers = [f"s{i}" for i in range(size)]
    picker, _ = build(RandomStrategy(rng=random.Random(11)), servers)
    exclude = frozenset(servers[:tried])
    counts = Counter(picker.pick_excluding(None, exclude) for _ in range(30_000))
    assert set(counts) == set(servers[tried:])
    # 99.9th percentile of chi-square with up to 4 degrees of freedom: 18.5.
    assert chi_square(counts, dict.fromkeys(servers[tried:], 1.0)) < 18.5


@pytest.mark.parametrize(
    ("weights", "tried"),
    [
        ({"a": 5, "b": 1, "c": 2, "d": 2}, {"a"}),  # a table, rejection mostly accepts
        ({"a": 1000, "b": 1, "c": 3}, {"a"}),  # a table, rejection mostly falls back
        ({"a": 1.0001, "b": 1, "c": 3.3333}, {"c"}),  # the alias table
        ({"a": 10**6, "b": 1, "c": 2.5}, {"a"}),  # the alias table, falling back
    ],
)
def test_weighted_random_retry_is_proportional_over_the_servers_not_tried(
    weights: dict[str, float], tried: set[str]
) -> None:
    picker, _ = build(
        WeightedRandomStrategy(rng=random.Random(5)), list(weights), list(weights.values())
    )
    counts = Counter(picker.pick_excluding(None, frozenset(tried)) for _ in range(40_000))
    remaining = {s: w for s, w in weights.items() if s not in tried}
    assert set(counts) == set(remaining)
    # 99.9th percentile of chi-square with 2 degrees of freedom: 13.8.
    assert chi_square(counts, remaining) < 13.8


@pytest.mark.parametrize("factory", [RandomStrategy, WeightedRandomStrategy])
def test_random_retries_are_reproducible_with_a_seed(factory: Callable[..., Strategy]) -> None:
    servers = [f"s{i}" for i in range(6)]
    first, _ = build(factory(rng=random.Random(3)), servers)
    second, _ = build(factory(rng=random.Random(3)), servers)
    exclude = frozenset(servers[:5])  # mostly the exact fallback draw
    assert [first.pick_excluding(None, exclude) for _ in range(50)] == [
        second.pick_excluding(None, exclude) for _ in range(50)
    ]


# -- load-aware strategies: their comparison over the servers not tried ----------------------


def with_loads(picker_and_endpoints: tuple[Picker, dict[str, Endpoint]], **loads: int) -> Picker:
    picker, endpoints = picker_and_endpoints
    for server, load in loads.items():
        for _ in range(load):
            endpoints[server].begin()
    return picker


def test_least_connections_retry_takes_the_least_loaded_server_not_tried() -> None:
    picker = with_loads(
        build(LeastConnectionsStrategy(rng=random.Random(1)), ["a", "b", "c"]), b=2, c=1
    )
    assert {picker.pick_excluding(None, frozenset({"a"})) for _ in range(50)} == {"c"}
    assert {picker.pick_excluding(None, frozenset({"a", "c"})) for _ in range(50)} == {"b"}
    assert {picker.pick_excluding(None, frozenset({"a", "b", "c"})) for _ in range(50)} == {"a"}


def test_least_connections_retry_breaks_ties_among_the_servers_not_tried() -> None:
    picker = with_loads(
        build(LeastConnectionsStrategy(rng=random.Random(1)), ["a", "b", "c", "d"]), d=1
    )
    counts = Counter(picker.pick_excluding(None, frozenset({"a"})) for _ in range(3000))
    assert set(counts) == {"b", "c"}
    assert 1300 < counts["b"] < 1700


@pytest.mark.parametrize(
    "strategy",
    [PowerOfTwoChoicesStrategy(rng=random.Random(2)), PeakEWMAStrategy(rng=random.Random(2))],
)
def test_two_choices_retry_samples_two_servers_not_tried(strategy: Strategy) -> None:
    picker = with_loads(build(strategy, ["a", "b", "c", "d"]), c=1, d=2)
    counts = Counter(picker.pick_excluding(None, frozenset({"a"})) for _ in range(6000))
    # Pairs of b, c, d alike: b wins the two pairs it is in, c the one with d, d none.
    assert set(counts) == {"b", "c"}
    assert counts["b"] / 6000 == pytest.approx(2 / 3, abs=0.03)
    # Two remaining: both are compared, so the less loaded always wins.
    assert {picker.pick_excluding(None, frozenset({"a", "b"})) for _ in range(100)} == {"c"}
    # One remaining: that one, however loaded.
    assert {picker.pick_excluding(None, frozenset({"a", "b", "c"})) for _ in range(50)} == {"d"}


def test_more_choices_compare_all_the_servers_sampled_among_those_not_tried() -> None:
    strategy = PowerOfTwoChoicesStrategy(3, rng=random.Random(2))
    picker = with_loads(build(strategy, ["a", "b", "c", "d"]), b=1, c=2, d=3)
    # Three of a, b, c, d remain when one is tried: all three are sampled.
    assert {picker.pick_excluding(None, frozenset({"a"})) for _ in range(100)} == {"b"}
    assert {picker.pick_excluding(None, frozenset({"a", "b"})) for _ in range(100)} == {"c"}


def test_two_choices_retry_with_weights_uses_the_weighted_comparison() -> None:
    built = build(PowerOfTwoChoicesStrategy(rng=random.Random(4)), ["a", "b", "c"], [1, 3, 1])
    picker = with_loads(built, b=2)  # b: 3 / (2 + 1) ties c: 1 / (0 + 1), the first drawn wins
    counts = Counter(picker.pick_excluding(None, frozenset({"a"})) for _ in range(2000))
    assert set(counts) == {"b", "c"}
    picker = with_loads(built, b=1)  # b: 3 / 4 loses to c: 1 / 1
    assert {picker.pick_excluding(None, frozenset({"a"})) for _ in range(100)} == {"c"}


def test_peak_ewma_retry_compares_latency_cost_among_the_servers_not_tried() -> None:
    picker, endpoints = build(PeakEWMAStrategy(rng=random.Random(1)), ["a", "b", "c"])
    endpoints["a"].latency = 0.001
    endpoints["b"].latency = 0.1
    endpoints["c"].latency = 0.5
    assert {picker.pick_excluding(None, frozenset({"a"})) for _ in range(50)} == {"b"}


def test_a_single_server_is_the_retry_of_every_picker() -> None:
    for name, factory in STRATEGY_FACTORIES.items():
        picker, _ = build(factory(), ["only"])
        assert picker.pick_excluding("k", frozenset({"only"})) == "only", name
        assert picker.pick_excluding(None, frozenset({"other"})) == "only", name


@pytest.mark.parametrize("name", sorted(STRATEGY_FACTORIES))
def test_exclude_may_be_any_set_of_names(name: str) -> None:
    # The balancer passes a frozenset, but the contract is any Set: a set, a keys view.
    picker, _ = build(STRATEGY_FACTORIES[name](), ["a", "b", "c"])
    excludes: list[Set[str]] = [{"a", "b"}, {"a": 1, "b": 2}.keys()]
    for exclude in excludes:
        assert picker.pick_excluding("k", exclude) == "c"
