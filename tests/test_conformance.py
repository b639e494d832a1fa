"""Behaviour every strategy must share, run against each one in conformance.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from loadbalancer import (
    Endpoint,
    Key,
    LoadBalancer,
    NoServersAvailableError,
    Picker,
    Snapshot,
    Strategy,
)

StrategyFactory = Callable[[], Strategy]


def balancer(make_strategy: StrategyFactory, *servers: str, max_servers: int = 10) -> LoadBalancer:
    lb = LoadBalancer(strategy=make_strategy(), max_servers=max_servers)
    for server in servers:
        assert lb.register(server)
    return lb


def test_empty_pool_raises(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy)
    with pytest.raises(NoServersAvailableError):
        lb.get()


def test_pool_emptied_again_raises(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a")
    assert lb.unregister("a")
    with pytest.raises(NoServersAvailableError):
        lb.get()


def test_single_server_is_always_picked(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "only")
    assert {lb.get() for _ in range(50)} == {"only"}


def test_picks_are_members_and_every_server_is_reached(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b", "c", "d")
    picks = Counter(lb.get() for _ in range(400))
    assert set(picks) == {"a", "b", "c", "d"}


def test_unregistered_server_is_never_picked(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b", "c")
    for _ in range(5):
        lb.get()
    assert lb.unregister("b")
    assert "b" not in {lb.get() for _ in range(200)}


def test_registered_server_is_reached(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b")
    lb.get()
    assert lb.register("c")
    assert "c" in {lb.get() for _ in range(200)}


def test_replace_switches_to_exactly_the_new_set(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b", "c")
    lb.replace(["c", "d"])
    assert {lb.get() for _ in range(200)} == {"c", "d"}


@pytest.mark.parametrize("bad_key", [42, 1.5, object(), ["a"]])
def test_key_of_wrong_type_is_rejected(make_strategy: StrategyFactory, bad_key: object) -> None:
    lb = balancer(make_strategy, "a", "b")
    with pytest.raises(TypeError, match="key"):
        lb.get(bad_key)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["user-1", b"user-1"])
def test_str_and_bytes_keys_are_accepted(make_strategy: StrategyFactory, key: str | bytes) -> None:
    lb = balancer(make_strategy, "a", "b")
    assert lb.get(key) in {"a", "b"}
    assert lb.get(key=key) in {"a", "b"}


def snapshot(*servers: str) -> Snapshot:
    return Snapshot.of(tuple(Endpoint(s) for s in servers), time.monotonic)


def test_build_accepts_a_previous_picker_of_another_strategy(
    make_strategy: StrategyFactory,
) -> None:
    class Fixed(Picker):
        def pick(self, key: Key | None = None) -> str:
            return "x"

    picker = make_strategy().build(snapshot("a", "b"), Fixed())
    assert {picker.pick() for _ in range(50)} <= {"a", "b"}


def test_build_continues_from_its_own_previous_picker(make_strategy: StrategyFactory) -> None:
    strategy = make_strategy()
    first = strategy.build(snapshot("a", "b", "c"))
    first.pick()
    second = strategy.build(snapshot("a", "c"), first)
    assert {second.pick() for _ in range(50)} == {"a", "c"}


def test_one_strategy_instance_can_serve_two_balancers(make_strategy: StrategyFactory) -> None:
    strategy = make_strategy()
    first = LoadBalancer(strategy=strategy)
    second = LoadBalancer(strategy=strategy)
    first.register("a")
    second.register("z")
    assert {first.get() for _ in range(20)} == {"a"}
    assert {second.get() for _ in range(20)} == {"z"}


def test_concurrent_picks_return_members(make_strategy: StrategyFactory) -> None:
    servers = {"a", "b", "c", "d", "e"}
    lb = balancer(make_strategy, *sorted(servers))
    start = threading.Barrier(8)
    results: list[Counter[str]] = []

    def worker() -> None:
        start.wait()
        results.append(Counter(lb.get() for _ in range(2000)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(results, Counter())
    assert set(total) == servers
    assert sum(total.values()) == 8 * 2000
