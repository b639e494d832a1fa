"""The strategies every conformance test runs against; add each new strategy here."""

from __future__ import annotations

import random
from collections.abc import Callable

from loadbalancer import RandomStrategy, RoundRobinStrategy, Strategy

STRATEGY_FACTORIES: dict[str, Callable[[], Strategy]] = {
    "round_robin": RoundRobinStrategy,
    "random": lambda: RandomStrategy(rng=random.Random(1234)),
}
