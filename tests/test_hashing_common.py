"""What every hashing strategy shares: keys, key=None, stability, arguments, bounded loads."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable

import pytest

from loadbalancer import Endpoint, Key, LoadBalancer, Snapshot, Strategy
from loadbalancer.strategies.hashing import MaglevStrategy, RendezvousStrategy, RingHashStrategy
from loadbalancer.strategies.hashing._bounded import BoundedPicker

# Maglev tables here are small (a prime near 4,000) to keep the suite fast; the default size is
# exercised in test_hashing_maglev.py.
FACTORIES: dict[str, Callable[..., Strategy]] = {
    "ring": RingHashStrategy,
    "ketama": lambda **kw: RingHashStrategy(hash="ketama", **kw),
    "maglev": lambda **kw: MaglevStrategy(table_size=4099, **kw),
    "rendezvous": RendezvousStrategy,
}

SERVERS = [f"10.0.0.{i}:8080" for i in range(8)]
KEYS = [f"user-{i}" for i in range(2000)]


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest) -> Callable[..., Strategy]:
    factory: Callable[..., Strategy] = FACTORIES[request.param]
    return factory


def balancer(strategy: Strategy, servers: list[str] = SERVERS) -> LoadBalancer:
    lb = LoadBalancer(strategy=strategy, max_servers=max(10, len(servers)))
    lb.replace(servers)  # one table build, not one per server
    return lb


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_key", [42, 1.5, None.__class__, bytearray(b"k"), ["k"], ("k",)])
def test_keys_other_than_str_or_bytes_are_rejected(
    make: Callable[..., Strategy], bad_key: object
) -> None:
    lb = balancer(make(balance_factor=1.5))
    with pytest.raises(TypeError, match="key"):
        lb.get(bad_key)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        lb.acquire(bad_key)  # type: ignore[arg-type]
    assert all(stats.in_flight == 0 for stats in lb.stats().values())


def test_str_key_maps_like_its_utf8_bytes(make: Callable[..., Strategy]) -> None:
    lb = balancer(make())
    for key in [*KEYS[:200], "ключ", "鍵-7", "emoji-🙂"]:
        assert lb.get(key) == lb.get(key.encode("utf-8"))


SURROGATE_KEYS = ["\ud800", "user-\udfff-7", "\udc80\ud800", "ok-\U0001f642-\ud83d"]


def test_keys_with_lone_surrogates_map_like_their_surrogatepass_bytes(
    make: Callable[..., Strategy],
) -> None:
    # Server names with lone surrogates are accepted (name_bytes), so keys must be too.
    class Name(str):
        pass

    lb = balancer(make(balance_factor=1.5))
    for key in SURROGATE_KEYS:
        encoded = key.encode("utf-8", "surrogatepass")
        assert lb.get(key) == lb.get(encoded) == lb.get(Name(key))
        lease = lb.acquire(key)
        assert lease.server == lb.get(key)  # idle: the key's own server has room
        lease.release()
    # Keys that differ only in their surrogates do not collide by construction.
    assert len({lb.get(f"k-{chr(0xD800 + i)}") for i in range(200)}) == len(SERVERS)


def test_retries_of_lone_surrogate_keys_follow_the_keys_order(
    make: Callable[..., Strategy],
) -> None:
    snapshot = Snapshot.of(tuple(Endpoint(s) for s in SERVERS), lambda: 0.0)
    picker = make().build(snapshot)
    assert isinstance(picker, BoundedPicker)
    for key in SURROGATE_KEYS:
        order = list(picker.candidates(key))
        assert order[0] == picker.pick(key)
        assert picker.pick_excluding(key, frozenset(order[:2])) == order[2]


def test_str_and_bytes_subclasses_map_like_their_base(make: Callable[..., Strategy]) -> None:
    class Name(str):
        pass

    class Blob(bytes):
        pass

    lb = balancer(make())
    for key in KEYS[:100]:
        assert lb.get(Name(key)) == lb.get(key)
        assert lb.get(Blob(key.encode())) == lb.get(key)


def test_same_key_same_server_and_keys_spread(make: Callable[..., Strategy]) -> None:
    lb = balancer(make())
    first = [lb.get(key) for key in KEYS]
    assert [lb.get(key) for key in KEYS] == first
    assert set(first) == set(SERVERS)


def test_placement_ignores_registration_order(make: Callable[..., Strategy]) -> None:
    forward = balancer(make())
    backward = balancer(make(), SERVERS[::-1])
    assert [forward.get(key) for key in KEYS] == [backward.get(key) for key in KEYS]


def test_one_instance_serves_two_balancers_independently(make: Callable[..., Strategy]) -> None:
    strategy = make()
    big = balancer(strategy)
    small = balancer(strategy, SERVERS[:2])
    alone = balancer(make(), SERVERS[:2])
    assert {small.get(key) for key in KEYS} == set(SERVERS[:2])
    assert [small.get(key) for key in KEYS] == [alone.get(key) for key in KEYS]
    assert {big.get(key) for key in KEYS} == set(SERVERS)


# -- key=None ---------------------------------------------------------------------------------


def test_no_key_picks_like_a_random_key_from_the_rng(make: Callable[..., Strategy]) -> None:
    first = balancer(make(rng=random.Random(7)))
    second = balancer(make(rng=random.Random(7)))
    picks = [first.get() for _ in range(4000)]
    assert picks == [second.get() for _ in range(4000)]
    # Spread like keys: every server gets a share near that of real keys.
    by_key = Counter(first.get(key) for key in KEYS * 2)
    counts = Counter(picks)
    for server in SERVERS:
        assert counts[server] == pytest.approx(by_key[server], rel=0.35, abs=60)


def test_no_key_follows_the_bound_on_the_lease_path(make: Callable[..., Strategy]) -> None:
    lb = balancer(make(balance_factor=1.25, rng=random.Random(3)))
    leases = [lb.acquire() for _ in range(80)]
    # 80 requests over 8 servers: capacity ceil(1.25 * 80 / 8) = 13 at the last admission.
    assert max(stats.in_flight for stats in lb.stats().values()) <= 13
    for lease in leases:
        lease.release()
    assert all(stats.in_flight == 0 for stats in lb.stats().values())


# -- stability across processes ---------------------------------------------------------------

_PLACEMENT_SCRIPT = """
import json, sys
from loadbalancer import LoadBalancer
from loadbalancer.strategies.hashing import MaglevStrategy, RendezvousStrategy, RingHashStrategy
strategies = {
    "ring": RingHashStrategy(), "ketama": RingHashStrategy(hash="ketama"),
    "maglev": MaglevStrategy(), "rendezvous": RendezvousStrategy(),
}
weights = {f"cache-{i}.internal:11211": 1 + i % 3 for i in range(7)}
out = {}
for name, strategy in strategies.items():
    for weighted in (False, True):
        lb = LoadBalancer(strategy=strategy)
        lb.replace(weights if weighted else list(weights))
        out[f"{name}/{weighted}"] = [lb.get(f"session-{i}") for i in range(3000)]
json.dump(out, sys.stdout)
"""


def placements_in_subprocess(
    hash_seed: str, script: str = _PLACEMENT_SCRIPT
) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        check=True,
        env=env,
        text=True,
    )
    placements: dict[str, list[str]] = json.loads(result.stdout)
    return placements


def test_placement_is_identical_across_processes_with_different_hash_seeds() -> None:
    first = placements_in_subprocess("1")
    second = placements_in_subprocess("2024")
    assert len(first) == 8
    assert first == second
    # Not degenerate: every configuration spreads keys over every server.
    assert all(len(set(servers)) == 7 for servers in first.values())


_SURROGATE_SCRIPT = """
import json, sys
from loadbalancer import Endpoint, Snapshot
from loadbalancer.strategies.hashing import MaglevStrategy, RendezvousStrategy, RingHashStrategy
strategies = {
    "ring": RingHashStrategy(), "ketama": RingHashStrategy(hash="ketama"),
    "maglev": MaglevStrategy(), "rendezvous": RendezvousStrategy(),
}
servers = [f"cache-{i}.internal:11211" for i in range(7)]
keys = [f"session-{i}-" + chr(0xD800 + i % 2048) for i in range(2000)]
out = {}
for name, strategy in strategies.items():
    picker = strategy.build(Snapshot.of(tuple(map(Endpoint, servers)), lambda: 0.0))
    out[name] = [picker.pick(key) for key in keys]
    out[name + "/retry"] = [picker.pick_excluding(key, {servers[0]}) for key in keys]
json.dump(out, sys.stdout)
"""


def test_lone_surrogate_keys_are_placed_identically_across_processes() -> None:
    first = placements_in_subprocess("1", _SURROGATE_SCRIPT)
    second = placements_in_subprocess("2024", _SURROGATE_SCRIPT)
    assert len(first) == 8
    assert first == second
    assert all(len(set(servers)) == 7 for name, servers in first.items() if "/" not in name)
    assert all("cache-0.internal:11211" not in servers for n, servers in first.items() if "/" in n)


# Placement is part of the public contract: changing it reshuffles every user's caches. The
# ketama row is also what uhashring.HashRing(SERVERS, hash_fn="ketama") returns.
GOLDEN: dict[str, tuple[Callable[[], Strategy], list[str]]] = {
    "ring": (
        RingHashStrategy,
        ["10.0.0.3:8080", "10.0.0.0:8080", "10.0.0.7:8080", "10.0.0.6:8080"],
    ),
    "ketama": (
        lambda: RingHashStrategy(hash="ketama"),
        ["10.0.0.4:8080", "10.0.0.0:8080", "10.0.0.7:8080", "10.0.0.0:8080"],
    ),
    "maglev": (
        MaglevStrategy,
        ["10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.5:8080", "10.0.0.0:8080"],
    ),
    "rendezvous": (
        RendezvousStrategy,
        ["10.0.0.4:8080", "10.0.0.4:8080", "10.0.0.3:8080", "10.0.0.6:8080"],
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_placement_matches_the_recorded_golden_values(name: str) -> None:
    factory, expected = GOLDEN[name]
    lb = balancer(factory())
    keys: list[Key] = ["alpha", "beta", b"gamma", "delta"]
    assert [lb.get(key) for key in keys] == expected


# -- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [True, "1.5", [1.5]])
def test_balance_factor_of_wrong_type_is_rejected(
    make: Callable[..., Strategy], factor: object
) -> None:
    with pytest.raises(TypeError, match="balance_factor"):
        make(balance_factor=factor)


@pytest.mark.parametrize("factor", [1, 1.0, 0.5, 0, -2, math.inf, math.nan])
def test_balance_factor_must_be_finite_and_above_one(
    make: Callable[..., Strategy], factor: float
) -> None:
    with pytest.raises(ValueError, match="balance_factor"):
        make(balance_factor=factor)


@pytest.mark.parametrize("rng", [42, "seed", random.random])
def test_rng_must_be_a_random_instance(make: Callable[..., Strategy], rng: object) -> None:
    with pytest.raises(TypeError, match="rng"):
        make(rng=rng)


def test_repr_shows_only_placement_settings() -> None:
    assert repr(RingHashStrategy()) == "RingHashStrategy()"
    assert repr(MaglevStrategy()) == "MaglevStrategy()"
    assert repr(RendezvousStrategy()) == "RendezvousStrategy()"
    assert (
        repr(RingHashStrategy(hash="ketama", vnodes=10, balance_factor=1.25))
        == "RingHashStrategy(hash='ketama', vnodes=10, balance_factor=1.25)"
    )
    assert repr(RingHashStrategy(hash="ketama", vnodes=40)) == "RingHashStrategy(hash='ketama')"
    assert repr(MaglevStrategy(table_size=101)) == "MaglevStrategy(table_size=101)"
    assert repr(RendezvousStrategy(balance_factor=2)) == "RendezvousStrategy(balance_factor=2.0)"
    # An rng's repr is a memory address: it would make reprs differ from run to run.
    assert repr(MaglevStrategy(rng=random.Random(1))) == "MaglevStrategy()"


# -- bounded loads ----------------------------------------------------------------------------


def capacity(factor: float, total_after: int, servers: int) -> int:
    """The bound at an admission: ceil(c * (in flight before + 1) / n)."""
    return math.ceil(factor * total_after / servers)


def test_get_ignores_the_bound(make: Callable[..., Strategy]) -> None:
    lb = balancer(make(balance_factor=1.1))
    own = lb.get("hot")
    leases = [lb.acquire("hot") for _ in range(40)]
    assert lb.get("hot") == own
    assert len({lease.server for lease in leases}) > 1
    for lease in leases:
        lease.release()


def test_leases_fill_the_keys_servers_in_the_strategys_order(
    make: Callable[..., Strategy],
) -> None:
    factor = 1.5
    lb = balancer(make(balance_factor=factor), SERVERS[:5])
    snapshot = Snapshot.of(tuple(Endpoint(s) for s in lb.servers), lambda: 0.0)
    picker = make().build(snapshot)
    assert isinstance(picker, BoundedPicker)
    order = list(picker.candidates("hot"))
    assert sorted(order) == sorted(SERVERS[:5])
    assert order[0] == lb.get("hot")
    loads = dict.fromkeys(order, 0)
    for total in range(60):
        limit = math.ceil(factor * (total + 1) / len(order))
        expected = next(server for server in order if loads[server] < limit)
        assert lb.acquire("hot").server == expected
        loads[expected] += 1
        assert max(loads.values()) <= limit


def test_weighted_capacity_scales_with_weight(make: Callable[..., Strategy]) -> None:
    lb = LoadBalancer(strategy=make(balance_factor=1.25))
    lb.register("big", 3)
    lb.register("small", 1)
    leases = [lb.acquire("hot") for _ in range(400)]
    stats = lb.stats()
    # Each server stays within ceil(1.25 * 400 * weight / total weight): 375 and 125.
    assert stats["big"].in_flight <= math.ceil(1.25 * 400 * 3 / 4)
    assert stats["small"].in_flight <= math.ceil(1.25 * 400 * 1 / 4)
    for lease in leases:
        lease.release()


def test_balance_factor_off_lets_a_hot_key_pile_up(make: Callable[..., Strategy]) -> None:
    lb = balancer(make())
    leases = [lb.acquire("hot") for _ in range(30)]
    assert {lease.server for lease in leases} == {lb.get("hot")}
    for lease in leases:
        lease.release()


def test_admission_lock_is_handed_to_the_next_picker(make: Callable[..., Strategy]) -> None:
    strategy = make(balance_factor=1.5)
    endpoints = tuple(Endpoint(s) for s in SERVERS)
    first = strategy.build(Snapshot.of(endpoints, lambda: 0.0))
    second = strategy.build(Snapshot.of(endpoints[:-1], lambda: 0.0), first)
    other = strategy.build(Snapshot.of(endpoints, lambda: 0.0))
    assert isinstance(first, BoundedPicker)
    assert isinstance(second, BoundedPicker)
    assert isinstance(other, BoundedPicker)
    assert first._admission is not None
    assert second._admission is not None
    assert other._admission is not None
    assert second._admission._lock is first._admission._lock
    assert other._admission._lock is not first._admission._lock


@pytest.fixture
def admissions(monkeypatch: pytest.MonkeyPatch) -> list[Endpoint]:
    """Every endpoint whose ``begin`` ran, recorded as it ran (under the admission lock)."""
    started: list[Endpoint] = []
    original = Endpoint.begin

    def recording_start(self: Endpoint) -> None:
        original(self)
        started.append(self)

    monkeypatch.setattr(Endpoint, "begin", recording_start)
    return started


def test_bound_holds_at_every_admission_under_real_threads(
    make: Callable[..., Strategy], monkeypatch: pytest.MonkeyPatch
) -> None:
    factor, threads, per_thread, rounds = 1.25, 8, 3, 15
    lb = balancer(make(balance_factor=factor))
    violations: list[str] = []
    original = Endpoint.begin

    def checking_start(self: Endpoint) -> None:
        original(self)
        # Runs under the admission lock: no other admission can interleave, and in this phase
        # nothing is released, so the totals read here are exact.
        loads = {name: stats.in_flight for name, stats in lb.stats().items()}
        limit = capacity(factor, sum(loads.values()), len(loads))
        if loads[self.server] > limit:
            violations.append(f"{self.server}: {loads[self.server]} > {limit}")

    monkeypatch.setattr(Endpoint, "begin", checking_start)
    acquire_phase = threading.Barrier(threads)
    release_phase = threading.Barrier(threads)

    def worker(index: int) -> None:
        for round_ in range(rounds):
            acquire_phase.wait()
            # Mostly one hot key, so the bound, not the hash, decides where requests go.
            keys = ["hot", "hot", f"k{index}-{round_}"][:per_thread]
            leases = [lb.acquire(key) for key in keys]
            release_phase.wait()
            for lease in leases:
                lease.release()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert violations == []
    stats = lb.stats()
    assert all(s.in_flight == 0 for s in stats.values())
    assert sum(s.picks for s in stats.values()) == threads * per_thread * rounds
    assert len([s for s in stats.values() if s.picks]) >= 3  # the hot key spilled over


def test_bound_holds_with_concurrent_releases_and_pool_changes(
    make: Callable[..., Strategy], admissions: list[Endpoint]
) -> None:
    factor, threads, per_thread = 1.5, 6, 2
    lb = balancer(make(balance_factor=factor))
    # At most threads * per_thread leases exist at once, so no admission may push a server
    # above ceil(c * that / n), whatever the interleaving of releases and pool changes.
    peaks: list[int] = []
    stop = threading.Event()
    start = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        start.wait()
        for i in range(300):
            leases = [lb.acquire(f"hot-{i % 3}") for _ in range(per_thread)]
            peaks.append(max(s.in_flight for s in lb.stats().values()))
            for lease in leases:
                lease.release()

    def churn() -> None:
        start.wait()
        for _ in range(20):
            if stop.is_set():
                return
            lb.unregister(SERVERS[-1])
            lb.register(SERVERS[-1])

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    changer = threading.Thread(target=churn)
    changer.start()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    stop.set()
    changer.join()
    assert len(admissions) == threads * per_thread * 300
    assert max(peaks) <= math.ceil(factor * threads * per_thread / (len(SERVERS) - 1))
    assert all(s.in_flight == 0 for s in lb.stats().values())


def test_any_registrable_server_name_works(make: Callable[..., Strategy]) -> None:
    names = ["plain", "ünï-cødé", "lone-\ud800-surrogate", "with {braces} and %s", " "]
    lb = balancer(make(), names)
    assert {lb.get(key) for key in KEYS} == set(names)
