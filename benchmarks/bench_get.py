"""ns per get() for each strategy, per lease cycle, and per retry pick, beside references.

References:
  floor     one Python method call: a class whose get() is next() on an itertools.cycle
  textbook  a threading.Lock around indexing a list, as most hand-written balancers do
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial

from _timing import best_ns_per_call, print_table
from loadbalancer import (
    Endpoint,
    LeastConnectionsStrategy,
    LoadBalancer,
    MaglevStrategy,
    PeakEWMAStrategy,
    Picker,
    PowerOfTwoChoicesStrategy,
    RandomStrategy,
    RendezvousStrategy,
    RingHashStrategy,
    RoundRobinStrategy,
    Snapshot,
    Strategy,
    WeightedRandomStrategy,
    WeightedRoundRobinStrategy,
)

SERVERS = [f"10.0.0.{i}:8080" for i in range(10)]
WEIGHTS = {server: 1 + i % 4 for i, server in enumerate(SERVERS)}


class Floor:
    """The cheapest possible balancer: one Python call around a C iterator."""

    def __init__(self, servers: list[str]) -> None:
        self._it = itertools.cycle(servers)

    def get(self) -> str:
        return next(self._it)


class Textbook:
    """A lock around list indexing: the usual interview answer."""

    def __init__(self, servers: list[str]) -> None:
        self._servers = list(servers)
        self._index = 0
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            server = self._servers[self._index % len(self._servers)]
            self._index += 1
            return server


def balancer(strategy: Strategy, weights: Mapping[str, float] = WEIGHTS) -> LoadBalancer:
    lb = LoadBalancer(strategy=strategy)
    lb.replace(weights)
    return lb


def picker(strategy: Strategy, weights: Mapping[str, float] = WEIGHTS) -> Picker:
    endpoints = tuple(Endpoint(server, weight) for server, weight in weights.items())
    return strategy.build(Snapshot.of(endpoints, time.monotonic))


def retries(rng: random.Random) -> dict[str, Callable[[], object]]:
    """pick and pick_excluding side by side: one server tried, as a first retry has.

    Rotations and random strategies exclude a fixed server (hit on a tenth of the turns);
    hashing strategies exclude the key's own server, so every retry walks its order.
    """
    equal = dict.fromkeys(SERVERS, 1)
    pickers = {
        "RoundRobinStrategy": picker(RoundRobinStrategy(), equal),
        "RandomStrategy": picker(RandomStrategy(rng), equal),
        "WeightedRandomStrategy": picker(WeightedRandomStrategy(rng)),
        "WeightedRoundRobinStrategy": picker(WeightedRoundRobinStrategy()),
        "LeastConnectionsStrategy": picker(LeastConnectionsStrategy(rng)),
        "PowerOfTwoChoicesStrategy": picker(PowerOfTwoChoicesStrategy(rng=rng), equal),
        "PeakEWMAStrategy": picker(PeakEWMAStrategy(rng=rng), equal),
        "RingHashStrategy": picker(RingHashStrategy(), equal),
        "RingHashStrategy(hash='ketama')": picker(RingHashStrategy(hash="ketama"), equal),
        "MaglevStrategy": picker(MaglevStrategy(), equal),
        "RendezvousStrategy": picker(RendezvousStrategy(), equal),
    }
    candidates: dict[str, Callable[[], object]] = {}
    for name, built in pickers.items():
        hashing = name.startswith(("Ring", "Maglev", "Rendezvous"))
        key = "user-4242" if hashing else None
        tried = frozenset({built.pick(key) if hashing else SERVERS[0]})
        candidates[f"{name}: pick"] = partial(built.pick, key)
        candidates[f"{name}: pick_excluding"] = partial(built.pick_excluding, key, tried)
    return candidates


def main() -> None:
    print(f"Python {sys.version.split()[0]}, {len(SERVERS)} servers, weights 1-4")
    floor = "floor (itertools.cycle in a method)"
    rng = random.Random(1)
    equal = dict.fromkeys(SERVERS, 1)
    candidates: dict[str, Callable[[], object] | str] = {
        floor: Floor(SERVERS).get,
        "textbook (Lock + list index)": Textbook(SERVERS).get,
        "lb.picker.pick, RoundRobinStrategy (one call)": balancer(RoundRobinStrategy()).picker.pick,
        "lb.get(), RoundRobinStrategy": balancer(RoundRobinStrategy()).get,
        "lb.get(exclude=...), RoundRobinStrategy": partial(
            balancer(RoundRobinStrategy()).get, None, frozenset({SERVERS[0]})
        ),
        "RandomStrategy": balancer(RandomStrategy(rng)).get,
        "WeightedRandomStrategy": balancer(WeightedRandomStrategy(rng)).get,
        "WeightedRoundRobinStrategy": balancer(WeightedRoundRobinStrategy()).get,
        "PowerOfTwoChoicesStrategy, equal weights": balancer(
            PowerOfTwoChoicesStrategy(rng=rng), equal
        ).get,
        "PowerOfTwoChoicesStrategy, weights 1-4": balancer(PowerOfTwoChoicesStrategy(rng=rng)).get,
        "LeastConnectionsStrategy": balancer(LeastConnectionsStrategy(rng)).get,
        "PeakEWMAStrategy": balancer(PeakEWMAStrategy(rng=rng)).get,
    }
    print_table("get(), 10 servers (strategy rows: lb.get())", best_ns_per_call(candidates), floor)

    # Statements, not functions: the cycle is timed without a wrapping call around it.
    namespace = {
        "floor": Floor(SERVERS),
        "rr": balancer(RoundRobinStrategy()),
        "p2c": balancer(PowerOfTwoChoicesStrategy(rng=rng), equal),
    }
    leases: dict[str, Callable[[], object] | str] = {
        floor: "floor.get()",
        "with lb.lease(): round-robin": "with rr.lease():\n    pass",
        "with lb.lease(): power of two choices": "with p2c.lease():\n    pass",
        "lb.acquire().release(): round-robin": "rr.acquire().release()",
    }
    title = "lease cycle: pick, count in flight, record outcome and latency"
    print_table(title, best_ns_per_call(leases, calls=50_000, namespace=namespace), floor)

    title = "retry picks, picker level: pick vs pick_excluding with one server tried"
    results = best_ns_per_call(retries(rng), calls=50_000)
    print_table(title, results, "RoundRobinStrategy: pick")


if __name__ == "__main__":
    main()
