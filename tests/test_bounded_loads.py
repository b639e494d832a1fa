"""Bounded loads: the running total and the lazy walks admit what summing and sorting did."""

from __future__ import annotations

import math
import random
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import (
    LoadBalancer,
    MaglevStrategy,
    RendezvousStrategy,
    RingHashStrategy,
    Strategy,
)
from loadbalancer._lease import Lease
from loadbalancer._snapshot import Endpoint, Snapshot
from loadbalancer.strategies.hashing._bounded import Admission, BoundedPicker

FACTORIES: dict[str, Callable[[float], Strategy]] = {
    "maglev": lambda factor: MaglevStrategy(table_size=1009, balance_factor=factor),
    "rendezvous": lambda factor: RendezvousStrategy(balance_factor=factor),
    "ring": lambda factor: RingHashStrategy(vnodes=20, balance_factor=factor),
}


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Make the interpreter switch threads every few bytecodes, so races show up."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def bounded(lb: LoadBalancer) -> tuple[BoundedPicker, Admission]:
    picker = lb._view.picker
    assert isinstance(picker, BoundedPicker)
    assert picker._admission is not None
    return picker, picker._admission


def settled_total(admission: Admission) -> int:
    """The running total, brought up to date as the next admission would."""
    with admission._lock:
        admission._limit()
        return admission._loads.total


def in_flight(lb: LoadBalancer) -> int:
    """The requests in flight on the servers the current picker may pick."""
    eligible = set(lb._view.plan.eligible)
    return sum(e.in_flight for e in lb._view.endpoints.values() if e in eligible)


# -- the reference: the code this replaced -----------------------------------------------------


def old_maglev_order(table: list[str], start: int) -> list[str]:
    """Distinct servers along the table from ``start``, as the walk over islice did."""
    order: list[str] = []
    for server in table[start:] + table[:start]:
        if server not in order:
            order.append(server)
    return order


def old_rendezvous_order(servers: tuple[str, ...], scores: list[float]) -> list[str]:
    """All servers by descending score: the full sort, ties in name order."""
    return [servers[i] for i in sorted(range(len(scores)), key=scores.__getitem__, reverse=True)]


def rendezvous_scores(key: str, weights: dict[str, float]) -> tuple[tuple[str, ...], list[float]]:
    """The scores by definition (name order), independent of the picker's own code."""
    names = tuple(sorted(weights))
    hashes = [
        xxhash.xxh64_intdigest(key.encode(), xxhash.xxh64_intdigest(n.encode())) for n in names
    ]
    if len(set(weights.values())) == 1:
        return names, [*hashes]
    units = [((h >> 11) | 1) / 2**53 for h in hashes]
    return names, [-weights[n] / math.log(u) for n, u in zip(names, units, strict=True)]


def old_admit(
    order: list[str], loads: dict[str, int], weights: dict[str, float], factor: float
) -> str:
    """The old admission: sum every in-flight count, then the first server under its bound."""
    count = len(weights)
    total = math.fsum(weights.values())
    limit = factor * (sum(loads.values()) + 1) / count
    for server in order:
        weight = weights[server]
        share = 1.0 if weight * count == total else weight * count / total
        if loads[server] < math.ceil(limit * share):
            return server
    return order[0]


def old_order(name: str, lb: LoadBalancer, key: str, weights: dict[str, float]) -> list[str]:
    picker, _ = bounded(lb)
    if name == "maglev":
        table: list[str] = picker._table  # type: ignore[attr-defined]
        return old_maglev_order(table, xxhash.xxh64_intdigest(key.encode()) % len(table))
    if name == "rendezvous":
        return old_rendezvous_order(*rendezvous_scores(key, weights))
    # The ring's walk is the ring owner's; here it checks the admission around it.
    return list(picker.candidates(key))


pools = st.dictionaries(
    st.text("abcdefgh0123456789.:-", min_size=1, max_size=10),
    st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0, 3.0]),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=60, deadline=None)
@given(pool=pools, factor=st.sampled_from([1.01, 1.1, 1.25, 1.5, 2.0]), data=st.data())
def test_admits_the_same_servers_as_summing_and_sorting(
    name: str, pool: dict[str, float], factor: float, data: st.DataObject
) -> None:
    lb = LoadBalancer(strategy=FACTORIES[name](factor), max_servers=len(pool))
    lb.replace(pool)
    held: list[Lease] = []
    for step in range(data.draw(st.integers(1, 60))):
        if len(held) > 0 and data.draw(st.booleans()):
            held.pop(data.draw(st.integers(0, len(held) - 1))).release()
            continue
        key = data.draw(st.sampled_from(["hot", "hot", "warm", f"k{step}"]))
        loads = {server: lb._view.endpoints[server].in_flight for server in pool}
        expected = old_admit(old_order(name, lb, key, pool), loads, pool, factor)
        lease = lb.acquire(key)
        assert lease.server == expected
        held.append(lease)
    assert settled_total(bounded(lb)[1]) == in_flight(lb) == len(held)


# -- the walks, lazily, in exactly the old order ------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 7, 60])
def test_maglev_walk_is_the_old_walk(count: int) -> None:
    lb = LoadBalancer(strategy=MaglevStrategy(table_size=1009, balance_factor=1.5), max_servers=60)
    lb.replace([f"m{i}" for i in range(count)])
    picker, _ = bounded(lb)
    table: list[str] = picker._table  # type: ignore[attr-defined]
    for start in [0, 1, 500, 1007, 1008]:
        walk: Iterator[str] = picker._walk(start)  # type: ignore[attr-defined]
        assert list(walk) == old_maglev_order(table, start)
    for key in ["a", "hot", "k-17"]:
        start = xxhash.xxh64_intdigest(key.encode()) % 1009
        assert list(picker.candidates(key)) == old_maglev_order(table, start)


@pytest.mark.parametrize("weighted", [False, True])
def test_rendezvous_walk_is_the_full_sort(weighted: bool) -> None:
    weights = {f"r{i}": (1.0 + i % 3 if weighted else 1.0) for i in range(40)}
    lb = LoadBalancer(strategy=RendezvousStrategy(balance_factor=1.5), max_servers=40)
    lb.replace(weights)
    picker, _ = bounded(lb)
    for key in [f"key-{i}" for i in range(20)]:
        assert list(picker.candidates(key)) == old_rendezvous_order(
            *rendezvous_scores(key, weights)
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=30))
def test_rendezvous_ties_come_in_name_order_as_the_stable_sort(scores: list[int]) -> None:
    servers = tuple(f"s{i:02}" for i in range(len(scores)))
    lb = LoadBalancer(strategy=RendezvousStrategy(balance_factor=1.5), max_servers=40)
    lb.replace(servers)
    picker, _ = bounded(lb)
    by_score: Iterator[str] = picker._by_score(list(scores))  # type: ignore[attr-defined]
    assert list(by_score) == old_rendezvous_order(servers, list(scores))


# -- the running total ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_total_survives_rebuilds_and_drops_servers_that_leave(name: str) -> None:
    lb = LoadBalancer(strategy=FACTORIES[name](1.25))
    lb.replace(["a", "b", "c", "d"])
    held = [lb.acquire(f"k{i}") for i in range(12)]
    _, first = bounded(lb)
    assert settled_total(first) == 12
    leaving = lb._view.endpoints["d"]
    lb.unregister("d")  # a rebuild: the new picker shares the count
    _, second = bounded(lb)
    assert second._loads is first._loads
    assert leaving.listener is None
    assert settled_total(second) == in_flight(lb) == 12 - leaving.in_flight
    for lease in held:
        lease.release()  # the leases on "d" end too, and change nothing counted
    assert settled_total(second) == 0
    assert all(e.listener is second._loads.changed for e in lb._view.endpoints.values())
    lb.register("d")
    assert lb._view.endpoints["d"].listener is second._loads.changed


class _Held:
    """What ``Endpoint._withdraw`` needs of a lease."""

    released = False


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_an_ejected_server_finishes_its_leases_outside_the_total(name: str) -> None:
    strategy = FACTORIES[name](1.25)
    endpoints = tuple(Endpoint(s) for s in "abcd")
    by_name = {e.server: e for e in endpoints}
    first = strategy.build(Snapshot.of(endpoints, lambda: 0.0))
    for i in range(10):
        first.acquire(f"k{i}", by_name)
    victim = max(endpoints, key=lambda e: e.in_flight)
    others = tuple(e for e in endpoints if e is not victim)
    # Ejected: the next picker's snapshot leaves it out, but its leases are still running.
    second = strategy.build(Snapshot.of(others, lambda: 0.0), first)
    assert isinstance(second, BoundedPicker)
    assert second._admission is not None
    assert victim.listener is None
    held = 10 - victim.in_flight
    assert victim.in_flight > 0
    assert settled_total(second._admission) == sum(e.in_flight for e in others) == held
    while victim.in_flight:
        victim._withdraw(_Held())
    assert second.acquire("hot", by_name) is not victim
    assert settled_total(second._admission) == sum(e.in_flight for e in others) == held + 1
    # Back in the pool: counted again, with what it holds then.
    victim.begin()
    third = strategy.build(Snapshot.of(endpoints, lambda: 0.0), second)
    assert isinstance(third, BoundedPicker)
    assert third._admission is not None
    assert victim.listener is third._admission._loads.changed
    assert settled_total(third._admission) == sum(e.in_flight for e in endpoints)


def test_listeners_of_another_balancer_are_taken_over_not_shared() -> None:
    strategy = MaglevStrategy(table_size=1009, balance_factor=1.5)
    endpoints = tuple(Endpoint(s) for s in "abc")
    first = strategy.build(Snapshot.of(endpoints, lambda: 0.0))
    other = strategy.build(Snapshot.of(endpoints, lambda: 0.0))
    assert isinstance(first, BoundedPicker)
    assert isinstance(other, BoundedPicker)
    assert first._admission is not None
    assert other._admission is not None
    assert other._admission._loads is not first._admission._loads
    assert all(e.listener is other._admission._loads.changed for e in endpoints)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.usefixtures("switch_often")
def test_total_is_exact_at_every_admission_under_real_threads(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    factor, threads, per_thread, rounds = 1.25, 8, 4, 12
    lb = LoadBalancer(strategy=FACTORIES[name](factor))
    servers = [f"s{i}" for i in range(6)]
    lb.replace(servers)
    problems: list[str] = []
    original = Endpoint.begin

    def checking_begin(self: Endpoint) -> None:
        # Called under the admission lock, in a phase where nothing is released: the running
        # total must be the true sum, and the server chosen must be under its bound.
        _, admission = bounded(lb)
        true = sum(e.in_flight for e in lb._view.endpoints.values())
        if admission._loads.total != true:
            problems.append(f"total {admission._loads.total} != {true}")
        if self.in_flight >= math.ceil(factor * (true + 1) / len(servers)):
            problems.append(f"{self.server}: {self.in_flight} at a total of {true}")
        original(self)

    monkeypatch.setattr(Endpoint, "begin", checking_begin)
    # The main thread joins each phase: it checks the total while every lease is held.
    acquire_phase = threading.Barrier(threads + 1)
    held_phase = threading.Barrier(threads + 1)
    release_phase = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        rng = random.Random(index)
        for _ in range(rounds):
            acquire_phase.wait()
            keys = ["hot", "hot", f"k{rng.random()}", "warm"][:per_thread]
            leases = [lb.acquire(key) for key in keys]
            held_phase.wait()
            release_phase.wait()
            for lease in leases:
                lease.release()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for _ in range(rounds):
        acquire_phase.wait()
        held_phase.wait()
        if settled_total(bounded(lb)[1]) != threads * per_thread:
            problems.append("total while held")
        release_phase.wait()
    for thread in pool:
        thread.join()
    assert problems == []
    assert settled_total(bounded(lb)[1]) == in_flight(lb) == 0
    assert sum(e.picks for e in lb._view.endpoints.values()) == threads * per_thread * rounds


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.usefixtures("switch_often")
def test_total_stays_exact_with_racing_releases_and_pool_changes(name: str) -> None:
    lb = LoadBalancer(strategy=FACTORIES[name](1.5))
    servers = [f"s{i}" for i in range(8)]
    lb.replace(servers)
    threads = 6
    start = threading.Barrier(threads + 1)
    held: list[list[Lease]] = [[] for _ in range(threads)]

    def worker(index: int) -> None:
        rng = random.Random(index)
        start.wait()
        mine = held[index]
        for i in range(400):
            if mine and rng.random() < 0.5:
                mine.pop(rng.randrange(len(mine))).release(rng.choice([True, None]))
            else:
                mine.append(lb.acquire(rng.choice(["hot", "hot", f"k{i}"])))

    def churn() -> None:
        start.wait()
        for i in range(30):
            lb.unregister(servers[i % 3])
            lb.register(servers[i % 3])

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    pool.append(threading.Thread(target=churn))
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    # Some leases are still held (on servers that may have left and come back as new ones).
    assert settled_total(bounded(lb)[1]) == in_flight(lb)
    for mine in held:
        for lease in mine:
            lease.release()
    assert settled_total(bounded(lb)[1]) == in_flight(lb) == 0


def test_a_build_that_fails_leaves_the_published_total_and_listeners_alone() -> None:
    # A ketama ring cannot be scaled down: too many points for the new pool is refused, after
    # the balancer's own checks, by the strategy's build.
    lb = LoadBalancer(strategy=RingHashStrategy(hash="ketama", vnodes=65_536, balance_factor=1.25))
    lb.replace(["a", "b"])
    held = [lb.acquire(f"k{i}") for i in range(6)]
    _, admission = bounded(lb)
    with pytest.raises(ValueError, match="ketama ring"):
        lb.replace(["c", "d", "e", "f", "g"])  # none of the published pool stays
    assert lb.servers == ("a", "b")
    assert all(e.listener is admission._loads.changed for e in lb._view.endpoints.values())
    held.append(lb.acquire("k6"))
    assert settled_total(admission) == in_flight(lb) == 7
    for lease in held:
        lease.release()
    assert settled_total(admission) == 0
