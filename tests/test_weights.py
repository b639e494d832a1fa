"""Weights: validation, introspection, and strategies that ignore them."""

from __future__ import annotations

import math

import pytest

from loadbalancer import LoadBalancer, RoundRobinStrategy

BAD_WEIGHTS = [
    (0, ValueError),
    (-1, ValueError),
    (-0.5, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    (1_000_001, ValueError),
    (1.7e308, ValueError),
    (10**400, ValueError),
    (True, TypeError),
    ("2", TypeError),
    (None, TypeError),
    (1j, TypeError),
]


def test_the_largest_weight_is_accepted() -> None:
    lb = LoadBalancer()
    assert lb.register("a", weight=1_000_000)
    assert lb.register("b", weight=1e-9)


def test_default_weight_is_one_and_visible() -> None:
    lb = LoadBalancer()
    lb.register("a")
    lb.register("b", weight=2.5)
    assert lb.weights == {"a": 1, "b": 2.5}
    assert lb.stats()["b"].weight == 2.5


@pytest.mark.parametrize(("weight", "error"), BAD_WEIGHTS)
def test_bad_weight_on_register_changes_nothing(weight: object, error: type[Exception]) -> None:
    lb = LoadBalancer()
    lb.register("a")
    with pytest.raises(error, match="weight"):
        lb.register("b", weight=weight)  # type: ignore[arg-type]
    assert lb.servers == ("a",)


@pytest.mark.parametrize(("weight", "error"), BAD_WEIGHTS)
def test_bad_weight_on_set_weight_changes_nothing(weight: object, error: type[Exception]) -> None:
    lb = LoadBalancer()
    lb.register("a", weight=3)
    with pytest.raises(error, match="weight"):
        lb.set_weight("a", weight)  # type: ignore[arg-type]
    assert lb.weights == {"a": 3}


def test_set_weight() -> None:
    lb = LoadBalancer()
    lb.register("a")
    assert lb.set_weight("a", 7) is True
    assert lb.weights == {"a": 7}
    assert lb.set_weight("missing", 2) is False


def test_replace_with_a_mapping_sets_weights() -> None:
    lb = LoadBalancer()
    lb.register("a", weight=3)
    lb.register("b", weight=4)
    lb.replace({"b": 5, "c": 2})
    assert lb.weights == {"b": 5, "c": 2}


def test_replace_with_a_list_keeps_weights_of_servers_that_stay() -> None:
    lb = LoadBalancer()
    lb.register("a", weight=3)
    lb.replace(["a", "b"])
    assert lb.weights == {"a": 3, "b": 1}


def test_replace_with_a_bad_weight_changes_nothing() -> None:
    lb = LoadBalancer()
    lb.register("a", weight=3)
    with pytest.raises(ValueError, match="weight of 'b'"):
        lb.replace({"a": 2, "b": -1})
    assert lb.weights == {"a": 3}


def test_round_robin_ignores_weights() -> None:
    lb = LoadBalancer(strategy=RoundRobinStrategy())
    lb.register("a", weight=5)
    lb.register("b", weight=1)
    assert [lb.get() for _ in range(4)] == ["a", "b", "a", "b"]
