"""ns per get(key) for the hashing strategies beside uhashring, and table rebuild times.

References, measured in the same run on the same 10 servers and the same 1,000 keys:
  uhashring default   uhashring.HashRing(servers).get_node (md5, 160 points per server)
  uhashring ketama    uhashring.HashRing(servers, hash_fn="ketama").get_node

Targets: ring (default) and Maglev at least 5x faster than uhashring default; ketama mode at
least 2x faster than uhashring ketama while returning the same server for every key (asserted).
Maglev rebuilds a 65537-entry table for 1,000 servers within 100 ms.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable

import uhashring  # type: ignore[import-untyped]

from _timing import best_ns_per_call, print_table
from loadbalancer import Endpoint, LoadBalancer, Snapshot, Strategy
from loadbalancer.strategies.hashing import MaglevStrategy, RendezvousStrategy, RingHashStrategy

SERVERS = [f"10.0.0.{i}:11211" for i in range(10)]
KEYS = [f"user:{i}:session" for i in range(1000)]

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "RingHashStrategy()": RingHashStrategy,
    "RingHashStrategy(hash='ketama')": lambda: RingHashStrategy(hash="ketama"),
    "MaglevStrategy()": MaglevStrategy,
    "RendezvousStrategy()": RendezvousStrategy,
}


def balancer(strategy: Strategy) -> LoadBalancer:
    lb = LoadBalancer(strategy=strategy)
    lb.replace(SERVERS)
    return lb


def per_key(get: Callable[[str], object]) -> Callable[[], object]:
    """One call looks up every key; map() adds no Python frame of its own."""
    return lambda: deque(map(get, KEYS), maxlen=0)


def lookups() -> None:
    default_ring = uhashring.HashRing(SERVERS)
    ketama_ring = uhashring.HashRing(SERVERS, hash_fn="ketama")
    balancers = {name: balancer(factory()) for name, factory in STRATEGIES.items()}
    ketama = balancers["RingHashStrategy(hash='ketama')"]
    assert [ketama.get(key) for key in KEYS] == [ketama_ring.get_node(key) for key in KEYS]
    assert all(len({lb.get(key) for key in KEYS}) == len(SERVERS) for lb in balancers.values())

    candidates = {
        "uhashring default get_node": per_key(default_ring.get_node),
        "uhashring ketama get_node": per_key(ketama_ring.get_node),
    }
    candidates.update({f"{name} get(key)": per_key(lb.get) for name, lb in balancers.items()})
    raw = best_ns_per_call(candidates, calls=20, rounds=15)
    results = {name: ns / len(KEYS) for name, ns in raw.items()}
    print_table("get(key), 10 servers, 1,000 keys", results, "uhashring default get_node")

    def speedup(ours: str, reference: str) -> float:
        return results[reference] / results[f"{ours} get(key)"]

    print("\nTargets")
    checks = [
        ("RingHashStrategy()", "uhashring default get_node", 5.0),
        ("MaglevStrategy()", "uhashring default get_node", 5.0),
        ("RingHashStrategy(hash='ketama')", "uhashring ketama get_node", 2.0),
    ]
    for ours, reference, target in checks:
        factor = speedup(ours, reference)
        verdict = "met" if factor >= target else "MISSED"
        print(f"  {ours:<34} {factor:5.1f}x faster than {reference} (target {target}x: {verdict})")
    print("  ketama mode returned uhashring's server for all 1,000 keys")


def build_ms(strategy: Strategy, size: int, repeats: int) -> float:
    """Best ms for one build of the strategy's table over ``size`` servers."""
    endpoints = tuple(Endpoint(f"10.{i // 250}.{i % 250}.1:8080") for i in range(size))
    snapshot = Snapshot.of(endpoints, time.monotonic)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        strategy.build(snapshot)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def rebuilds() -> None:
    sizes = (10, 100, 1_000)
    print("\nTable rebuild on a pool change (best of 5), ms")
    print(f"  {'strategy':<34}" + "".join(f"{f'{size} servers':>14}" for size in sizes))
    maglev_1000 = 0.0
    for name, factory in STRATEGIES.items():
        times = [build_ms(factory(), size, repeats=5) for size in sizes]
        if name == "MaglevStrategy()":
            maglev_1000 = times[-1]
        print(f"  {name:<34}" + "".join(f"{ms:>14.1f}" for ms in times))
    verdict = "met" if maglev_1000 <= 100 else "MISSED"
    print(f"  Maglev, 1,000 servers, M=65537: {maglev_1000:.1f} ms (target 100 ms: {verdict})")


def main() -> None:
    print(f"Python {sys.version.split()[0]}, uhashring {uhashring.__version__}")
    lookups()
    rebuilds()


if __name__ == "__main__":
    main()
