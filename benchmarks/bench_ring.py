"""Ring hash at 10 to 10,000 servers: get(key) beside the keyed floor, rebuilds, memory, leases.

The keyed floor is ``servers[xxh64(key.encode()) % n]`` in a method (one Python call, as
``get`` is); the ketama floor hashes as ketama does (MD5) instead. ``--before REV`` loads
``ring.py`` as it was at git revision ``REV`` beside the working tree's, so "before" and
"after" are measured in the same run, on the same keys, and must place every key alike
(asserted). Rebuilds are one server joining (a build over ``n`` servers from the picker over
``n - 1``) and leaving (the reverse), best of a few; a full build has no previous picker.
Picker size is what ``tracemalloc`` sees allocated by one full build. A lease is
``with lb.lease(key): pass`` with ``balance_factor=1.25``, beside a minimal correct lease.

Targets (issue 12): get within 2x the keyed floor; a one-server rebuild within 20 ms at 1,000
servers; a bounded-loads lease within 3x the minimal lease.

Run: ``.venv/bin/python benchmarks/bench_ring.py [--before REV] [--sizes 10,100,1000,10000]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from types import ModuleType

from _revisions import module_at
from _scale_refs import MinimalLease
from _timing import best_ns_per_call
from loadbalancer import Endpoint, LoadBalancer, Snapshot, Strategy
from loadbalancer.strategies.hashing import ring as after_module
from loadbalancer.strategies.hashing._keys import md5, unpack_ketama, xxh64

KEYS = [f"user:{i}:session" for i in range(10_000)]
RING = "src/loadbalancer/strategies/hashing/ring.py"


class Floors:
    """The keyed floors: one method call that hashes the key and indexes the pool."""

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.servers = servers
        self.count = len(servers)

    def xxh64(self, key: str) -> str:
        """``servers[xxh64(key) % n]``."""
        return self.servers[xxh64(key.encode()) % self.count]

    def ketama(self, key: str) -> str:
        """``servers[ketama_hash(key) % n]``: the same with MD5, as ketama hashes keys."""
        return self.servers[int(unpack_ketama(md5(key.encode()).digest())[0]) % self.count]


def endpoints(size: int) -> tuple[Endpoint, ...]:
    """``size`` servers named like addresses, weight 1."""
    return tuple(Endpoint(f"10.{i // 250}.{i % 250}.1:8080") for i in range(size))


def per_key(get: Callable[[str], object]) -> Callable[[], object]:
    return lambda: deque(map(get, KEYS), maxlen=0)


def rebuild_ms(strategy: Strategy, pool: tuple[Endpoint, ...], repeats: int) -> list[float]:
    """Best ms for a full build, one server joining, and one leaving."""
    small = Snapshot.of(pool[:-1], time.monotonic)
    large = Snapshot.of(pool, time.monotonic)
    before, after = strategy.build(small), strategy.build(large)
    best = [float("inf")] * 3
    cases = [(large, None), (large, before), (small, after)]
    for _ in range(repeats):
        for slot, (snapshot, previous) in enumerate(cases):
            start = time.perf_counter()
            strategy.build(snapshot, previous)
            best[slot] = min(best[slot], (time.perf_counter() - start) * 1e3)
    return best


def picker_mib(strategy: Strategy, pool: tuple[Endpoint, ...]) -> float:
    snapshot = Snapshot.of(pool, time.monotonic)
    tracemalloc.start()
    picker = strategy.build(snapshot)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del picker
    return size / 2**20


def lease_ns(module: ModuleType, mode: str, names: tuple[str, ...]) -> tuple[float, float]:
    """ns per ``with lb.lease(key): pass`` (bounded loads) and per minimal lease."""
    strategy = module.RingHashStrategy(hash=mode, balance_factor=1.25)
    lb = LoadBalancer(strategy=strategy, max_servers=len(names))
    lb.replace(names)
    namespace = {"lb": lb, "minimal": MinimalLease(), "key": "user:7:session"}
    calls = 20_000 if len(names) < 1_000 else 2_000
    ns = best_ns_per_call(
        {"lease": "with lb.lease(key):\n    pass", "minimal": "with minimal:\n    pass"},
        calls=calls,
        rounds=5,
        namespace=namespace,
    )
    return ns["lease"], ns["minimal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision whose ring.py to measure beside")
    parser.add_argument("--sizes", default="10,100,1000,10000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    versions: dict[str, ModuleType] = {"after": after_module}
    if args.before:
        versions = {"before": module_at(args.before, RING), "after": after_module}
    print(f"Python {sys.version.split()[0]}; {len(KEYS):,} keys; default vnodes")
    for mode in ("xxh64", "ketama"):
        print(f"\nhash={mode}: get and lb.picker.pick ns per key (x keyed floor); rebuild ms;")
        print("  picker MiB; bounded lease ns (x minimal lease)")
        print(
            f"  {'servers':>7} {'floor':>6} {'md5 fl':>6} {'version':>7} {'get':>15} {'pick':>15}"
            f" {'full':>8} {'join':>7} {'leave':>7} {'MiB':>6} {'lease':>16}"
        )
        for size in sizes:
            if mode == "ketama" and size > 6_500:
                print(f"  {size:>7,} (a ketama ring of over 2**20 points is refused)")
                continue
            pool = endpoints(size)
            names = tuple(endpoint.server for endpoint in pool)
            floors = Floors(names)
            candidates: dict[str, Callable[[], object]] = {
                "floor": per_key(floors.xxh64),
                "md5 floor": per_key(floors.ketama),
            }
            placements = []
            for label, module in versions.items():
                lb = LoadBalancer(strategy=module.RingHashStrategy(hash=mode), max_servers=size)
                lb.replace(names)
                candidates[label] = per_key(lb.get)
                candidates[f"{label} pick"] = per_key(lb.picker.pick)
                placements.append([lb.get(key) for key in KEYS])
            assert all(placement == placements[0] for placement in placements)
            ns = {
                name: value / len(KEYS)
                for name, value in best_ns_per_call(candidates, calls=3, rounds=7).items()
            }
            for label, module in versions.items():
                strategy = module.RingHashStrategy(hash=mode)
                repeats = 1 if size >= 10_000 or (label == "before" and size >= 1_000) else 3
                full, join, leave = rebuild_ms(strategy, pool, repeats)
                mib = picker_mib(strategy, pool)
                lease, minimal = lease_ns(module, mode, names)
                print(
                    f"  {size:>7,} {ns['floor']:>6.0f} {ns['md5 floor']:>6.0f} {label:>7}"
                    f" {ns[label]:>6.0f} ({ns[label] / ns['floor']:4.2f}x)"
                    f" {ns[label + ' pick']:>6.0f} ({ns[label + ' pick'] / ns['floor']:4.2f}x)"
                    f" {full:>8.1f} {join:>7.1f} {leave:>7.1f} {mib:>6.2f}"
                    f" {lease:>7.0f} ({lease / minimal:5.2f}x)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
