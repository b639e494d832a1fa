"""The strategies every conformance test runs against, derived from the registry.

Each registered strategy runs with its defaults (and a seeded rng where it takes one), plus
the variants below, which exercise code paths the defaults do not. A new strategy needs no
line here: registering it in ``loadbalancer.strategies.registry`` is enough.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable

from loadbalancer import (
    MaglevStrategy,
    PowerOfTwoChoicesStrategy,
    RendezvousStrategy,
    RingHashStrategy,
    Strategy,
)
from loadbalancer.strategies import STRATEGIES

SEED = 1234


def seeded(cls: Callable[..., Strategy], **options: object) -> Callable[[], Strategy]:
    """A factory of ``cls(**options)``, with a fresh ``random.Random(SEED)`` if it takes an rng."""

    def make() -> Strategy:
        if "rng" in inspect.signature(cls).parameters:
            return cls(rng=random.Random(SEED), **options)
        return cls(**options)

    return make


VARIANTS: dict[str, Callable[[], Strategy]] = {
    "power_of_three_choices": seeded(PowerOfTwoChoicesStrategy, choices=3),
    "ring_hash_ketama": seeded(RingHashStrategy, hash="ketama"),
    "ring_hash_bounded": seeded(RingHashStrategy, balance_factor=1.25),
    # A small prime table: each pool change rebuilds it, and the races change the pool a lot.
    "maglev_small": seeded(MaglevStrategy, table_size=1009),
    "maglev_bounded": seeded(MaglevStrategy, table_size=1009, balance_factor=1.25),
    "rendezvous_bounded": seeded(RendezvousStrategy, balance_factor=1.25),
}
"""Non-default configurations worth running every conformance test against."""

STRATEGY_FACTORIES: dict[str, Callable[[], Strategy]] = {
    **{name: seeded(cls) for name, cls in STRATEGIES.items()},
    **VARIANTS,
}
"""Every registered strategy under its canonical name, then the variants."""

__all__ = ["SEED", "STRATEGY_FACTORIES", "VARIANTS", "seeded"]
