"""The least-connections index: exact against a scan, fair on ties, right under threads."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence, Set
from contextlib import contextmanager

from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import Lease, LeastConnectionsStrategy, LoadBalancer
from loadbalancer._snapshot import Endpoint, Snapshot
from loadbalancer.strategies._load_index import LoadIndex
from loadbalancer.strategies.least_loaded import _IndexedLeastConnectionsPicker

from .fakes import FakeClock

WEIGHTS = [1, 2, 3, 4, 0.5, 1.5, 3.0]  # 3 and 3.0 are one class; 1.5 ties 3 at (l + 1) * 2


def balancer(weights: dict[str, float], seed: int = 1) -> LoadBalancer:
    lb = LoadBalancer(
        strategy=LeastConnectionsStrategy(rng=random.Random(seed)),
        max_servers=max(len(weights), 64),
        clock=FakeClock(),
        panic_threshold=0,
    )
    lb.replace(weights)
    return lb


def picker_of(lb: LoadBalancer) -> _IndexedLeastConnectionsPicker:
    picker = lb.picker
    assert isinstance(picker, _IndexedLeastConnectionsPicker)
    return picker


def minimal(picker: _IndexedLeastConnectionsPicker, exclude: Set[str] = frozenset()) -> set[str]:
    """The servers a scan calls least loaded per unit of weight (all excluded: of all)."""
    pairs = [
        (e, w)
        for e, w in zip(picker._endpoints, picker._weights, strict=True)
        if e.server not in exclude
    ] or list(zip(picker._endpoints, picker._weights, strict=True))
    keys = {e.server: (e.load + 1) / w for e, w in pairs}
    lowest = min(keys.values())
    return {server for server, key in keys.items() if key == lowest}


def check_index(picker: _IndexedLeastConnectionsPicker) -> None:
    """Assert the index holds exactly the picker's endpoints, each at its current load."""
    index: LoadIndex = picker._index
    assert index.owner is picker
    expected = dict(zip(picker._endpoints, picker._weights, strict=True))
    assert set(index._entries) == {e.server for e in expected}
    for endpoint, weight in expected.items():
        entry = index._entries[endpoint.server]
        assert entry.endpoint is endpoint
        assert entry.cls.weight == weight
        assert entry.load == endpoint.load
        assert entry.cls.buckets[entry.load][entry.slot] is endpoint.server
        assert endpoint.listener is index.listener
    assert set(index._classes) == set(expected.values())
    held = 0
    for weight, cls in index._classes.items():
        assert cls.weight == weight
        assert all(cls.buckets.values())
        assert cls.least == min(cls.buckets)
        held += sum(map(len, cls.buckets.values()))
    assert held == len(expected)
    keys = {cls: (cls.least + 1) / cls.weight for cls in index._classes.values()}
    lowest = min(keys.values())
    tied = [cls.buckets[cls.least] for cls, key in keys.items() if key == lowest]
    assert sorted(map(id, index.best)) == sorted(map(id, tied))
    assert index.single is (tied[0] if len(tied) == 1 else None)


class Token:
    """A lease as ``Endpoint._complete`` sees one: ended once."""

    released = False


def end(endpoint: Endpoint, ok: bool | None) -> None:
    """End one request in flight on ``endpoint`` with ``ok`` as its outcome."""
    endpoint._complete(Token(), ok, None, 0.0, 10.0, 1.0)


# -- exact against a scan -----------------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["begin", "end", "fail", "succeed", "lease", "release", "weight", "health", "join"]
        ),
        st.integers(0, 15),
        st.sampled_from([True, False, None]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    weights=st.lists(st.sampled_from(WEIGHTS), min_size=1, max_size=10),
    ops=operations,
    excludes=st.lists(st.sets(st.integers(0, 12)), min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
)
def test_the_index_picks_what_a_scan_calls_least(
    weights: list[float],
    ops: list[tuple[str, int, bool | None]],
    excludes: list[set[int]],
    seed: int,
) -> None:
    lb = balancer({f"s{i}": w for i, w in enumerate(weights)}, seed)
    leases: list[Lease] = []
    rng = random.Random(seed)
    joined = len(weights)
    for kind, at, ok in ops:
        endpoints = list(lb._view.endpoints.values())
        endpoint = endpoints[at % len(endpoints)]
        spare = not endpoint.healthy or sum(e.healthy for e in endpoints) > 1  # one stays
        if kind == "begin":
            endpoint.begin()
        elif kind == "end" and endpoint.in_flight:
            end(endpoint, ok)
        elif kind == "fail":
            lb.done(endpoint.server, ok=False)
        elif kind == "succeed":
            lb.done(endpoint.server, ok=True)
        elif kind == "lease":
            leases.append(lb.acquire())
        elif kind == "release" and leases:
            leases.pop(at % len(leases)).release(ok)
        elif kind == "weight":
            lb.set_weight(endpoint.server, rng.choice(WEIGHTS))
        elif kind == "health" and spare:
            lb.set_healthy(endpoint.server, not endpoint.healthy)
        elif kind == "join" and ok is not None:
            if ok:
                lb.register(f"s{joined}", rng.choice(WEIGHTS))
                joined += 1
            elif spare:
                lb.unregister(endpoint.server)
        picker = picker_of(lb)
        assert lb.get() in minimal(picker)
    picker = picker_of(lb)
    check_index(picker)
    for numbers in excludes:
        exclude = frozenset(f"s{i}" for i in numbers)
        for _ in range(5):
            assert lb.get(exclude=exclude) in minimal(picker, exclude)
            assert lb.get() in minimal(picker)
    for lease in leases:
        lease.release()
    check_index(picker_of(lb))


def test_a_replaced_picker_scans_its_own_pool() -> None:
    lb = balancer({"a": 1, "b": 1})
    old = picker_of(lb)
    lb._view.endpoints["a"].begin()
    lb.register("c")  # idle, and not in the old picker's pool: it must never answer c
    assert picker_of(lb) is not old
    assert picker_of(lb)._index is old._index
    assert {old.pick() for _ in range(50)} == {"b"}
    assert {old.pick_excluding(None, frozenset({"b"})) for _ in range(50)} == {"a"}
    assert {lb.get() for _ in range(50)} == {"b", "c"}


def test_a_new_index_takes_the_endpoints_from_the_old_one() -> None:
    lb = balancer({"a": 1, "b": 1})
    old = picker_of(lb)
    strategy = lb.strategy
    snapshot = Snapshot.of(old._endpoints, time.monotonic, old._weights)
    taker = strategy.build(snapshot)  # no previous: a fresh index, which takes the listeners
    assert isinstance(taker, _IndexedLeastConnectionsPicker)
    assert old._index.owner is None  # the old one is retired: its picker scans
    old._endpoints[0].begin()
    check_index(taker)
    assert {old.pick() for _ in range(20)} == {taker.pick() for _ in range(20)} == {"b"}


def test_two_builds_from_one_previous_picker_both_stay_exact() -> None:
    # As when a built picker is never published: the second build finds the index gone to
    # the first, so it builds its own, and the first, displaced, scans.
    lb = balancer({"a": 1, "b": 2, "c": 1})
    previous = picker_of(lb)
    endpoints = previous._endpoints
    strategy = lb.strategy
    first = strategy.build(Snapshot.of(endpoints[:2], time.monotonic), previous)
    second = strategy.build(Snapshot.of(endpoints, time.monotonic, (1, 1, 1)), previous)
    assert isinstance(first, _IndexedLeastConnectionsPicker)
    assert isinstance(second, _IndexedLeastConnectionsPicker)
    assert first._index is previous._index
    assert second._index is not first._index
    assert first._index.owner is None
    endpoints[1].begin()
    check_index(second)
    assert {second.pick() for _ in range(50)} == {"a", "c"}  # b: (1 + 1) / 1 at weight 1
    # Its own pool only, a and b, with b at (1 + 1) / 2: a tie.
    assert {first.pick() for _ in range(50)} == {"a", "b"}
    assert {previous.pick() for _ in range(50)} == {"a", "b", "c"}


def test_tiny_weights_are_scanned_with_infinite_keys_tied() -> None:
    # (load + 1) / 5e-324 overflows to inf at every load: all of them tie, as in a scan.
    lb = balancer({"a": 5e-324, "b": 5e-324})
    assert not isinstance(lb.picker, _IndexedLeastConnectionsPicker)
    for _ in range(3):
        lb._view.endpoints["a"].begin()
    assert {lb.get() for _ in range(100)} == {"a", "b"}
    assert {lb.get(exclude={"b"}) for _ in range(20)} == {"a"}


def test_an_endpoint_not_indexed_is_ignored() -> None:
    lb = balancer({"a": 1, "b": 1})
    index = picker_of(lb)._index
    stranger = Endpoint("x")
    stranger.begin()
    index.update(stranger)
    check_index(picker_of(lb))


# -- ties ---------------------------------------------------------------------------------

# Chi-square critical values at p = 0.001 by degrees of freedom.
CRITICAL = {3: 16.27, 4: 18.47, 5: 20.52}


def chi_square(counts: Counter[str], servers: Sequence[str]) -> float:
    expected = sum(counts.values()) / len(servers)
    return sum((counts[s] - expected) ** 2 / expected for s in servers)


def tied_across_classes() -> LoadBalancer:
    """Six servers at key 1 in four weight classes (1: one, 2: three, 4: one, 0.5: none)."""
    lb = balancer({"a": 1, "b": 2, "c": 2, "d": 2, "e": 4, "f": 0.5, "g": 3})
    endpoints = lb._view.endpoints
    for server, load in {"b": 1, "c": 1, "d": 1, "e": 3, "f": 2, "g": 2}.items():
        for _ in range(load):
            endpoints[server].begin()
    return lb


def test_ties_across_weight_classes_are_uniform_over_servers() -> None:
    lb = tied_across_classes()
    tied = ["a", "b", "c", "d", "e", "g"]  # f: (2 + 1) / 0.5 = 6
    assert minimal(picker_of(lb)) == set(tied)
    counts = Counter(lb.get() for _ in range(30_000))
    assert set(counts) == set(tied)
    # A class-first draw would give a, e and g a quarter each, b, c and d a twelfth.
    assert chi_square(counts, tied) < CRITICAL[5]


def test_the_locked_path_is_uniform_over_tied_servers_too() -> None:
    lb = tied_across_classes()
    picker = picker_of(lb)
    index = picker._index
    tied = ["a", "b", "c", "d", "e", "g"]
    bits = random.Random(4).getrandbits
    counts = Counter(index.choose(bits) for _ in range(30_000))
    assert set(counts) == set(tied)
    assert chi_square(counts, tied) < CRITICAL[5]
    # A pick that finds its bucket emptied under it (as a racing update leaves it) takes
    # the locked path instead of failing.
    index.single = []
    assert {picker.pick() for _ in range(200)} == set(tied)


def test_retry_ties_across_weight_classes_are_uniform_over_servers() -> None:
    lb = tied_across_classes()
    remaining = ["a", "c", "d", "g"]
    counts = Counter(lb.get(exclude={"b", "e", "zz"}) for _ in range(20_000))
    assert set(counts) == set(remaining)
    assert chi_square(counts, remaining) < CRITICAL[3]


def test_a_retry_walks_past_buckets_holding_only_excluded_servers() -> None:
    lb = balancer({f"s{i}": 1 for i in range(6)})
    endpoints = lb._view.endpoints
    for server, load in {"s2": 1, "s3": 1, "s4": 2, "s5": 2}.items():
        for _ in range(load):
            endpoints[server].begin()
    assert {lb.get(exclude={"s0", "s1"}) for _ in range(100)} == {"s2", "s3"}
    assert {lb.get(exclude={"s0", "s1", "s2", "s3"}) for _ in range(100)} == {"s4", "s5"}
    # Most of a big bucket excluded: rejection gives up and the rest are drawn exactly.
    many = balancer({f"s{i}": 1 for i in range(40)})
    exclude = {f"s{i}" for i in range(38)}
    counts = Counter(many.get(exclude=exclude) for _ in range(4000))
    assert set(counts) == {"s38", "s39"}
    assert 1800 < counts["s38"] < 2200


# -- threads ------------------------------------------------------------------------------


@contextmanager
def switching_often() -> Iterator[None]:
    """Threads switch every microsecond, so updates interleave as much as they can."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def run_together(*targets: Callable[[], None]) -> None:
    """Run each callable on its own thread, released together; re-raise a failure."""
    start = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        start.wait()
        try:
            target()
        except BaseException as error:  # reported to the test below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    with switching_often():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors


def leaser(lb: LoadBalancer, seed: int, count: int) -> Callable[[], None]:
    """Lease and release ``count`` times, keeping some open, failing some; then release all.

    A pick of a server outside its own view would raise here (the lease looks it up).
    """

    def work() -> None:
        rng = random.Random(seed)
        held: list[Lease] = []
        for _ in range(count):
            held.append(lb.acquire())
            if rng.random() < 0.2:
                lb.done(rng.choice(lb.servers), ok=rng.random() < 0.5)
            while len(held) > rng.randrange(1, 6):
                held.pop(rng.randrange(len(held))).release(rng.choice([True, False, None]))
        for lease in held:
            lease.release(True)

    return work


def test_threads_leasing_leave_the_index_agreeing_with_every_load() -> None:
    lb = balancer({f"s{i}": WEIGHTS[i % len(WEIGHTS)] for i in range(50)})
    held = [lb.acquire() for _ in range(30)]  # open throughout, so loads differ at the end
    run_together(*(leaser(lb, seed, 2000) for seed in range(6)))
    check_index(picker_of(lb))
    assert sum(e.in_flight for e in lb._view.endpoints.values()) == len(held)
    for _ in range(20):
        assert lb.get() in minimal(picker_of(lb))
    for lease in held:
        lease.release()
    check_index(picker_of(lb))


def test_rebuilds_while_leases_are_open_leave_the_index_agreeing() -> None:
    lb = balancer({f"s{i}": 1 + i % 4 for i in range(40)})
    held = [lb.acquire() for _ in range(60)]

    def churn() -> None:
        rng = random.Random(7)
        for turn in range(300):
            server = f"s{rng.randrange(40)}"
            action = rng.randrange(4)
            if action == 0:
                lb.unregister(server)
            elif action == 1:
                lb.register(server, rng.choice(WEIGHTS))
            elif action == 2:
                lb.set_healthy(server, turn % 3 != 0)
            else:
                lb.set_weight(server, rng.choice(WEIGHTS))
            if not lb.picker or len(lb._view.plan.eligible) < 2:
                lb.set_healthy(server, True)

    run_together(churn, *(leaser(lb, seed, 1500) for seed in range(4)))
    for server in lb.servers:
        lb.set_healthy(server, True)  # every registered endpoint indexed again
    check_index(picker_of(lb))
    for lease in held:
        lease.release()  # some on servers unregistered meanwhile: ignored by the index
    check_index(picker_of(lb))
    for server in lb.servers:
        lb.done(server, ok=True)  # ends any failures in a row: every load back to 0
    check_index(picker_of(lb))
    assert all(endpoint.load == 0 for endpoint in lb._view.endpoints.values())


def test_a_server_ejected_with_leases_open_returns_at_its_load() -> None:
    lb = balancer({"a": 1, "b": 1, "c": 1})
    on_a = [lb.acquire(exclude={"b", "c"}) for _ in range(3)]
    a = lb._view.endpoints["a"]
    lb.set_healthy("a", False)
    assert a.listener is None  # left the index: its lease ends are not its business
    on_a.pop().release()
    lb.set_healthy("a", True)
    check_index(picker_of(lb))
    assert picker_of(lb)._index._entries["a"].load == 2


class _LoadMovesAfterARead(Endpoint):  # type: ignore[misc]  # Endpoint is final for users
    """An endpoint whose load moves by ``step`` right after its next read: a lease on another
    thread, landing between two reads of the index's."""

    __slots__ = ("_load", "step")

    def __init__(self, server: str) -> None:
        self._load = 0
        super().__init__(server)
        self.step = 0

    @property
    def load(self) -> int:
        value: int = self._load
        self._load, self.step = value + self.step, 0
        return value

    @load.setter
    def load(self, value: int) -> None:
        self._load = value


def test_a_server_indexed_while_its_load_moves_leaves_the_others_indexed() -> None:
    strategy = LeastConnectionsStrategy(random.Random(3))
    staying = [Endpoint(name) for name in ("a", "b", "c")]
    first = strategy.build(Snapshot.of(tuple(staying), time.monotonic))
    joining = _LoadMovesAfterARead("d")
    joining.load = 1  # a lease open on it, which ends while it is being indexed
    joining.step = -1
    second = strategy.build(Snapshot.of((*staying, joining), time.monotonic), first)
    assert isinstance(second, _IndexedLeastConnectionsPicker)
    assert joining.listener is not None
    joining.listener(joining)  # what the lease's end does, once the index's lock is free
    check_index(second)
    assert {second.pick() for _ in range(200)} == {"a", "b", "c", "d"}


def test_many_distinct_weights_stay_exact_through_leases_and_changes() -> None:
    # Slow start gives each ramping server a weight of its own: one class each.
    rng = random.Random(11)
    weights = {f"s{i}": 1.0 + i / 1000 for i in range(120)}
    lb = balancer(weights, seed=5)
    open_leases: list[Lease] = []
    for step in range(3000):
        if open_leases and rng.random() < 0.45:
            open_leases.pop(rng.randrange(len(open_leases))).release(rng.random() < 0.9)
        else:
            open_leases.append(lb.acquire())
        if step % 500 == 0:
            server = rng.choice(list(weights))
            lb.set_weight(server, weights[server] * 2)  # a slow-start step
        picker = picker_of(lb)
        assert picker.pick() in minimal(picker)
        if step % 100 == 0:
            check_index(picker)
    check_index(picker_of(lb))
