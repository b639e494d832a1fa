"""Ring hash: minimal disruption, balance, weights, and exact ketama (uhashring) compatibility."""

from __future__ import annotations

import random
from bisect import bisect
from collections import Counter
from collections.abc import Mapping
from itertools import islice
from typing import Any

import pytest
import uhashring  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import Endpoint, LoadBalancer, Snapshot
from loadbalancer.strategies.hashing import RingHashStrategy
from loadbalancer.strategies.hashing import ring as ring_module
from loadbalancer.strategies.hashing.ketama import ketama_ring

KEYS = [f"key-{i}" for i in range(3000)]
MEMCACHED = [f"10.0.{i // 200}.{i % 200}:11211" for i in range(100)]


def ring(servers: list[str] | Mapping[str, float], **options: object) -> LoadBalancer:
    lb = LoadBalancer(strategy=RingHashStrategy(**options), max_servers=200)  # type: ignore[arg-type]
    lb.replace(servers)
    return lb


def placement(lb: LoadBalancer, keys: list[str] = KEYS) -> list[str]:
    return [lb.get(key) for key in keys]


def shares(lb: LoadBalancer, keys: int) -> dict[str, float]:
    """Each server's share of ``keys`` random keys, relative to a fair share (1.0)."""
    rng = random.Random(11)
    counts = Counter(lb.get(rng.randbytes(12)) for _ in range(keys))
    return {server: counts[server] * len(lb) / keys for server in lb.servers}


# -- minimal disruption -------------------------------------------------------------------------

names = st.lists(
    st.text("abcdefgh0123456789.:-", min_size=1, max_size=12), min_size=2, max_size=12, unique=True
)


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
@settings(max_examples=25, deadline=None)
@given(servers=names, data=st.data())
def test_removing_a_server_moves_only_its_keys(
    mode: str, servers: list[str], data: st.DataObject
) -> None:
    before = placement(ring(servers, hash=mode), KEYS[:1000])
    gone = data.draw(st.sampled_from(servers))
    after = placement(ring([s for s in servers if s != gone], hash=mode), KEYS[:1000])
    assert all(old == new for old, new in zip(before, after, strict=True) if old != gone)
    assert gone not in after


@settings(max_examples=25, deadline=None)
@given(servers=names, weights=st.lists(st.sampled_from([0.5, 1, 2, 3.5]), min_size=13))
def test_weighted_ring_also_moves_only_the_removed_servers_keys(
    servers: list[str], weights: list[float]
) -> None:
    pool = dict(zip(servers, weights, strict=False))
    before = placement(ring(pool), KEYS[:1000])
    gone = servers[0]
    after = placement(ring({s: w for s, w in pool.items() if s != gone}), KEYS[:1000])
    assert all(old == new for old, new in zip(before, after, strict=True) if old != gone)


@settings(max_examples=25, deadline=None)
@given(servers=names)
def test_adding_a_server_moves_about_its_share_all_to_it(servers: list[str]) -> None:
    before = placement(ring(servers))
    after = placement(ring([*servers, "newcomer"]))
    moved = [new for old, new in zip(before, after, strict=True) if old != new]
    assert set(moved) <= {"newcomer"}
    expected = len(KEYS) / (len(servers) + 1)
    # 160 points per server keep a server's share within about +-25% of fair (6 sigma here).
    assert 0.5 * expected <= len(moved) <= 1.6 * expected


# -- balance and weights ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
@pytest.mark.parametrize("count", [10, 100])
def test_every_server_gets_close_to_a_fair_share(mode: str, count: int) -> None:
    relative = shares(ring(MEMCACHED[:count], hash=mode), 60_000 if count == 10 else 100_000)
    # 160 points per server: measured spread 0.78-1.23 of fair for these pools.
    assert min(relative.values()) > 0.7
    assert max(relative.values()) < 1.3


def test_more_virtual_nodes_balance_better() -> None:
    coarse = shares(ring(MEMCACHED[:10], vnodes=10), 50_000)
    fine = shares(ring(MEMCACHED[:10], vnodes=1000), 50_000)
    spread = max(coarse.values()) - min(coarse.values())
    assert max(fine.values()) - min(fine.values()) < spread / 2


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
def test_shares_are_proportional_to_weight(mode: str) -> None:
    weights = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 0.5}
    lb = ring(weights, hash=mode)
    relative = shares(lb, 100_000)
    mean = sum(weights.values()) / len(weights)
    for server, weight in weights.items():
        assert relative[server] == pytest.approx(weight / mean, rel=0.2)


def test_points_scale_with_weight_and_stay_at_least_one() -> None:
    lb = ring({"tiny": 0.0001, "half": 0.5, "big": 2})
    owners: Counter[str] = Counter(lb.picker._owners[:-1])  # type: ignore[attr-defined]
    assert owners == {"tiny": 1, "half": 80, "big": 320}


def test_huge_weights_are_scaled_down_to_the_point_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring_module, "MAX_POINTS", 3000)
    lb = ring({"a": 10, "b": 20, "c": 0.001})  # 4,800 points uncapped
    picker: Any = lb.picker  # white-box: the ring's points and buckets
    assert len(picker._points) == 1000 + 2000 + 1
    relative = shares(lb, 30_000)
    assert relative["b"] / relative["a"] == pytest.approx(2, rel=0.15)


# -- ketama compatibility (uhashring as an independent implementation) -------------------------


@pytest.mark.parametrize("count", [1, 2, 10, 100])
def test_ketama_maps_every_key_as_uhashring_does(count: int) -> None:
    servers = MEMCACHED[:count]
    reference = uhashring.HashRing(servers, hash_fn="ketama")
    lb = ring(servers, hash="ketama")
    keys = [*KEYS, "", "ключ-1", "鍵", "user:42:profile", "x" * 300]
    assert placement(lb, keys) == [reference.get_node(key) for key in keys]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ketama_maps_weighted_pools_as_uhashring_does(seed: int) -> None:
    rng = random.Random(seed)
    weights = {server: rng.randint(1, 9) for server in MEMCACHED[:12]}
    reference = uhashring.HashRing(weights, hash_fn="ketama")
    lb = ring(weights, hash="ketama")
    assert placement(lb) == [reference.get_node(key) for key in KEYS]


def test_ketama_custom_vnodes_match_uhashring() -> None:
    weights = {"mc1:11211": 3, "mc2:11211": 1, "mc3:11211": 2}
    reference = uhashring.HashRing(weights, hash_fn="ketama", vnodes=7)
    lb = ring(weights, hash="ketama", vnodes=7)
    assert placement(lb) == [reference.get_node(key) for key in KEYS]


def test_ketama_follows_uhashring_through_pool_changes() -> None:
    servers = MEMCACHED[:8]
    reference = uhashring.HashRing(servers, hash_fn="ketama")
    lb = ring(servers, hash="ketama")
    reference.remove_node(servers[3])
    lb.unregister(servers[3])
    reference.add_node("extra:11211", {"weight": 2})
    lb.register("extra:11211", 2)
    assert placement(lb) == [reference.get_node(key) for key in KEYS]


def test_ketama_ring_has_libketamas_160_points_per_server() -> None:
    servers = MEMCACHED[:5]
    picker: Any = ring(servers, hash="ketama").picker  # white-box: the ring itself
    assert len(picker._points) == uhashring.HashRing(servers, hash_fn="ketama").size == 800


@pytest.mark.parametrize("servers", [["s272", "s705"], ["s705", "s272"]])
def test_ketama_point_collision_goes_to_the_later_server_as_in_uhashring(
    servers: list[str],
) -> None:
    # "s272-12" and "s705-17" share the point 4287979131 (found by search).
    points, owners = ketama_ring(tuple(servers), (1, 1))
    reference = uhashring.HashRing(servers, hash_fn="ketama")
    assert points == sorted(set(reference.runtime._keys))
    assert owners == [reference.runtime._ring[point] for point in points]
    assert owners[points.index(4287979131)] == servers[1]
    # Keys whose hash falls just below the shared point land on it: compare their picks too.
    lb = ring(servers, hash="ketama")
    arc = range(points[points.index(4287979131) - 1] + 1, 4287979131)
    probes = (f"probe-{i}" for i in range(100_000))
    near = list(islice((key for key in probes if reference.get_key(key) in arc), 3))
    assert len(near) == 3
    assert [lb.get(key) for key in near] == [reference.get_node(key) for key in near]


def test_ketama_float_weights_use_the_exact_floor() -> None:
    lb = ring({"a": 1.5, "b": 0.5}, hash="ketama")
    reference = uhashring.HashRing({"a": 3, "b": 1}, hash_fn="ketama")  # same ratios
    assert placement(lb) == [reference.get_node(key) for key in KEYS]


# -- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 1, b"ketama"])
def test_hash_must_be_a_str(value: object) -> None:
    with pytest.raises(TypeError, match="hash"):
        RingHashStrategy(hash=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["md5", "KETAMA", "", "xxhash"])
def test_hash_must_be_a_known_mode(value: str) -> None:
    with pytest.raises(ValueError, match="hash"):
        RingHashStrategy(hash=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError), (1.5, TypeError)])
def test_vnodes_must_be_a_positive_int(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="vnodes"):
        RingHashStrategy(vnodes=value)  # type: ignore[arg-type]


def test_ketama_refuses_vnodes_that_could_never_fit() -> None:
    # One server hashes vnodes times, four points each: the smallest ring any pool has.
    RingHashStrategy(hash="ketama", vnodes=1 << 18)
    for vnodes in [(1 << 18) + 1, 10**9]:
        with pytest.raises(ValueError, match="vnodes"):
            RingHashStrategy(hash="ketama", vnodes=vnodes)
    RingHashStrategy(vnodes=10**9)  # xxh64 rings are scaled down instead


def test_ketama_ring_beyond_the_point_cap_is_refused_at_build() -> None:
    servers = tuple(Endpoint(f"10.{i // 250}.{i % 250}.1:11211") for i in range(6554))
    strategy = RingHashStrategy(hash="ketama")  # 6,554 x 40 hashes x 4 points > 2**20
    with pytest.raises(ValueError, match="vnodes"):
        strategy.build(Snapshot.of(servers, lambda: 0.0))


def test_ketama_point_cap_counts_four_points_per_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring_module, "MAX_POINTS", 4000)
    servers = tuple(Endpoint(f"s{i}") for i in range(11))
    strategy = RingHashStrategy(hash="ketama", vnodes=100)
    picker = strategy.build(Snapshot.of(servers[:10], lambda: 0.0))  # exactly 4,000 points
    assert len(picker._points) == 4000  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="vnodes=100"):
        strategy.build(Snapshot.of(servers, lambda: 0.0))  # 4,400 points
    # An xxh64 ring of the same size is scaled to fit instead.
    xxh64_ring = RingHashStrategy(vnodes=400).build(Snapshot.of(servers, lambda: 0.0))
    assert len(xxh64_ring._points) <= 4000 + len(servers)  # type: ignore[attr-defined]


# -- the bucket table in front of the binary search --------------------------------------------


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
@pytest.mark.parametrize("count", [1, 3, 10, 100])
def test_bucket_lookup_agrees_with_the_binary_search(mode: str, count: int) -> None:
    picker: Any = ring(MEMCACHED[:count], hash=mode).picker  # white-box: the ring itself
    points: list[int] = picker._points
    bits = 64 if mode == "xxh64" else 32
    shift: int = picker._shift
    rng = random.Random(count)
    probes = [rng.getrandbits(bits) for _ in range(20_000)]
    # Every point, its neighbours, and both edges of every bucket that holds a point.
    for point in points:
        probes += [point - 1, point, point + 1]
        probes += [(point >> shift) << shift, (((point >> shift) + 1) << shift) - 1]
    probes += [0, 2**bits - 1]
    for h in probes:
        if 0 <= h < 2**bits:
            searched = picker._owners[bisect(points, h)]
            assert (picker._buckets[h >> shift] or searched) == searched


def test_huge_rings_skip_the_bucket_table(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = placement(ring(MEMCACHED[:3]))
    monkeypatch.setattr(ring_module, "_MAX_BUCKETED_POINTS", 100)
    lb = ring(MEMCACHED[:3])
    picker: Any = lb.picker  # white-box: the ring's points and buckets
    assert picker._buckets == [None]
    assert placement(lb) == expected


def test_changing_one_weight_moves_keys_only_to_or_from_that_server() -> None:
    lb = ring({f"n{i}": 1.0 + i for i in range(6)})
    before = placement(lb)
    lb.set_weight("n2", 9.0)
    after = placement(lb)
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed
    assert all(new == "n2" for _, new in changed)
