"""The strategies a scenario may name, the options each accepts, and how to build one."""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping
from typing import Any

from ... import (
    LeastConnectionsStrategy,
    MaglevStrategy,
    PeakEWMAStrategy,
    PowerOfTwoChoicesStrategy,
    RandomStrategy,
    RendezvousStrategy,
    RingHashStrategy,
    RoundRobinStrategy,
    Strategy,
    WeightedRandomStrategy,
    WeightedRoundRobinStrategy,
)

__all__ = [
    "DEFAULT_STRATEGIES",
    "STRATEGIES",
    "build_strategy",
    "describe_strategy",
    "strategy_options",
]


STRATEGIES: Mapping[str, type[Strategy]] = {
    "round_robin": RoundRobinStrategy,
    "random": RandomStrategy,
    "weighted_random": WeightedRandomStrategy,
    "weighted_round_robin": WeightedRoundRobinStrategy,
    "least_connections": LeastConnectionsStrategy,
    "power_of_two_choices": PowerOfTwoChoicesStrategy,
    "peak_ewma": PeakEWMAStrategy,
    "ring_hash": RingHashStrategy,
    "maglev": MaglevStrategy,
    "rendezvous": RendezvousStrategy,
}
"""Every strategy a scenario may name, by its scenario name."""

DEFAULT_STRATEGIES: tuple[str, ...] = (
    "round_robin",
    "random",
    "weighted_round_robin",
    "least_connections",
    "power_of_two_choices",
    "peak_ewma",
    "ring_hash",
    "maglev",
)
"""What a scenario compares when it lists no strategies."""


def _parameters(cls: type[Strategy]) -> dict[str, inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in inspect.signature(cls).parameters.items() if p.kind in kinds}


def strategy_options(name: str) -> tuple[str, ...]:
    """The keyword options strategy ``name`` accepts in a scenario (its ``rng`` is seeded)."""
    return tuple(sorted(p for p in _parameters(STRATEGIES[name]) if p != "rng"))


def build_strategy(name: str, options: Mapping[str, Any], rng: random.Random) -> Strategy:
    """A fresh strategy ``name`` with ``options``, drawing its randomness from ``rng``."""
    cls = STRATEGIES[name]
    arguments = dict(options)
    if "rng" in _parameters(cls):
        arguments["rng"] = rng
    return cls(**arguments)


def describe_strategy(name: str, options: Mapping[str, Any]) -> str:
    """How to write strategy ``name`` with ``options`` in Python, such as ``MaglevStrategy()``.

    Unlike the strategy's repr, it never shows the seeded ``rng`` (whose repr is an address),
    so it is the same in every run.
    """
    arguments = ", ".join(f"{key}={value!r}" for key, value in sorted(options.items()))
    return f"{STRATEGIES[name].__name__}({arguments})"
