"""The requests of a run: Poisson arrival times and their keys, the same for every strategy."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import final

from .scenario import Keys, Scenario

__all__ = ["Workload", "make_workload"]


@final
@dataclass(frozen=True, slots=True)
class Workload:
    """Arrival times in ascending order, and each arrival's key index (None: no keys).

    ``key_names[i]`` is the key string of key index ``i``.
    """

    times: tuple[float, ...]
    keys: tuple[int, ...] | None
    key_names: tuple[str, ...]


def _draw_keys(keys: Keys, count: int, rng: random.Random) -> tuple[int, ...]:
    indexes = range(keys.population)
    if keys.distribution == "uniform":
        return tuple(rng.choices(indexes, k=count))
    cumulative = list(itertools.accumulate(1 / (k + 1) ** keys.exponent for k in indexes))
    return tuple(rng.choices(indexes, cum_weights=cumulative, k=count))


def make_workload(scenario: Scenario, seed: int) -> Workload:
    """Draw the arrivals of ``scenario`` for ``seed``.

    Every strategy sees exactly these requests (common random numbers), so differences
    between strategies are theirs, not the dice's.
    """
    rng = random.Random(f"{seed}/arrivals")
    rate, duration = scenario.arrivals.rate, scenario.duration
    times = []
    at = rng.expovariate(rate)
    while at < duration:
        times.append(at)
        at += rng.expovariate(rate)
    keys = scenario.keys
    if keys is None:
        return Workload(tuple(times), None, ())
    names = tuple(f"user-{i}" for i in range(keys.population))
    return Workload(
        tuple(times), _draw_keys(keys, len(times), random.Random(f"{seed}/keys")), names
    )
