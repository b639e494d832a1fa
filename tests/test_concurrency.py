"""Races with real threads: linearisable membership, exactly-one register, capacity."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from loadbalancer import LoadBalancer, NoServersAvailableError, Strategy

StrategyFactory = Callable[[], Strategy]


def run_threads(count: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def unregister_while_reading(lb: LoadBalancer) -> list[str]:
    """Unregister "a" while four threads pick; return the picks of "a" that began after."""
    removed = threading.Event()
    running = threading.Barrier(5)
    violations: list[str] = []

    def reader(_: int) -> None:
        picks_after = 0
        running.wait()
        while picks_after < 300:
            # The flag is read before get() starts: if it was already set, the unregister
            # had returned before this get began.
            after = removed.is_set()
            server = lb.get()
            if after:
                picks_after += 1
                if server == "a":
                    violations.append(server)

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in readers:
        t.start()
    running.wait()  # the readers are picking from the full pool now
    assert lb.unregister("a")
    removed.set()
    for t in readers:
        t.join()
    return violations


def test_no_get_after_unregister_returns_the_removed_server(
    make_strategy: StrategyFactory,
) -> None:
    for _ in range(10):
        lb = LoadBalancer(strategy=make_strategy())
        for server in ("a", "b", "c"):
            lb.register(server)
        assert unregister_while_reading(lb) == []


def register_from_sixteen_threads(lb: LoadBalancer, server: str) -> list[bool]:
    start = threading.Barrier(16)
    results: list[bool] = []

    def register(_: int) -> None:
        start.wait()
        results.append(lb.register(server))

    run_threads(16, register)
    return results


def test_exactly_one_of_sixteen_concurrent_registers_wins() -> None:
    for _ in range(50):
        lb = LoadBalancer()
        results = register_from_sixteen_threads(lb, "same")
        assert sorted(results) == [False] * 15 + [True]
        assert lb.servers == ("same",)


def test_capacity_is_never_exceeded_even_transiently() -> None:
    lb = LoadBalancer(max_servers=4)
    stop = threading.Event()
    seen_sizes: set[int] = set()

    def observer() -> None:
        while not stop.is_set():
            seen_sizes.add(len(lb))
            seen_sizes.add(len(lb.servers))

    watch = threading.Thread(target=observer)
    watch.start()
    start = threading.Barrier(8)
    wins: list[str] = []

    def churn(i: int) -> None:
        start.wait()
        for round_ in range(100):
            name = f"t{i}-{round_ % 5}"
            if lb.register(name):
                wins.append(name)
                lb.unregister(name)

    run_threads(8, churn)
    stop.set()
    watch.join()
    assert max(seen_sizes) <= 4
    assert wins  # the pool did fill and drain, so the bound was exercised


def test_mixed_operations_from_many_threads(make_strategy: StrategyFactory) -> None:
    mixed_operations(LoadBalancer(strategy=make_strategy(), max_servers=5), seconds=0.25)


def test_mixed_operations_for_seconds_with_the_default_strategy() -> None:
    mixed_operations(LoadBalancer(max_servers=5), seconds=2.0)


def mixed_operations(lb: LoadBalancer, seconds: float) -> None:
    """Register, unregister, replace and get from six threads; only empty-pool errors."""
    names = [f"s{i}" for i in range(8)]
    ever_registered: set[str] = set()
    errors: list[BaseException] = []
    picked: set[str] = set()
    deadline = time.monotonic() + seconds
    give_up = deadline + 30.0
    start = threading.Barrier(6)

    def mutate(i: int) -> None:
        start.wait()
        j = i
        while time.monotonic() < deadline:
            name = names[j % len(names)]
            ever_registered.add(name)  # recorded before it can be picked
            lb.register(name)
            lb.unregister(names[(j * 7 + 3) % len(names)])
            if j % 50 == 0:
                ever_registered.update(names[j % 3 : j % 3 + 3])  # before it can be picked
                lb.replace(names[j % 3 : j % 3 + 3])
            j += 1
        ever_registered.add(names[i])
        lb.register(names[i])  # a pool left empty would leave nothing to pick

    def read(_: int) -> None:
        start.wait()
        # Past the deadline until a pick has succeeded (the mutators stop then, so the pool
        # settles), within a hard cap: a loaded machine may starve the first seconds.
        while time.monotonic() < deadline or (not picked and time.monotonic() < give_up):
            try:
                picked.add(lb.get())
                assert len(lb) <= 5
            except NoServersAvailableError:
                pass
            except BaseException as error:  # anything else is a failure to report
                errors.append(error)
                return

    def work(i: int) -> None:
        (mutate if i < 2 else read)(i)

    run_threads(6, work)
    assert errors == []
    assert picked  # reads did succeed
    assert picked <= ever_registered


@pytest.mark.parametrize("threads", [4])
def test_concurrent_replace_and_register_never_exceed_capacity(threads: int) -> None:
    lb = LoadBalancer(max_servers=3)
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait()
        for n in range(200):
            if i % 2:
                lb.replace([f"r{n % 4}", f"r{(n + 1) % 4}", f"r{(n + 2) % 4}"])
            else:
                lb.register(f"x{n}")
            assert len(lb) <= 3

    run_threads(threads, work)
    assert len(lb) <= 3
