"""The failover engine's costs and effects, beside same-run references.

* the lease cycle, sync and async, against a minimal correct lease (a lock, a counter);
* a pick with ``exclude`` (a retry's pick) against the plain pick;
* attempts per request when every backend fails, with the default retry budget and without;
* the p99 latency of ten servers, one 100x slower, with and without hedging (virtual time);
* the import time of the core, against ``import json`` in the same fresh interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable

from _timing import best_ns_per_call, print_table
from loadbalancer import (
    HedgingPolicy,
    LoadBalancer,
    MaglevStrategy,
    PowerOfTwoChoicesStrategy,
    RetryBudget,
    RetryPolicy,
    RingHashStrategy,
    RoundRobinStrategy,
    Strategy,
)
from loadbalancer.testing import run

SERVERS = [f"10.0.0.{i}:8080" for i in range(10)]


class MinimalLease:
    """The least a correct lease does: count in flight under a lock, record the outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.successes = 0

    def __enter__(self) -> str:
        with self._lock:
            self.in_flight += 1
        return "server"

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.in_flight -= 1
            self.successes += 1


def balancer(strategy: Strategy, **options: object) -> LoadBalancer:
    lb = LoadBalancer(strategy=strategy, **options)  # type: ignore[arg-type]
    lb.replace(SERVERS)
    return lb


def lease_cycles() -> None:
    minimal = "minimal lease (Lock + counters)"
    rr = balancer(RoundRobinStrategy())
    namespace = {"minimal": MinimalLease(), "rr": rr}
    statements: dict[str, Callable[[], object] | str] = {
        minimal: "with minimal:\n    pass",
        "with lb.lease(): round-robin": "with rr.lease():\n    pass",
        "lb.acquire().release(ok=None)": "rr.acquire().release(ok=None)",
    }
    results = best_ns_per_call(statements, calls=50_000, namespace=namespace)
    results["async with lb.lease(): round-robin"] = _async_lease_ns(rr)
    results["async with minimal (same loop, for the ratio)"] = _async_minimal_ns()
    print_table("lease cycle", results, minimal)


def _async_lease_ns(lb: LoadBalancer, cycles: int = 50_000) -> float:
    async def loop() -> None:
        for _ in range(cycles):
            async with lb.lease():
                pass

    return _best_async(loop, cycles)


def _async_minimal_ns(cycles: int = 50_000) -> float:
    class AsyncMinimal(MinimalLease):
        async def __aenter__(self) -> str:
            return self.__enter__()

        async def __aexit__(self, *exc: object) -> None:
            self.__exit__(*exc)

    minimal = AsyncMinimal()

    async def loop() -> None:
        for _ in range(cycles):
            async with minimal:
                pass

    return _best_async(loop, cycles)


def _best_async(loop: Callable[[], object], cycles: int) -> float:
    import time

    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        asyncio.run(loop())  # type: ignore[arg-type]
        best = min(best, (time.perf_counter() - start) / cycles * 1e9)
    return best


def exclusion() -> None:
    tried = frozenset({SERVERS[3]})
    rr = balancer(RoundRobinStrategy())
    namespace = {
        "rr": rr,
        "pick": rr.picker.pick,
        "p2c": balancer(PowerOfTwoChoicesStrategy()),
        "ring": balancer(RingHashStrategy()),
        "maglev": balancer(MaglevStrategy()),
        "tried": tried,
    }
    plain = "rr.get()"
    statements: dict[str, Callable[[], object] | str] = {
        plain: plain,
        "pick() where pick = rr.picker.pick": "pick()",
        "rr.get(exclude=tried)": "rr.get(exclude=tried)",
        "p2c.get()": "p2c.get()",
        "p2c.get(exclude=tried)": "p2c.get(exclude=tried)",
        "ring.get(key='user:42')": "ring.get(key='user:42')",
        "ring.get(key='user:42', exclude=tried)": "ring.get(key='user:42', exclude=tried)",
        "maglev.get(key='user:42')": "maglev.get(key='user:42')",
        "maglev.get(key='user:42', exclude=tried)": "maglev.get(key='user:42', exclude=tried)",
    }
    results = best_ns_per_call(statements, namespace=namespace, calls=50_000)
    print_table("a retry's pick: exclude one server already tried", results, plain)


def attempts_when_everything_fails(budget: RetryBudget, callers: int, calls: int) -> float:
    """Attempts per request, ``callers`` threads each making ``calls`` calls, all refused."""
    lb = LoadBalancer(retry_budget=budget, sleep=lambda _: None)
    lb.replace(SERVERS)
    attempts = 0
    lock = threading.Lock()

    def dead(server: str) -> str:
        nonlocal attempts
        with lock:
            attempts += 1
        raise ConnectionRefusedError(server)

    def caller() -> None:
        for _ in range(calls):
            with contextlib.suppress(ConnectionRefusedError):
                lb.call(dead, retry=RetryPolicy(attempts=3))

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return attempts / (callers * calls)


def budget() -> None:
    print("\nattempts per request when every backend fails (RetryPolicy(attempts=3))")
    for callers in (1, 8, 32):
        calls = 4000 // callers
        limited = attempts_when_everything_fails(RetryBudget(), callers, calls)
        unlimited = attempts_when_everything_fails(RetryBudget.unlimited(), callers, calls)
        print(
            f"  {callers:>2} callers x {calls:>4} calls: {limited:.3f} with the default budget "
            f"(bound {1.2 + 10 / (callers * calls):.3f}), {unlimited:.3f} without"
        )


def hedging() -> None:
    servers = [f"s{i}" for i in range(10)]
    latency = dict.fromkeys(servers, 0.01) | {"s3": 1.0}

    async def attempt(server: str) -> str:
        await asyncio.sleep(latency[server])
        return server

    async def p99(policy: HedgingPolicy | None) -> float:
        loop = asyncio.get_running_loop()
        lb = LoadBalancer(clock=loop.time)
        lb.replace(servers)
        measured = []
        for _ in range(1000):
            start = loop.time()
            await lb.acall(attempt, hedging=policy)
            measured.append(loop.time() - start)
        return statistics.quantiles(measured, n=100)[98]

    without = run(p99(None))
    hedged = run(p99(HedgingPolicy(delay=0.05)))
    print("\np99 latency, 10 servers (10 ms), one at 1 s, round-robin, 1,000 requests")
    print(f"  without hedging           {without * 1000:8.1f} ms")
    print(f"  HedgingPolicy(delay=50ms) {hedged * 1000:8.1f} ms  ({without / hedged:.1f}x lower)")


def import_time() -> None:
    code = (
        "import sys, time\n"
        "t = time.perf_counter(); import json; j = time.perf_counter() - t\n"
        "t = time.perf_counter(); import loadbalancer; lb = time.perf_counter() - t\n"
        "net = [m for m in ('asyncio', 'ssl', 'socket', 'http.client', 'selectors')"
        " if m in sys.modules]\n"
        "print(j, lb, ','.join(net))"
    )
    runs: list[tuple[float, float, str]] = []
    for _ in range(7):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        json_text, lb_text, loaded = out.stdout.split(" ")
        runs.append((float(lb_text), float(json_text), loaded.strip()))
    lb_s, json_s, net = min(runs)
    print("\nimport time, fresh interpreter, best of 7")
    print(f"  import json          {json_s * 1000:6.1f} ms")
    print(f"  import loadbalancer  {lb_s * 1000:6.1f} ms  ({lb_s / json_s:.1f}x json)")
    print(f"  networking modules loaded: {net or 'none'}")


def main() -> None:
    print(f"Python {sys.version.split()[0]}, {len(SERVERS)} servers")
    lease_cycles()
    exclusion()
    budget()
    hedging()
    import_time()


if __name__ == "__main__":
    main()
