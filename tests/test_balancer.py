"""The LoadBalancer contract: membership, introspection and bad input."""

from __future__ import annotations

import math
import random

import pytest

from loadbalancer import (
    LoadBalancer,
    LoadBalancerError,
    NoServersAvailableError,
    Picker,
    RandomStrategy,
    RoundRobinStrategy,
    Snapshot,
    Strategy,
)


def test_brief_example_round_robin() -> None:
    lb = LoadBalancer(strategy=RoundRobinStrategy())
    lb.register("a")
    lb.register("b")
    lb.register("c")
    assert [lb.get() for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_brief_example_full_pool_and_duplicate() -> None:
    lb = LoadBalancer(max_servers=2)
    assert lb.register("a") is True
    assert lb.register("a") is False
    assert lb.register("b") is True
    assert lb.register("c") is False
    assert lb.unregister("x") is False
    assert lb.servers == ("a", "b")


def test_brief_example_empty_pool() -> None:
    with pytest.raises(NoServersAvailableError):
        LoadBalancer().get()


def test_no_servers_error_is_both_a_package_error_and_a_lookup_error() -> None:
    assert issubclass(NoServersAvailableError, LoadBalancerError)
    assert issubclass(NoServersAvailableError, LookupError)


def test_defaults() -> None:
    lb = LoadBalancer()
    assert lb.max_servers == 10
    assert isinstance(lb.strategy, RoundRobinStrategy)
    assert all(lb.register(f"s{i}") for i in range(10))
    assert lb.register("s10") is False
    assert len(lb) == 10


def test_unregister_frees_capacity() -> None:
    lb = LoadBalancer(max_servers=1)
    assert lb.register("a")
    assert not lb.register("b")
    assert lb.unregister("a")
    assert lb.unregister("a") is False
    assert lb.register("b")


def test_introspection() -> None:
    strategy = RandomStrategy(rng=random.Random(1))
    lb = LoadBalancer(strategy=strategy, max_servers=5)
    for server in ("c", "a", "b"):
        lb.register(server)
    assert lb.servers == ("c", "a", "b")
    assert list(lb) == ["c", "a", "b"]
    assert len(lb) == 3
    assert "a" in lb
    assert "z" not in lb
    assert 42 not in lb
    assert lb.strategy is strategy
    assert repr(lb) == (
        "LoadBalancer(strategy=RandomStrategy(), max_servers=5, servers=['c', 'a', 'b'])"
    )


def test_iteration_is_a_snapshot() -> None:
    lb = LoadBalancer()
    lb.register("a")
    lb.register("b")
    seen = []
    for server in lb:
        seen.append(server)
        lb.unregister("b")
    assert seen == ["a", "b"]


def test_replace_sets_exact_membership_and_order() -> None:
    lb = LoadBalancer()
    for server in ("a", "b", "c"):
        lb.register(server)
    lb.replace(["d", "b"])
    assert lb.servers == ("d", "b")
    lb.replace([])
    assert len(lb) == 0
    with pytest.raises(NoServersAvailableError):
        lb.get()


def test_replace_keeps_the_state_of_servers_that_stay() -> None:
    lb = LoadBalancer()
    lb.register("a")
    lb.register("b")
    kept = lb._view.endpoints["b"]
    lb.replace(["b", "c"])
    assert lb._view.endpoints["b"] is kept


def test_replace_accepts_any_iterable() -> None:
    lb = LoadBalancer()
    lb.replace(s for s in ("x", "y"))
    assert lb.servers == ("x", "y")


@pytest.mark.parametrize(
    ("servers", "error", "match"),
    [
        (["a", "b", "a"], ValueError, "duplicates"),
        ([f"s{i}" for i in range(11)], ValueError, "max_servers"),
        (["a", None], TypeError, "servers"),
        (["a", ""], ValueError, "servers"),
        ("ab", TypeError, "servers"),
        (42, TypeError, "servers"),
    ],
)
def test_bad_replace_changes_nothing(servers: object, error: type[Exception], match: str) -> None:
    lb = LoadBalancer()
    lb.register("keep")
    with pytest.raises(error, match=match):
        lb.replace(servers)  # type: ignore[arg-type]
    assert lb.servers == ("keep",)
    assert lb.get() == "keep"


@pytest.mark.parametrize(
    ("server", "error"),
    [(None, TypeError), (42, TypeError), (b"a", TypeError), ("", ValueError)],
)
def test_bad_server_is_rejected_and_changes_nothing(server: object, error: type[Exception]) -> None:
    lb = LoadBalancer()
    lb.register("a")
    with pytest.raises(error, match="server"):
        lb.register(server)  # type: ignore[arg-type]
    with pytest.raises(error, match="server"):
        lb.unregister(server)  # type: ignore[arg-type]
    assert lb.servers == ("a",)


@pytest.mark.parametrize(
    ("max_servers", "error"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), (2.5, TypeError), ("3", TypeError)],
)
def test_bad_max_servers(max_servers: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_servers"):
        LoadBalancer(max_servers=max_servers)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", [object(), "round_robin", 1, lambda servers: servers[0]])
def test_a_strategy_that_is_not_a_strategy(strategy: object) -> None:
    with pytest.raises(TypeError, match="strategy"):
        LoadBalancer(strategy=strategy)  # type: ignore[arg-type]


def test_a_strategy_class_instead_of_an_instance_gets_a_hint() -> None:
    with pytest.raises(TypeError, match=r"did you mean RoundRobinStrategy\(\)"):
        LoadBalancer(strategy=RoundRobinStrategy)  # type: ignore[arg-type]


def test_bad_clock() -> None:
    with pytest.raises(TypeError, match="clock"):
        LoadBalancer(clock=math.pi)  # type: ignore[arg-type]


def test_a_failing_strategy_leaves_the_balancer_unchanged() -> None:
    class Flaky(Strategy):
        fail = False

        def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
            if self.fail:
                raise RuntimeError("build failed")
            return RoundRobinStrategy().build(snapshot, previous)

    strategy = Flaky()
    lb = LoadBalancer(strategy=strategy)
    lb.register("a")
    lb.register("b")
    strategy.fail = True
    with pytest.raises(RuntimeError):
        lb.register("c")
    with pytest.raises(RuntimeError):
        lb.unregister("a")
    with pytest.raises(RuntimeError):
        lb.replace(["x"])
    assert lb.servers == ("a", "b")
    assert [lb.get() for _ in range(3)] == ["a", "b", "a"]
    strategy.fail = False
    assert lb.register("c")
