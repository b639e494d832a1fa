"""Cost of register() and unregister() at 10, 1,000 and 10,000 servers.

Each mutation rebuilds the snapshot and the picker (copy-on-write), so it is O(n) by design:
that is what keeps get() free of locks. This shows what that costs, with weights 1-4.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from loadbalancer import (
    LoadBalancer,
    PowerOfTwoChoicesStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    Strategy,
    WeightedRoundRobinStrategy,
)


def mutation_us(strategy: Strategy, size: int, repeats: int) -> tuple[float, float]:
    """Best µs for one register and one unregister on a pool of ``size`` servers."""
    lb = LoadBalancer(strategy=strategy, max_servers=size + 1)
    lb.replace({f"s{i}": 1 + i % 4 for i in range(size)})  # weights 1-4
    best_register = best_unregister = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        lb.register("extra")
        middle = time.perf_counter()
        lb.unregister("extra")
        end = time.perf_counter()
        best_register = min(best_register, middle - start)
        best_unregister = min(best_unregister, end - middle)
    return best_register * 1e6, best_unregister * 1e6


def main() -> None:
    print(f"Python {sys.version.split()[0]}")
    print(f"  {'strategy':<28} {'servers':>8} {'register':>12} {'unregister':>12}")
    factories: dict[str, Callable[[], Strategy]] = {
        "RoundRobinStrategy": RoundRobinStrategy,
        "RandomStrategy": lambda: RandomStrategy(random.Random(1)),
        "WeightedRoundRobinStrategy": WeightedRoundRobinStrategy,
        "PowerOfTwoChoicesStrategy": lambda: PowerOfTwoChoicesStrategy(rng=random.Random(1)),
    }
    for name, factory in factories.items():
        for size in (10, 1_000, 10_000):
            strategy = factory()
            register, unregister = mutation_us(strategy, size, repeats=max(5, 20_000 // size))
            print(f"  {name:<28} {size:>8} {register:>9.1f} µs {unregister:>9.1f} µs")


if __name__ == "__main__":
    main()
