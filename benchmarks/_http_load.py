"""Load against a real local backend for bench_http: the backend process, rounds, the table.

Every round times a fixed number of requests through one client, on the wall clock (its
rate, each request's latency) and on this process's CPU clock (``time.process_time``: all
threads of this process, user and system). The backend runs in a process of its own, so its
CPU is not counted: the difference between a plain and a balanced client's CPU per request,
same run, is what the balancer itself costs the client's process, whatever the network and
the server add to the wall clock.

Figures: req/s is the best round's (the least disturbed, as ``_timing`` takes); p50/p99 are
over every request of every round; CPU per request is the median round's. The verdicts use
paired rounds: plain and balanced run in turn, and the median over rounds of each balanced
round's ratio (req/s) or difference (CPU) to the plain round just before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN_TARGET_US = 10.0  # the target: the balancer's own work per request
RPS_TARGET = 0.05  # ... and at most 5% fewer requests per second against a real backend

# The backend runs in its own process (tests/http_backends.py's uvicorn Backend), so that it
# does not share this process's GIL: as a remote server would, it runs beside the client
# (on the other core) and the client's own CPU time, balancer included, sets the pace.
SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.http_backends import Backend
with Backend("b0") as backend:
    print(backend.address, flush=True)
    sys.stdin.readline()
"""


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


@contextlib.contextmanager
def backend_process(script: str = SERVE) -> Iterator[str]:
    """Start one backend in a child process; yield its ``127.0.0.1:PORT``.

    ``script`` (default: a uvicorn backend) prints the address, then serves until its stdin
    closes; it is given the project's root as its first argument.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        address = child.stdout.readline().strip()
        if not address:
            raise RuntimeError("the backend process did not start")
        yield address
    finally:
        child.stdin.close()  # its readline() returns: it closes the backend and exits
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class Load:
    """One client's rounds: requests/s and CPU s/request of each round, every request's
    latency (s)."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.cpus: list[float] = []
        self.latencies: list[float] = []

    def add(self, requests: int, elapsed: float, cpu: float, latencies: list[float]) -> None:
        self.rates.append(requests / elapsed)
        self.cpus.append(cpu / requests)
        self.latencies.extend(latencies)

    def merge(self, part: Load) -> None:
        self.rates.extend(part.rates)
        self.cpus.extend(part.cpus)
        self.latencies.extend(part.latencies)

    @property
    def rate(self) -> float:
        return max(self.rates)  # the least disturbed round, as _timing does

    @property
    def cpu_us(self) -> float:
        return statistics.median(self.cpus) * 1e6

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[p - 1]


def paired(plain: Load, balanced: Load) -> tuple[float, float]:
    """The median over rounds of balanced/plain req/s and of balanced - plain CPU µs/request,
    each balanced round beside the plain round just before it: the machine's drift, slower
    than a round, cancels out."""
    pairs = list(zip(plain.rates, balanced.rates, plain.cpus, balanced.cpus, strict=True))
    ratio = statistics.median(b / p for p, b, _, _ in pairs)
    own = statistics.median(b - p for _, _, p, b in pairs) * 1e6
    return ratio, own


Fetch = Callable[[], int]  # one request, its body read; returns the status
AsyncFetch = Callable[[], Awaitable[int]]


def check(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"answered {status}, not 200")


def sync_round(fetch: Fetch, requests: int, threads: int) -> Load:
    """``requests`` requests, split among ``threads`` threads started together."""
    per_thread = requests // threads
    outs: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def worker(out: list[float]) -> None:
        clock = time.perf_counter
        barrier.wait()
        for _ in range(per_thread):
            start = clock()
            check(fetch())
            out.append(clock() - start)

    workers = [threading.Thread(target=worker, args=(out,)) for out in outs]
    for thread in workers:
        thread.start()
    barrier.wait()
    cpu = time.process_time()
    start = time.perf_counter()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    load = Load()
    load.add(per_thread * threads, elapsed, cpu, [x for out in outs for x in out])
    return load


async def async_round(fetch: AsyncFetch, requests: int, tasks: int) -> Load:
    """``requests`` requests, split among ``tasks`` concurrent tasks."""
    per_task = requests // tasks
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker() -> None:
        for _ in range(per_task):
            start = clock()
            check(await fetch())
            latencies.append(clock() - start)

    cpu = time.process_time()
    start = clock()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = clock() - start
    cpu = time.process_time() - cpu
    load = Load()
    load.add(per_task * tasks, elapsed, cpu, latencies)
    return load


def sync_case(
    fetches: tuple[Fetch, Fetch], *, requests: int, rounds: int, threads: int
) -> tuple[Load, Load]:
    """Plain and balanced, in interleaved rounds after a warm-up of each."""
    for fetch in fetches:  # warm-up: connections open, code paths hot
        sync_round(fetch, max(200, 4 * threads), threads)
    totals = (Load(), Load())
    for _ in range(rounds):
        for total, fetch in zip(totals, fetches, strict=True):
            total.merge(sync_round(fetch, requests // rounds, threads))
    return totals


async def async_case(
    fetches: tuple[AsyncFetch, AsyncFetch], *, requests: int, rounds: int, tasks: int
) -> tuple[Load, Load]:
    """Plain and balanced, in interleaved rounds after a warm-up of each."""
    for fetch in fetches:
        await async_round(fetch, max(200, 4 * tasks), tasks)
    totals = (Load(), Load())
    for _ in range(rounds):
        for total, fetch in zip(totals, fetches, strict=True):
            total.merge(await async_round(fetch, requests // rounds, tasks))
    return totals


def print_load(case: str, names: tuple[str, str], plain: Load, balanced: Load) -> None:
    """The two clients' rows, then the balanced/plain ratios and the targets' verdicts."""
    print(f"  {case}")
    for name, load in zip(names, (plain, balanced), strict=True):
        print(
            f"    {name:<44} {load.rate:6.0f} req/s  p50 {load.percentile(50) * 1000:6.3f} ms"
            f"  p99 {load.percentile(99) * 1000:7.3f} ms  CPU {load.cpu_us:6.1f} µs/req"
        )
    ratio, own = paired(plain, balanced)
    cost = 1 - ratio
    print(
        f"    balanced/plain req/s {balanced.rate / plain.rate:.3f} best rounds,"
        f" {ratio:.3f} paired:"
        f" costs {cost * 100:+.1f}% of req/s (target <= {RPS_TARGET * 100:g}%:"
        f" {verdict(cost <= RPS_TARGET)})"
    )
    print(
        f"    balanced/plain CPU   {balanced.cpu_us / plain.cpu_us:.3f}, paired: own CPU"
        f" {own:+.1f} µs/req (target <= {OWN_TARGET_US:g} µs: {verdict(own <= OWN_TARGET_US)})"
    )
