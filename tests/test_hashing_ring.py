"""Ring hash: minimal disruption, balance, weights, and exact ketama (uhashring) compatibility."""

from __future__ import annotations

import random
from array import array
from bisect import bisect
from collections import Counter
from collections.abc import Iterator, Mapping
from itertools import chain, islice
from typing import Any
from unittest.mock import patch

import pytest
import uhashring  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import Endpoint, LoadBalancer, Snapshot
from loadbalancer.strategies.hashing import RingHashStrategy
from loadbalancer.strategies.hashing import ketama as ketama_module
from loadbalancer.strategies.hashing import ring as ring_module
from loadbalancer.strategies.hashing._keys import xxh64
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
    picker: Any = lb.picker  # white-box: the ring's owner slots
    owners = Counter(picker._names[slot] for slot in picker._owners[:-1])
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


# -- the bucket table and chunk index in front of the binary search ----------------------------


def searched(picker: Any, points: list[int], h: int) -> str:
    """The owner of hash ``h`` by a plain binary search over the whole ring, ``points``."""
    return str(picker._names[picker._owners[bisect(points, h)]])


def probes_for(picker: Any, bits: int, seed: int) -> list[int]:
    """Random hashes, every point and its neighbours, both edges of every bucket and chunk."""
    rng = random.Random(seed)
    probes = [rng.getrandbits(bits) for _ in range(2000)] + [0, 2**bits - 1]
    for point in picker._points:
        probes += [point - 1, point, point + 1]
        for shift in (picker._shift, picker._chunk_shift):
            probes += [(point >> shift) << shift, (((point >> shift) + 1) << shift) - 1]
    return [h for h in probes if 0 <= h < 2**bits]


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
@pytest.mark.parametrize("count", [1, 3, 10, 100])
def test_table_lookup_agrees_with_the_binary_search(mode: str, count: int) -> None:
    lb = ring(MEMCACHED[:count], hash=mode)
    picker: Any = lb.picker  # white-box: the ring itself
    bits = 64 if mode == "xxh64" else 32
    points = list(picker._points)
    for h in probes_for(picker, bits, count):
        direct = picker._names[picker._table[h >> picker._shift]]
        found = direct or picker._names[picker._owners[picker._index(h)]]
        assert found == searched(picker, points, h)
        assert picker._index(h) == bisect(points, h)


@settings(max_examples=150, deadline=None)
@given(
    servers=st.dictionaries(
        st.sampled_from("abcdefgh"), st.sampled_from([0.01, 0.5, 1, 2]), min_size=1
    ),
    vnodes=st.integers(1, 30),
    table_bits=st.integers(1, 12),
    chunk_points=st.integers(1, 20),
    data=st.data(),
)
def test_lookups_agree_with_the_binary_search_on_random_keys(
    servers: dict[str, float],
    vnodes: int,
    table_bits: int,
    chunk_points: int,
    data: st.DataObject,
) -> None:
    with (
        patch.object(ring_module, "_MAX_BUCKET_BITS", table_bits),
        patch.object(ring_module, "_POINTS_PER_CHUNK", chunk_points),
    ):
        lb = ring(servers, vnodes=vnodes)
    picker: Any = lb.picker
    points = list(picker._points)
    # Keys hashing exactly onto points, next to them, and past the last point (wrapping).
    exact = data.draw(st.lists(st.sampled_from(points), max_size=20))
    near = [point + offset for point in exact for offset in (-1, 1)]
    tail = data.draw(st.lists(st.integers(points[-1], 2**64 - 1), max_size=5))
    anywhere = data.draw(st.lists(st.integers(0, 2**64 - 1), max_size=30))
    for h in [*exact, *near, *tail, *anywhere]:
        if 0 <= h < 2**64:
            direct = picker._names[picker._table[h >> picker._shift]]
            found = direct or picker._names[picker._owners[picker._index(h)]]
            assert found == searched(picker, points, h)
    for key in data.draw(st.lists(st.binary(max_size=8), max_size=30)):
        assert lb.get(key) == searched(picker, points, xxh64(key))


def test_a_coarse_bucket_table_places_keys_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = placement(ring(MEMCACHED[:30]))
    monkeypatch.setattr(ring_module, "_MAX_BUCKET_BITS", 6)  # most buckets hold a point
    lb = ring(MEMCACHED[:30])
    picker: Any = lb.picker  # white-box: the ring's points and buckets
    assert len(picker._table) == 64
    assert placement(lb) == expected


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
def test_a_ring_of_a_thousand_servers_is_in_compact_arrays(mode: str) -> None:
    servers = tuple(Endpoint(f"10.{i // 250}.{i % 250}.1:8080") for i in range(1000))
    strategy = RingHashStrategy(hash=mode)  # type: ignore[arg-type]
    picker: Any = strategy.build(Snapshot.of(servers, lambda: 0.0))
    assert 159_990 <= len(picker._points) <= 160_000  # a ketama ring: a few points collide
    assert 8 * len(picker._points) <= len(picker._table) <= 16 * len(picker._points)
    assert (picker._table.itemsize, picker._owners.itemsize) == (2, 4)
    assert picker._points.itemsize == (8 if mode == "xxh64" else 4)
    rng = random.Random(5)
    bits = 64 if mode == "xxh64" else 32
    names, owners, points = picker._names, picker._owners, list(picker._points)
    for h in [rng.getrandbits(bits) for _ in range(20_000)] + points[::50]:
        direct = names[picker._table[h >> picker._shift]]
        assert (direct or names[owners[picker._index(h)]]) == names[owners[bisect(points, h)]]


@settings(max_examples=200, deadline=None)
@given(
    ring_points=st.lists(st.tuples(st.integers(0, 255), st.integers(1, 4)), min_size=1),
    bits=st.integers(1, 8),
)
def test_the_bucket_table_is_built_as_edits_write_it(
    ring_points: list[tuple[int, int]], bits: int
) -> None:
    ordered = sorted(ring_points)
    points = array("I", [point for point, _ in ordered])
    owners = array("I", [owner for _, owner in ordered])
    with patch.object(ring_module, "_MAX_BUCKET_BITS", bits):
        table = ring_module._bucket_table(points, owners, 8, 5)
    shift = 8 - len(table).bit_length() + 1
    written = array("H", [9] * len(table))
    ring_module._fill(written, points, owners, shift, -1, len(points))
    assert table == written
    assert 9 not in written
    # A bucket holds the search slot exactly when a point falls in it.
    assert {index for index, slot in enumerate(table) if not slot} == {
        point >> shift for point in points
    }


def reference_xxh64_placement(servers: list[str], keys: list[str]) -> list[str]:
    """The xxh64 ring as a sorted list of (point, name) pairs, 160 points a server."""
    pairs = sorted(
        (xxh64(f"{server}_{index}".encode()), server) for server in servers for index in range(160)
    )
    points = [point for point, _ in pairs]
    owners = [owner for _, owner in pairs]
    return [owners[bisect(points, xxh64(key.encode())) % len(points)] for key in keys]


def test_xxh64_places_keys_as_a_plain_sorted_ring() -> None:
    assert placement(ring(MEMCACHED[:40])) == reference_xxh64_placement(MEMCACHED[:40], KEYS)


def test_changing_one_weight_moves_keys_only_to_or_from_that_server() -> None:
    lb = ring({f"n{i}": 1.0 + i for i in range(6)})
    before = placement(lb)
    lb.set_weight("n2", 9.0)
    after = placement(lb)
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed
    assert all(new == "n2" for _, new in changed)


# -- incremental rebuilds: exactly the ring a full build gives ---------------------------------


def decoded(picker: Any) -> dict[str, object]:
    """Everything a ring picker places keys by, with owner slots turned back into names."""
    names = picker._names
    return {
        "points": list(picker._points),
        "owners": [names[slot] for slot in picker._owners],
        "table": [names[slot] for slot in picker._table],
        "shift": picker._shift,
        "firsts": list(picker._firsts),
        "chunk_shift": picker._chunk_shift,
        "reachable": picker._reachable,
        "unplaced": picker._unplaced,
        "counts": {server: count for server, count in picker._counts.items() if count},
        "claims": {point: sorted(givers) for point, givers in picker._claims.items()},
        "slots": {name: names[slot] for name, slot in picker._tables.slots.items()},
    }


changes = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "weight"]),
        st.integers(0, 40),
        st.sampled_from([0.01, 0.3, 0.5, 1, 1, 1, 2, 3.5]),
    ),
    min_size=1,
    max_size=12,
)


def apply(pool: dict[str, float], action: str, name: str, weight: float) -> None:
    if action == "join" and name not in pool:
        pool[name] = weight
    elif action == "leave" and name in pool and len(pool) > 1:
        del pool[name]
    elif action == "weight" and name in pool:
        pool[name] = weight


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(1, 12),
    steps=changes,
    vnodes=st.sampled_from([1, 3, 20, None]),
    table_bits=st.sampled_from([3, 8, 22]),
    max_points=st.sampled_from([1 << 20, 60, 300]),
)
def test_incremental_rebuild_gives_the_full_rebuilds_ring(
    mode: str,
    start: int,
    steps: list[tuple[str, int, float]],
    vnodes: int | None,
    table_bits: int,
    max_points: int,
) -> None:
    pool = {f"s{i}": 1.0 for i in range(start)}
    strategy = RingHashStrategy(hash=mode, vnodes=vnodes)  # type: ignore[arg-type]

    def snapshot() -> Snapshot:
        endpoints = tuple(Endpoint(name, weight) for name, weight in pool.items())
        return Snapshot.of(endpoints, lambda: 0.0)

    # Edit whatever the change's size, and with coarse tables too, so every path is exercised.
    with (
        patch.object(ring_module, "_MAX_EDITED_SHARE", 100.0),
        patch.object(ring_module, "_MAX_BUCKET_BITS", table_bits),
        # An xxh64 ring over the cap scales every server's count: edited only where it stays.
        patch.object(ring_module, "MAX_POINTS", max_points if mode == "xxh64" else 1 << 20),
    ):
        picker: Any = strategy.build(snapshot())
        for action, index, weight in steps:
            apply(pool, action, f"s{index}", weight)
            current = snapshot()
            before = decoded(picker)
            edited: Any = strategy.build(current, picker)
            assert decoded(picker) == before  # the previous picker may still be serving picks
            assert decoded(edited) == decoded(strategy.build(current))
            picker = edited


_real_server_points = ketama_module.server_points


def colliding_points(server: str, start: int, stop: int) -> list[int]:
    """Ketama points folded onto a few hundred values, so that servers' points collide."""
    return [point % 397 for point in _real_server_points(server, start, stop)]


@settings(max_examples=80, deadline=None)
@given(
    start=st.integers(1, 8),
    steps=changes,
    vnodes=st.sampled_from([1, 3, 10]),
    shuffle=st.randoms(use_true_random=False),
)
def test_incremental_ketama_rebuild_keeps_collisions_exact(
    start: int, steps: list[tuple[str, int, float]], vnodes: int, shuffle: random.Random
) -> None:
    pool = {f"s{i}": 1.0 for i in range(start)}
    strategy = RingHashStrategy(hash="ketama", vnodes=vnodes)

    def snapshot() -> Snapshot:
        endpoints = [Endpoint(name, weight) for name, weight in pool.items()]
        if shuffle.random() < 0.3:  # registration order decides who owns a collided point
            shuffle.shuffle(endpoints)
        return Snapshot.of(tuple(endpoints), lambda: 0.0)

    with (
        patch.object(ring_module, "_MAX_EDITED_SHARE", 100.0),
        patch.object(ketama_module, "server_points", colliding_points),
        patch.object(ring_module, "server_points", colliding_points),
    ):
        picker: Any = strategy.build(snapshot())
        for action, index, weight in steps:
            apply(pool, action, f"s{index % 12}", weight)
            current = snapshot()
            picker = strategy.build(current, picker)
            assert decoded(picker) == decoded(strategy.build(current))


def test_a_ketama_ring_with_a_collision_is_still_edited() -> None:
    # "s272-12" and "s705-17" share a point (see the uhashring collision test above).
    servers = tuple(Endpoint(name) for name in ["s272", "s705", "other"])
    strategy = RingHashStrategy(hash="ketama")
    full: Any = strategy.build(Snapshot.of(servers, lambda: 0.0))
    assert full._claims == {4287979131: ["s272", "s705"]}
    for pool in [servers[1:], servers[::2], (*servers, Endpoint("new")), servers[::-1]]:
        snapshot = Snapshot.of(pool, lambda: 0.0)
        with (
            patch.object(ring_module, "_MAX_EDITED_SHARE", 100.0),
            patch.object(ring_module, "_ketama_tables", side_effect=AssertionError("full")),
        ):
            edited: Any = strategy.build(snapshot, full)
        assert decoded(edited) == decoded(strategy.build(snapshot))
        lb = LoadBalancer(strategy=RingHashStrategy(hash="ketama"))
        lb.replace([endpoint.server for endpoint in pool])
        reference = uhashring.HashRing([endpoint.server for endpoint in pool], hash_fn="ketama")
        assert placement(lb) == [reference.get_node(key) for key in KEYS]


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
def test_one_server_joining_or_leaving_a_large_ring_is_edited_not_rebuilt(mode: str) -> None:
    endpoints = tuple(Endpoint(f"10.{i // 250}.{i % 250}.1:8080") for i in range(300))
    strategy = RingHashStrategy(hash=mode)  # type: ignore[arg-type]
    small, large = (Snapshot.of(pool, lambda: 0.0) for pool in (endpoints[:-1], endpoints))
    before: Any = strategy.build(small)
    full = "_xxh64_tables" if mode == "xxh64" else "_ketama_tables"
    with patch.object(ring_module, full, side_effect=AssertionError("full build")):
        after: Any = strategy.build(large, before)
        again: Any = strategy.build(small, after)
    assert decoded(after) == decoded(strategy.build(large))
    assert decoded(again) == decoded(before)
    assert before._table is not after._table  # the previous picker is left as it was


@settings(max_examples=100, deadline=None)
@given(
    ring_points=st.lists(st.tuples(st.integers(0, 20), st.sampled_from("aceg")), max_size=30),
    new_points=st.lists(st.tuples(st.integers(0, 20), st.sampled_from("bdf")), max_size=10),
)
def test_equal_xxh64_points_are_merged_in_name_order(
    ring_points: list[tuple[int, str]], new_points: list[tuple[int, str]]
) -> None:
    # Hash every point onto 21 values, so that equal points are common.
    def folded(data: bytes) -> int:
        return xxh64(data) % 21

    existing = dict(Counter(name for _, name in ring_points))
    joined = {**existing, **Counter(name for _, name in new_points)}
    if not existing:
        return
    with (
        patch.object(ring_module, "xxh64", folded),
        patch.object(ring_module, "_MAX_EDITED_SHARE", 100.0),
    ):
        strategy = RingHashStrategy(vnodes=1)
        with patch.object(ring_module, "_xxh64_counts", lambda *_: existing):
            picker = strategy.build(Snapshot.of((Endpoint("a"),), lambda: 0.0))
        with patch.object(ring_module, "_xxh64_counts", lambda *_: joined):
            edited: Any = strategy.build(Snapshot.of((Endpoint("a"),), lambda: 0.0), picker)
            full = strategy.build(Snapshot.of((Endpoint("a"),), lambda: 0.0))
    assert decoded(edited) == decoded(full)
    names = edited._names
    pairs = list(zip(edited._points, (names[slot] for slot in edited._owners), strict=False))
    assert pairs == sorted(pairs)


# -- bounded loads: the candidates walk ----------------------------------------------------------


def reference_candidates(picker: Any, h: int) -> list[str]:
    """The distinct owners clockwise from ``h``, as the ring walked them before its arrays."""
    points = list(picker._points)
    owners = [picker._names[slot] for slot in picker._owners[:-1]]
    start = bisect(points, h) % len(points)
    walk = chain(owners[start:], owners[:start])
    return list(dict.fromkeys(walk))


@pytest.mark.parametrize("mode", ["xxh64", "ketama"])
@settings(max_examples=40, deadline=None)
@given(servers=names, keys=st.lists(st.text(max_size=6), min_size=1, max_size=20))
def test_candidates_walk_as_the_old_ring_did(
    mode: str, servers: list[str], keys: list[str]
) -> None:
    picker: Any = ring(servers, hash=mode, balance_factor=1.25).picker
    for key in keys:
        walk: Iterator[str] = picker.candidates(key)
        assert list(walk) == reference_candidates(picker, picker._hash(key))
        assert next(picker.candidates(key)) == picker.pick(key)


def test_candidates_are_lazy_and_do_not_copy_the_ring() -> None:
    servers = tuple(Endpoint(f"10.{i // 250}.{i % 250}.1:8080") for i in range(1000))
    picker: Any = RingHashStrategy(balance_factor=1.25).build(Snapshot.of(servers, lambda: 0.0))
    walk = picker.candidates("some key")
    first = next(walk)
    assert first == picker.pick("some key")
    assert len(set(islice(walk, 998))) == 998
