"""The httpx transports' cost per request beside plain httpx, same run: mock and real backend."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx

from _timing import best_ns_per_call
from loadbalancer import LoadBalancer, RoundRobinStrategy
from loadbalancer.integrations.httpx import AsyncBalancedTransport, BalancedTransport

ROOT = Path(__file__).resolve().parent.parent
URL = "http://service/items/1"
BODY = b'{"id": "1", "backend": "mock"}'
OWN_TARGET_US = 10.0  # the target: the balancer's own work per request
RPS_TARGET = 0.05  # ... and at most 5% fewer requests per second against a real backend

MOCK_CALLS = 2_000  # requests per round, over a MockTransport
MOCK_ROUNDS = 7
LOAD_REQUESTS = 2_000  # requests per client per case, against the real backend
LOAD_ROUNDS = 10  # ... in this many interleaved rounds
THREADS = 8
TASKS = 32

PLAIN = "plain httpx"
ONE = "balanced, 1 server"
THREE = "balanced, 3 servers"


class Unread(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body still to be read, as httpx.HTTPTransport returns it: ``content=`` would be read
    inside the mock, sparing plain httpx the body read that a real transport costs it."""

    def __iter__(self) -> Iterator[bytes]:
        yield BODY

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield BODY


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=Unread())


def balancer(servers: list[str]) -> LoadBalancer:
    lb = LoadBalancer(strategy=RoundRobinStrategy())
    lb.replace(servers)
    return lb


def mock_servers(n: int) -> list[str]:
    return [f"10.0.0.{i}:8080" for i in range(n)]


def verdict(own_us: float) -> str:
    return "met" if own_us <= OWN_TARGET_US else "MISSED"


def print_own_cost(title: str, results_us: dict[str, float]) -> None:
    """µs per request, and the balanced rows' excess over the plain row of the same run."""
    print(f"\n{title}")
    base = results_us[PLAIN]
    for name, us in results_us.items():
        line = f"  {name:<22} {us:8.1f} µs/req  {us / base:5.2f}x plain"
        if name != PLAIN:
            own = us - base
            line += f"  own cost {own:+6.1f} µs  (target <= {OWN_TARGET_US:g} µs: {verdict(own)})"
        print(line)


# -- 1. the integration's own work, over httpx.MockTransport -----------------------------------


def mock_sync() -> None:
    clients = {
        PLAIN: httpx.Client(transport=httpx.MockTransport(ok), trust_env=False),
        ONE: httpx.Client(
            transport=BalancedTransport(
                balancer(mock_servers(1)), transport=httpx.MockTransport(ok)
            ),
            trust_env=False,
        ),
        THREE: httpx.Client(
            transport=BalancedTransport(
                balancer(mock_servers(3)), transport=httpx.MockTransport(ok)
            ),
            trust_env=False,
        ),
    }
    namespace: dict[str, object] = {"url": URL}
    statements: dict[str, Callable[[], object] | str] = {}
    names: dict[str, tuple[str, str]] = {}
    for i, (name, client) in enumerate(clients.items()):
        namespace[f"c{i}"] = client
        client.get(URL).raise_for_status()
        statements[f"get {i}"] = f"c{i}.get(url)"
        statements[f"stream {i}"] = f"with c{i}.stream('GET', url) as r:\n    r.read()"
        names[f"get {i}"] = ("get", name)
        names[f"stream {i}"] = ("stream", name)
    results = best_ns_per_call(
        statements, calls=MOCK_CALLS, rounds=MOCK_ROUNDS, namespace=namespace
    )
    for client in clients.values():
        client.close()
    for kind, title in (
        ("get", "httpx.Client over MockTransport: client.get(url)"),
        ("stream", "httpx.Client over MockTransport: with client.stream('GET', url): r.read()"),
    ):
        rows = {names[key][1]: ns / 1000 for key, ns in results.items() if names[key][0] == kind}
        print_own_cost(title, rows)


def mock_async() -> None:
    makers: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
        PLAIN: lambda: httpx.MockTransport(ok),
        ONE: lambda: AsyncBalancedTransport(
            balancer(mock_servers(1)), transport=httpx.MockTransport(ok)
        ),
        THREE: lambda: AsyncBalancedTransport(
            balancer(mock_servers(3)), transport=httpx.MockTransport(ok)
        ),
    }

    async def timed(make: Callable[[], httpx.AsyncBaseTransport], stream: bool) -> float:
        async with httpx.AsyncClient(transport=make(), trust_env=False) as client:
            for _ in range(50):  # warm-up
                await client.get(URL)
            clock = time.perf_counter
            start = clock()
            if stream:
                for _ in range(MOCK_CALLS):
                    async with client.stream("GET", URL) as response:
                        await response.aread()
            else:
                for _ in range(MOCK_CALLS):
                    await client.get(URL)
            return (clock() - start) / MOCK_CALLS * 1e6

    best = {(kind, name): float("inf") for kind in ("get", "stream") for name in makers}
    gc.disable()
    try:
        for _ in range(MOCK_ROUNDS):
            for kind, name in best:
                us = asyncio.run(timed(makers[name], kind == "stream"))
                best[kind, name] = min(best[kind, name], us)
    finally:
        gc.enable()
    for kind, title in (
        ("get", "httpx.AsyncClient over MockTransport: await client.get(url), one task"),
        ("stream", "httpx.AsyncClient over MockTransport: async with client.stream(...): aread()"),
    ):
        print_own_cost(title, {name: us for (k, name), us in best.items() if k == kind})


# -- 2. against a real local backend -------------------------------------------------------------

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


@contextlib.contextmanager
def backend_process() -> Iterator[str]:
    """Start one uvicorn backend in a child process; yield its ``127.0.0.1:PORT``."""
    child = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(ROOT)],
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
    """One client's rounds: requests/s of each round, every request's latency (s)."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.latencies: list[float] = []

    def add(self, requests: int, elapsed: float, latencies: list[float]) -> None:
        self.rates.append(requests / elapsed)
        self.latencies.extend(latencies)

    @property
    def rate(self) -> float:
        return max(self.rates)  # the least disturbed round, as _timing does

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[p - 1]


def sync_round(client: httpx.Client, url: str, requests: int, threads: int) -> Load:
    per_thread = requests // threads
    outs: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def worker(out: list[float]) -> None:
        clock = time.perf_counter
        barrier.wait()
        for _ in range(per_thread):
            start = clock()
            if client.get(url).status_code != 200:
                raise RuntimeError(f"{url}: not 200")
            out.append(clock() - start)

    workers = [threading.Thread(target=worker, args=(out,)) for out in outs]
    for thread in workers:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - start
    load = Load()
    load.add(per_thread * threads, elapsed, [x for out in outs for x in out])
    return load


async def async_round(client: httpx.AsyncClient, url: str, requests: int, tasks: int) -> Load:
    per_task = requests // tasks
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker() -> None:
        for _ in range(per_task):
            start = clock()
            if (await client.get(url)).status_code != 200:
                raise RuntimeError(f"{url}: not 200")
            latencies.append(clock() - start)

    start = clock()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    load = Load()
    load.add(per_task * tasks, clock() - start, latencies)
    return load


def merge(total: Load, part: Load) -> None:
    total.rates.extend(part.rates)
    total.latencies.extend(part.latencies)


def print_load(case: str, plain: Load, balanced: Load) -> None:
    print(f"  {case}")
    for name, load in (("plain httpx -> backend URL", plain), (f"balanced -> {URL}", balanced)):
        print(
            f"    {name:<40} {load.rate:7.0f} req/s  p50 {load.percentile(50) * 1000:6.3f} ms"
            f"  p99 {load.percentile(99) * 1000:6.3f} ms"
        )
    ratio = balanced.rate / plain.rate
    cost = 1 - ratio
    met = "met" if cost <= RPS_TARGET else "MISSED"
    print(
        f"    balanced/plain req/s {ratio:.3f} (costs {cost * 100:+.1f}% of req/s;"
        f" target <= {RPS_TARGET * 100:g}%: {met})"
    )


def real_backend() -> None:
    per_round = LOAD_REQUESTS // LOAD_ROUNDS
    with backend_process() as address:
        url = f"http://{address}/items/1"
        print(
            f"\none real uvicorn backend (h11), in its own process, on {address}:"
            f"\n{LOAD_REQUESTS:,} requests per client per case in {LOAD_ROUNDS} interleaved rounds;"
            " req/s of the best round, p50/p99 over all requests"
        )
        lb = balancer([address])
        plain = httpx.Client(trust_env=False)
        balanced = httpx.Client(transport=BalancedTransport(lb), trust_env=False)
        clients = ((plain, url), (balanced, URL))
        with plain, balanced:
            for threads, case in ((1, "sequential, one thread"), (THREADS, f"{THREADS} threads")):
                for client, target in clients:  # warm-up: connections open, code paths hot
                    sync_round(client, target, 200, threads)
                totals = (Load(), Load())
                for _ in range(LOAD_ROUNDS):
                    for total, (client, target) in zip(totals, clients, strict=True):
                        merge(total, sync_round(client, target, per_round, threads))
                print_load(case, *totals)

        async def run_async() -> tuple[Load, Load]:
            async with (
                httpx.AsyncClient(trust_env=False) as aplain,
                httpx.AsyncClient(transport=AsyncBalancedTransport(lb), trust_env=False) as abal,
            ):
                aclients = ((aplain, url), (abal, URL))
                for client, target in aclients:
                    await async_round(client, target, 4 * TASKS, TASKS)
                totals = (Load(), Load())
                for _ in range(LOAD_ROUNDS):
                    for total, (client, target) in zip(totals, aclients, strict=True):
                        merge(total, await async_round(client, target, per_round, TASKS))
                return totals

        print_load(f"httpx.AsyncClient, {TASKS} concurrent tasks", *asyncio.run(run_async()))


def main() -> None:
    print(f"Python {sys.version.split()[0]}, httpx {httpx.__version__}, loopback only")
    began = time.perf_counter()
    mock_sync()
    mock_async()
    real_backend()
    print(f"\n({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
