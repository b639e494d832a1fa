"""Slow start: new and returning servers ramp up, with every weight-aware strategy."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from loadbalancer import (
    Lease,
    LeastConnectionsStrategy,
    LoadBalancer,
    MaglevStrategy,
    OutlierDetection,
    PeakEWMAStrategy,
    PowerOfTwoChoicesStrategy,
    RandomStrategy,
    RingHashStrategy,
    RoundRobinStrategy,
    SlowStart,
    Strategy,
    WeightedRandomStrategy,
    WeightedRoundRobinStrategy,
)

from .fakes import FakeClock

WEIGHT_AWARE: dict[str, Callable[[], Strategy]] = {
    "weighted_random": lambda: WeightedRandomStrategy(rng=random.Random(5)),
    "weighted_round_robin": WeightedRoundRobinStrategy,
    "least_connections": lambda: LeastConnectionsStrategy(rng=random.Random(5)),
    "power_of_two_choices": lambda: PowerOfTwoChoicesStrategy(rng=random.Random(5)),
    "peak_ewma": lambda: PeakEWMAStrategy(rng=random.Random(5)),
}


def test_envoys_curve() -> None:
    linear = SlowStart(window=100)
    assert linear.factor(0) == 0.1  # never below the minimum share
    assert linear.factor(50) == 0.5
    assert linear.factor(100) is None
    eager = SlowStart(window=100, aggression=2, min_weight_percent=1)
    assert eager.factor(25) == pytest.approx(0.5)  # (1/4) ** (1/2): faster early


def share_of_held_leases(lb: LoadBalancer, server: str, leases: int) -> float:
    """Acquire ``leases`` without releasing (load builds up); the share that went to server."""
    held: list[Lease] = [lb.acquire() for _ in range(leases)]
    share = sum(lease.server == server for lease in held) / leases
    for lease in held:
        lease.release(latency=0.01)  # a real duration: latency-aware costs stay weighted
    return share


@pytest.mark.parametrize("name", sorted(WEIGHT_AWARE))
def test_a_new_server_ramps_up_with_every_weight_aware_strategy(name: str) -> None:
    clock = FakeClock()
    lb = LoadBalancer(WEIGHT_AWARE[name](), clock=clock, slow_start=SlowStart(window=30))
    lb.register("old1")
    lb.register("old2")
    clock.advance(30)
    lb.refresh()  # the first two are past their own ramp
    lb.register("new")
    assert lb.stats()["new"].effective_weight == pytest.approx(0.1)
    early = share_of_held_leases(lb, "new", 420)
    assert early == pytest.approx(0.1 / 2.1, abs=0.03)
    clock.advance(15)
    lb.refresh()
    assert lb.stats()["new"].effective_weight == pytest.approx(0.5)
    halfway = share_of_held_leases(lb, "new", 420)
    assert halfway == pytest.approx(0.5 / 2.5, abs=0.04)
    clock.advance(15)
    lb.refresh()
    assert lb.stats()["new"].effective_weight == 1
    assert share_of_held_leases(lb, "new", 420) == pytest.approx(1 / 3, abs=0.04)


def test_the_ramp_advances_in_steps_on_leases_alone() -> None:
    clock = FakeClock()
    lb = LoadBalancer(
        WeightedRandomStrategy(rng=random.Random(1)),
        clock=clock,
        slow_start=SlowStart(window=10, steps=10),
        rebuild_in_background=False,  # each step applies on the lease that finds it due
    )
    lb.register("a")
    weights = []
    for _ in range(12):
        lb.acquire().release()
        weights.append(lb.stats()["a"].effective_weight)
        clock.advance(1)
    assert weights == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1])


def test_a_server_back_from_ejection_ramps_again() -> None:
    clock = FakeClock()
    lb = LoadBalancer(
        WeightedRandomStrategy(rng=random.Random(1)),
        clock=clock,
        slow_start=SlowStart(window=30),
        outlier_detection=OutlierDetection(),
    )
    lb.replace(["a", "b", "c"])
    clock.advance(30)
    for _ in range(5):
        lb.done("a", ok=False)
    clock.advance(30)
    lb.refresh()
    assert lb.stats()["a"].effective_weight == pytest.approx(0.1)
    counts = Counter(lb.get() for _ in range(2100))
    assert counts["a"] == pytest.approx(2100 * 0.1 / 2.1, rel=0.3)


def test_a_server_healthy_again_ramps_again() -> None:
    clock = FakeClock()
    lb = LoadBalancer(WeightedRoundRobinStrategy(), clock=clock, slow_start=SlowStart(window=30))
    lb.replace(["a", "b", "c"])
    clock.advance(30)
    lb.refresh()
    lb.set_healthy("a", False)
    assert lb.stats()["a"].effective_weight is None
    lb.set_healthy("a", True)
    assert lb.stats()["a"].effective_weight == pytest.approx(0.1)


@pytest.mark.parametrize(
    "strategy",
    [RoundRobinStrategy(), RandomStrategy(), RingHashStrategy(), MaglevStrategy(table_size=101)],
    ids=repr,
)
def test_slow_start_is_refused_where_it_cannot_apply(strategy: Strategy) -> None:
    # Round-robin and random ignore weights; hashing would move sticky keys as weights ramp.
    with pytest.raises(ValueError, match="slow_start does not apply"):
        LoadBalancer(strategy, slow_start=SlowStart())


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"window": 0}, "window"),
        ({"aggression": -1}, "aggression"),
        ({"min_weight_percent": 0}, "min_weight_percent"),
        ({"min_weight_percent": 101}, "min_weight_percent"),
        ({"steps": 0}, "steps"),
        ({"window": "30"}, "window"),
    ],
)
def test_bad_settings(settings: dict[str, object], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        SlowStart(**settings)  # type: ignore[arg-type]
