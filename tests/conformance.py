"""The strategies every conformance test runs against; add each new strategy here."""

from __future__ import annotations

import random
from collections.abc import Callable

from loadbalancer import (
    LeastConnectionsStrategy,
    PeakEWMAStrategy,
    PowerOfTwoChoicesStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    Strategy,
    WeightedRandomStrategy,
    WeightedRoundRobinStrategy,
)

STRATEGY_FACTORIES: dict[str, Callable[[], Strategy]] = {
    "round_robin": RoundRobinStrategy,
    "random": lambda: RandomStrategy(rng=random.Random(1234)),
    "weighted_random": lambda: WeightedRandomStrategy(rng=random.Random(1234)),
    "weighted_round_robin": WeightedRoundRobinStrategy,
    "least_connections": lambda: LeastConnectionsStrategy(rng=random.Random(1234)),
    "power_of_two_choices": lambda: PowerOfTwoChoicesStrategy(rng=random.Random(1234)),
    "power_of_three_choices": lambda: PowerOfTwoChoicesStrategy(3, rng=random.Random(1234)),
    "peak_ewma": lambda: PeakEWMAStrategy(rng=random.Random(1234)),
}
