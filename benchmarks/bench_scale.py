"""Every path of issue 12 at 10, 100, 1,000 and 10,000 servers, beside same-run references.

References, measured in the same run at each size:
  floor          a class whose get() is next() on an itertools.cycle (bench_get.Floor)
  keyed floor    a method returning servers[xxh64(key) % n], the key's UTF-8 bytes hashed
                 with xxhash.xxh64_intdigest as the library hashes keys (_scale_refs.KeyedFloor)
  minimal lease  ``with minimal: pass`` over a class doing two time.monotonic() reads, +1 and
                 -1 under a threading.Lock held by the endpoint, and a peak-EWMA update with
                 one exp (_scale_refs.MinimalLease): the "minimal correct lease" of the issue
  pool copy      dict(pool) of that many entries, the floor of any copy-on-write change

Rows, and what each ratio is to:
  picks          lb.get() of least connections, P2C and peak EWMA: x the floor
  keyed lookups  lb.get(key) of the ring (xxh64, ketama), over 1,000 keys: x the keyed floor
                 (ketama at 10,000 servers with vnodes=26: 40 would pass the 2**20-point limit)
  leases         ``with lb.lease(): pass`` (round-robin) and ``with lb.lease(key): pass`` with
                 balance_factor=1.25 (Maglev, ring, rendezvous; the key drawn by next() on an
                 itertools.cycle of 1,000 keys, tens of ns, is included): x the minimal lease.
                 min(size, 100) leases stay held on each bounded-load balancer meanwhile, so
                 servers fill up (the bound is 2 at up to 100 servers, 1 above) and some keys
                 walk past full servers, as under load
  rebuilds       ms: ring register/unregister of one server, MaglevStrategy().build() with
                 M = 65,537, WeightedRandom/WeightedRoundRobin build() with weights 1-4
  membership     one change (mean of a register and an unregister of one server) on a
                 balancer of each strategy: x pool copy
  threads        total throughput of 2 and 4 threads sharing one round-robin balancer (each
                 doing a fixed number of leases or gets, released together by a Barrier): x the
                 throughput of 1 thread
  ejection       a failing lease's release that ejects its server (Maglev, 1,000 servers):
                 how long the release takes, and how long until picks avoid the server

Pools have weight 1, except weighted random and smooth WRR (weights 1 + i % 4). Per-call rows
use _timing.best_ns_per_call (interleaved rounds, best of each): a candidate more than 30x
dearer than the cheapest of its group is timed alone, with fewer calls. Rebuilds are timed with
time.perf_counter, best of as many repeats as about 0.8 s allows (at most --max-repeats, at
least 3 under 0.1 s); one run over 0.8 s is measured once. Public API only, so the script runs
unchanged against an older checkout (PYTHONPATH=<checkout>/src).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import statistics
import sys
import threading
import time
import timeit
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from _scale_refs import KeyedFloor, MinimalLease
from _timing import best_ns_per_call
from bench_get import Floor
from loadbalancer import (
    Endpoint,
    LeastConnectionsStrategy,
    LoadBalancer,
    MaglevStrategy,
    OutlierDetection,
    PeakEWMAStrategy,
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

Candidate = Callable[[], object] | str

SIZES = (10, 100, 1_000, 10_000)
KEYS = [f"user:{i}:session" for i in range(1_000)]
BALANCE_FACTOR = 1.25
HELD = 100  # leases held open on each bounded-load balancer: min(size, HELD)
KETAMA_MAX_POINTS = 1 << 20  # the library refuses larger ketama rings (4 points per vnode)
ROUNDS = 15
ROUND_S = 0.005  # the dearest candidate of a group runs this long per round
SPREAD = 30  # a candidate this many times dearer than its group's cheapest is timed alone
ALONE_S = 0.4  # all rounds of a candidate timed alone
REBUILD_S = 0.8  # all repeats of one rebuild cell
THREADS = (1, 2, 4)
THREAD_OPS = {"lease": 60_000, "get()": 300_000}  # per thread
THREAD_REPEATS = 7

LEASES: dict[str, Candidate] = {  # statements run in per_call's namespace
    "lease, round-robin": "with rr.lease():\n    pass",
    "lease bf=1.25, Maglev": "with maglev.lease(next(keys)):\n    pass",
    "lease bf=1.25, ring": "with ring.lease(next(keys)):\n    pass",
    "lease bf=1.25, rendezvous": "with rendezvous.lease(next(keys)):\n    pass",
}
BUILDS: dict[str, tuple[Callable[[], Strategy], bool]] = {  # factory, weighted pool
    "Maglev build, M=65,537": (MaglevStrategy, False),
    "weighted random build": (lambda: WeightedRandomStrategy(random.Random(1)), True),
    "smooth WRR build": (WeightedRoundRobinStrategy, True),
}
MEMBERSHIP: dict[str, tuple[Callable[[], Strategy], bool]] = {  # factory, weighted pool
    "RoundRobin": (RoundRobinStrategy, False),
    "Random": (lambda: RandomStrategy(random.Random(1)), False),
    "PowerOfTwoChoices": (lambda: PowerOfTwoChoicesStrategy(rng=random.Random(1)), False),
    "LeastConnections": (lambda: LeastConnectionsStrategy(rng=random.Random(1)), False),
    "weighted random": (lambda: WeightedRandomStrategy(random.Random(1)), True),
    "smooth WRR": (WeightedRoundRobinStrategy, True),
    "Maglev": (MaglevStrategy, False),
    "ring (xxh64)": (RingHashStrategy, False),
}


def pool(size: int, weighted: bool) -> dict[str, float]:
    """``size`` server names and their weights: 1, or 1-4 (``1 + i % 4``) if ``weighted``."""
    return {f"10.0.{i // 256}.{i % 256}:8080": (1 + i % 4) if weighted else 1 for i in range(size)}


def balancer(strategy: Strategy, weights: Mapping[str, float]) -> LoadBalancer:
    """A balancer over ``weights`` with room for one more server."""
    lb = LoadBalancer(strategy=strategy, max_servers=len(weights) + 1)
    lb.replace(weights)
    return lb


def snapshot(weights: Mapping[str, float]) -> Snapshot:
    """A snapshot of fresh endpoints, for timing a strategy's build()."""
    endpoints = tuple(Endpoint(server, weight) for server, weight in weights.items())
    return Snapshot.of(endpoints, time.monotonic)


def per_key(get: Callable[[str], object]) -> Callable[[], object]:
    """One call looks up every key of KEYS; map() adds no Python frame of its own."""
    return lambda: deque(map(get, KEYS), maxlen=0)


def estimate_ns(call: Candidate, namespace: Mapping[str, object]) -> float:
    """Rough ns per call, timed in batches ten times larger until one lasts 1 ms."""
    number = 1
    while True:
        elapsed = timeit.timeit(call, number=number, globals=dict(namespace))
        if elapsed >= 1e-3:
            return elapsed / number * 1e9
        number *= 10


def measure(
    candidates: Mapping[str, Candidate], namespace: Mapping[str, object], per: int = 1
) -> dict[str, float]:
    """Best ns per operation (a call does ``per``): the cheap ones interleaved, the dear alone."""
    estimates = {name: estimate_ns(call, namespace) for name, call in candidates.items()}
    cheapest = min(estimates.values())
    together = {
        name: call for name, call in candidates.items() if estimates[name] <= SPREAD * cheapest
    }
    calls = max(1, int(ROUND_S * 1e9 / max(estimates[name] for name in together)))
    results = best_ns_per_call(together, calls=calls, rounds=ROUNDS, namespace=namespace)
    for name, call in candidates.items():
        if name not in together:
            calls = max(1, int(ROUND_S * 1e9 / estimates[name]))
            rounds = max(3, min(ROUNDS, int(ALONE_S * 1e9 / (calls * estimates[name]))))
            alone = best_ns_per_call({name: call}, calls=calls, rounds=rounds, namespace=namespace)
            results.update(alone)
    return {name: results[name] / per for name in candidates}


def per_call(size: int) -> dict[str, float]:
    """ns per pick, keyed lookup and lease at ``size`` servers, with the references."""
    weights = pool(size, weighted=False)
    servers = list(weights)
    rng = random.Random(size)
    ring = balancer(RingHashStrategy(balance_factor=BALANCE_FACTOR), weights)
    results = measure(
        {
            "floor": Floor(servers).get,
            "LeastConnections get()": balancer(LeastConnectionsStrategy(rng=rng), weights).get,
            "PowerOfTwoChoices get()": balancer(PowerOfTwoChoicesStrategy(rng=rng), weights).get,
            "PeakEWMA get()": balancer(PeakEWMAStrategy(rng=rng), weights).get,
        },
        {},
    )
    vnodes = min(40, KETAMA_MAX_POINTS // (4 * size))  # 40 is ketama's default
    ketama = balancer(RingHashStrategy(hash="ketama", vnodes=vnodes), weights)
    keyed = {
        "keyed floor": per_key(KeyedFloor(servers).get),
        "ring get(key), xxh64": per_key(ring.get),
        "ring get(key), ketama": per_key(ketama.get),
    }
    results.update(measure(keyed, {}, per=len(KEYS)))
    bounded = {
        "maglev": balancer(MaglevStrategy(balance_factor=BALANCE_FACTOR), weights),
        "ring": ring,
        "rendezvous": balancer(RendezvousStrategy(balance_factor=BALANCE_FACTOR), weights),
    }
    held = [lb.lease(f"held:{i}") for lb in bounded.values() for i in range(min(size, HELD))]
    namespace = {
        "minimal": MinimalLease(),
        "rr": balancer(RoundRobinStrategy(), weights),
        "keys": itertools.cycle(KEYS),
        **bounded,
    }
    results.update(measure({"minimal lease": "with minimal:\n    pass", **LEASES}, namespace))
    for lease in held:
        lease.release(None)
    endpoints = {server: Endpoint(server) for server in servers}
    results.update(measure({"pool copy": "dict(endpoints)"}, {"endpoints": endpoints}))
    return results


def timed(operations: Sequence[Callable[[], object]]) -> list[float]:
    """Seconds each of ``operations`` takes, run one after another."""
    times = []
    for operation in operations:
        start = time.perf_counter()
        operation()
        times.append(time.perf_counter() - start)
    return times


def best_of(operations: Sequence[Callable[[], object]], max_repeats: int) -> list[float]:
    """Best seconds of each of ``operations``, run in turn as often as REBUILD_S allows."""
    gc.disable()
    try:
        best = timed(operations)
        once = sum(best)
        repeats = min(max_repeats, max(int(REBUILD_S / once), 2 if once < 0.1 else 0))
        for _ in range(repeats):
            best = [min(pair) for pair in zip(best, timed(operations), strict=True)]
    finally:
        gc.enable()
    return best


def rebuilds(size: int, max_repeats: int) -> dict[str, float]:
    """Seconds per build and per register/unregister of one server at ``size`` servers."""
    results = {}
    for name, (factory, is_weighted) in BUILDS.items():
        build = partial(factory().build, snapshot(pool(size, is_weighted)))
        results[name] = best_of([build], max_repeats)[0]
    for name, (factory, is_weighted) in MEMBERSHIP.items():
        lb = balancer(factory(), pool(size, is_weighted))
        steps = [partial(lb.register, "extra"), partial(lb.unregister, "extra")]
        register, unregister = best_of(steps, max_repeats)
        results[f"{name} register"] = register
        results[f"{name} unregister"] = unregister
    return results


def leases(lb: LoadBalancer, ops: int) -> None:
    """``ops`` lease cycles on ``lb``."""
    lease = lb.lease
    for _ in range(ops):
        with lease():
            pass


def gets(lb: LoadBalancer, ops: int) -> None:
    """``ops`` calls of ``lb.get()``."""
    get = lb.get
    for _ in range(ops):
        get()


def throughput(work: Callable[[], None], threads: int, ops: int) -> float:
    """Total operations per second of ``threads`` threads each running ``work`` (``ops`` each)."""
    starts: list[float] = []
    ends: list[float] = []
    barrier = threading.Barrier(threads, action=lambda: starts.append(time.perf_counter()))

    def worker() -> None:
        """Wait for the others, work, note the end."""
        barrier.wait()
        work()
        ends.append(time.perf_counter())

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return threads * ops / (max(ends) - starts[0])


def thread_scaling() -> dict[str, dict[int, float]]:
    """Best total ops/s of each path at 1, 2 and 4 threads on one round-robin balancer."""
    lb = balancer(RoundRobinStrategy(), pool(10, weighted=False))
    paths = {"lease": leases, "get()": gets}
    best = {path: dict.fromkeys(THREADS, 0.0) for path in paths}
    gc.disable()
    try:
        for _ in range(THREAD_REPEATS):
            for path, run in paths.items():
                ops = THREAD_OPS[path]
                for threads in THREADS:
                    rate = throughput(partial(run, lb, ops), threads, ops)
                    best[path][threads] = max(best[path][threads], rate)
    finally:
        gc.enable()
    return best


def _three_digits(value: float) -> str:
    """``value`` (under 1,000) with three significant digits, trailing zeros kept."""
    decimals = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{decimals}f}"


def duration(ns: float) -> str:
    """``ns`` in the unit that keeps three significant digits short."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return _three_digits(ns / scale) + unit
    return _three_digits(ns) + "ns"


def ratio(value: float, reference: float) -> str:
    """``value / reference`` as a short factor."""
    factor = value / reference
    return f"{factor:.1f}x" if factor < 100 else f"{factor:,.0f}x"


class Report:
    """The one table: every row at every size, from the measurements of one run."""

    def __init__(self, calls: dict[int, dict[str, float]], slow: dict[int, dict[str, float]]):
        """``calls``: ns per operation by size and row; ``slow``: seconds per rebuild."""
        self.calls = calls
        self.slow = slow

    def row(self, label: str, cells: list[str]) -> None:
        """One line: ``label``, then one cell per size."""
        print(f"  {label:<26}" + "".join(f"{cell:>18}" for cell in cells))

    def ratio_row(self, name: str, reference: str) -> None:
        """A per-call row: the ratio to ``reference``, and the time per operation."""
        cells = []
        for size in SIZES:
            ns = self.calls[size][name]
            cells.append(f"{ratio(ns, self.calls[size][reference])} {duration(ns):>7}")
        self.row(name, cells)

    def print(self) -> None:
        """Print the per-call, rebuild and membership sections."""
        print(f"{'servers':<28}" + "".join(f"{size:>18,}" for size in SIZES))
        print("references, per operation")
        for name in ("floor", "keyed floor", "minimal lease", "pool copy"):
            self.row(name, [duration(self.calls[size][name]) for size in SIZES])
        print("picks, lb.get(): x floor")
        for name in ("LeastConnections get()", "PowerOfTwoChoices get()", "PeakEWMA get()"):
            self.ratio_row(name, "floor")
        print("keyed lookups, lb.get(key): x keyed floor")
        for name in ("ring get(key), xxh64", "ring get(key), ketama"):
            self.ratio_row(name, "keyed floor")
        print("leases, with lb.lease(...): pass: x minimal lease")
        for name in LEASES:
            self.ratio_row(name, "minimal lease")
        print("rebuilds, per change")
        for name in ("ring (xxh64) register", "ring (xxh64) unregister", *BUILDS):
            self.row(name, [duration(self.slow[size][name] * 1e9) for size in SIZES])
        print("membership, per change (mean of a register and an unregister): x pool copy")
        for name in MEMBERSHIP:
            cells = []
            for size in SIZES:
                slow = self.slow[size]
                ns = (slow[f"{name} register"] + slow[f"{name} unregister"]) / 2
                cells.append(
                    f"{ratio(ns * 1e9, self.calls[size]['pool copy'])} {duration(ns * 1e9):>7}"
                )
            self.row(name, cells)


def print_threads(rates: dict[str, dict[int, float]]) -> None:
    """The threads section: 1 thread's throughput, and 2 and 4 threads' as ratios to it."""
    print("threads on one round-robin balancer, 10 servers: total throughput x 1 thread's")
    print(f"  {'path':<26}{'1 thread':>18}" + "".join(f"{n:>10} threads" for n in THREADS[1:]))
    for path, by_threads in rates.items():
        one = by_threads[1]
        cells = "".join(f"{by_threads[n] / one:>17.2f}x" for n in THREADS[1:])
        print(f"  {path:<26}{one / 1e6:>12.2f} Mop/s" + cells)


def ejection_ms(background: bool, trials: int = 5) -> tuple[float, float] | None:
    """Median ms a failing lease's release takes, and until picks avoid its server.

    Maglev over 1,000 servers, ejecting at the first failure. None for the background on an
    older checkout, whose balancer has no ``rebuild_in_background``: it always rebuilt in the
    release, which is what the other row measures there.
    """
    options: dict[str, object] = {"outlier_detection": OutlierDetection(consecutive_failures=1)}
    try:
        LoadBalancer(rebuild_in_background=background)  # type: ignore[call-arg, unused-ignore]
        options["rebuild_in_background"] = background
    except TypeError:
        if background:
            return None
    releases, effects = [], []
    for _ in range(trials):
        gc.collect()  # a collection during one trial would be timed as part of it
        lb = LoadBalancer(MaglevStrategy(), max_servers=1_000, **options)  # type: ignore[arg-type]
        lb.replace([f"s{i}" for i in range(1_000)])
        lease = lb.acquire("key")
        start = time.perf_counter()
        lease.release(False)
        released = time.perf_counter()
        while lb.get("key") == lease.server:
            time.sleep(0.0002)  # polling a published picker: nothing to wait on
        avoided = time.perf_counter()
        releases.append(released - start)
        effects.append(avoided - start)
    return statistics.median(releases) * 1e3, statistics.median(effects) * 1e3


def print_ejections() -> None:
    """The cost of an ejection to the request that calls for it, and how soon it applies."""
    print("ejection at a failing lease's exit, Maglev, 1,000 servers (median of 5)")
    for label, background in (("rebuild in background", True), ("rebuild in the release", False)):
        figures = ejection_ms(background)
        if figures is None:
            print(f"  {label:<24} n/a (this checkout rebuilds in the release)")
        else:
            release, effect = figures
            print(f"  {label:<24} release {release:8.3f} ms; picks avoid it after {effect:6.1f} ms")


def main() -> None:
    """Measure every size, then print the one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-repeats", type=int, default=100, help="cap on the repeats of each rebuild cell"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    calls = {size: per_call(size) for size in SIZES}
    slow = {size: rebuilds(size, args.max_repeats) for size in SIZES}
    threads = thread_scaling()
    elapsed = time.perf_counter() - started
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"Python {sys.version.split()[0]} ({'GIL' if gil else 'free-threaded'} build), ", end="")
    print(f"{os.cpu_count()} cores; ratios to same-run references, absolute figures beside")
    Report(calls, slow).print()
    print_threads(threads)
    print_ejections()
    print(f"measured in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
