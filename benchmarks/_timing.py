"""Shared timing for the benchmark scripts: interleaved rounds, best of each, in ns per call."""

from __future__ import annotations

import gc
import timeit
from collections.abc import Callable, Mapping


def best_ns_per_call(
    candidates: Mapping[str, Callable[[], object] | str],
    *,
    calls: int = 200_000,
    rounds: int = 15,
    namespace: Mapping[str, object] | None = None,
) -> dict[str, float]:
    """Time every candidate in interleaved rounds; return each one's best ns per call.

    A candidate is a callable, or a statement run in ``namespace`` (for code such as a
    ``with`` block that a callable would wrap in one more call). Interleaving means a noisy
    moment on the machine hits all candidates alike, and the best round is the one least
    disturbed, so ratios measured in one run are comparable.
    """
    best = dict.fromkeys(candidates, float("inf"))
    gc.disable()
    try:
        for _ in range(rounds):
            for name, call in candidates.items():
                elapsed = timeit.timeit(call, number=calls, globals=dict(namespace or {}))
                best[name] = min(best[name], elapsed / calls * 1e9)
    finally:
        gc.enable()
    return best


def print_table(title: str, results: Mapping[str, float], reference: str) -> None:
    """Print ns per call and the ratio to ``reference`` for each result."""
    print(f"\n{title}")
    base = results[reference]
    for name, ns in results.items():
        print(f"  {name:<44} {ns:9.1f} ns/op  {ns / base:6.2f}x {reference}")
