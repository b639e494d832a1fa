"""The strategies every conformance test runs against; add each new strategy here."""

from __future__ import annotations

import random
from collections.abc import Callable

from loadbalancer import (
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

STRATEGY_FACTORIES: dict[str, Callable[[], Strategy]] = {
    "round_robin": RoundRobinStrategy,
    "random": lambda: RandomStrategy(rng=random.Random(1234)),
    "weighted_random": lambda: WeightedRandomStrategy(rng=random.Random(1234)),
    "weighted_round_robin": WeightedRoundRobinStrategy,
    "least_connections": lambda: LeastConnectionsStrategy(rng=random.Random(1234)),
    "power_of_two_choices": lambda: PowerOfTwoChoicesStrategy(rng=random.Random(1234)),
    "power_of_three_choices": lambda: PowerOfTwoChoicesStrategy(3, rng=random.Random(1234)),
    "peak_ewma": lambda: PeakEWMAStrategy(rng=random.Random(1234)),
    "ring_hash": lambda: RingHashStrategy(rng=random.Random(1234)),
    "ring_hash_ketama": lambda: RingHashStrategy(hash="ketama", rng=random.Random(1234)),
    "ring_hash_bounded": lambda: RingHashStrategy(balance_factor=1.25, rng=random.Random(1234)),
    # A small prime table: each pool change rebuilds it, and the races change the pool a lot.
    "maglev": lambda: MaglevStrategy(table_size=1009, rng=random.Random(1234)),
    "maglev_bounded": lambda: MaglevStrategy(
        table_size=1009, balance_factor=1.25, rng=random.Random(1234)
    ),
    "rendezvous": lambda: RendezvousStrategy(rng=random.Random(1234)),
    "rendezvous_bounded": lambda: RendezvousStrategy(balance_factor=1.25, rng=random.Random(1234)),
}
