"""Rebuild cost of the weighted strategies at 10, 100, 1,000 and 10,000 servers.

Each pool change builds a new picker, so this is what a membership change or a weight change
costs beyond copying the pool. Printed beside the cost of copying the pool list (the floor
every rebuild pays) in the same run. Weights 1-4 (``1 + i % 4``) are integers whose cycle
fits; "floats" are random weights in [0.5, 4) with no small integer form (the alias table
and the apportioned cycle).

``--baseline REV`` also times ``weighted.py`` as of git revision ``REV`` (say ``HEAD``), in
the same run, for before-and-after figures.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable

from _revisions import module_at
from loadbalancer import Snapshot
from loadbalancer._snapshot import Endpoint
from loadbalancer.strategies import weighted

SIZES = (10, 100, 1_000, 10_000)
_MODULE = "src/loadbalancer/strategies/weighted.py"


def snapshot(size: int, kind: str) -> Snapshot:
    rng = random.Random(size)
    weights: list[float]
    if kind == "1-4":
        weights = [1 + i % 4 for i in range(size)]
    else:
        weights = [rng.uniform(0.5, 4.0) for _ in range(size)]
    endpoints = tuple(Endpoint(f"s{i}", w) for i, w in enumerate(weights))
    return Snapshot.of(endpoints, time.monotonic)


def best_us(call: Callable[[], object], budget: float = 0.25) -> float:
    """Best µs per call over repeated runs filling about ``budget`` seconds."""
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    repeats = max(3, min(2_000, int(budget / max(once, 1e-7))))
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
    finally:
        gc.enable()
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REV", help="also time weighted.py at REV")
    args = parser.parse_args()
    modules = {"now": weighted}
    if args.baseline:
        modules = {args.baseline: module_at(args.baseline, _MODULE), "now": weighted}
    print(f"Python {sys.version.split()[0]}; best µs per rebuild (x: ratio to the pool copy)")
    header = f"  {'strategy':<14} {'weights':<7} {'servers':>7} {'pool copy':>10}"
    print(header + "".join(f" {name:>18}" for name in modules))
    for kind in ("1-4", "floats"):
        for size in SIZES:
            snap = snapshot(size, kind)
            floor = best_us(lambda snap=snap: list(snap.endpoints))  # type: ignore[misc]
            for label in ("random", "smooth WRR"):
                cells = []
                for module in modules.values():
                    strategy = (
                        module.WeightedRandomStrategy(random.Random(1))
                        if label == "random"
                        else module.WeightedRoundRobinStrategy()
                    )
                    us = best_us(lambda s=strategy, snap=snap: s.build(snap))  # type: ignore[misc]
                    cells.append(f"{us:9.1f} ({us / floor:5.0f}x)")
                print(f"  {label:<14} {kind:<7} {size:>7} {floor:9.2f}  " + " ".join(cells))


if __name__ == "__main__":
    main()
