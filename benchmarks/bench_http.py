"""The HTTP integrations' cost per request beside the same client without the balancer.

Each figure is printed beside its reference measured in the same run, as a ratio: absolute
figures on a shared machine move by 2x, their ratios far less.

1. Own work in isolation, no network: httpx over ``httpx.MockTransport``; requests over a
   fake socket beneath urllib3; aiohttp over a fake transport beneath its connector (see
   ``_fake_wire``). Plain client vs the same client balanced (1 and 3 servers): µs per
   request, best of interleaved rounds; balanced minus plain is the balancer's own work.
2. One real uvicorn backend in its own process, plain vs balanced, interleaved rounds
   (see ``_http_load``): req/s, p50/p99 latency, and the client process's CPU per request,
   whose difference is the balancer's own CPU per request (a cross-check of 1).

Targets (the issue's): the balancer adds <= 10 µs of its own work per request, and costs
<= 5% of requests per second against a local backend.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import httpx
import requests
from requests.adapters import HTTPAdapter

from _fake_wire import FakeConnector, fake_socket
from _http_load import (
    OWN_TARGET_US,
    Fetch,
    Load,
    async_case,
    backend_process,
    print_load,
    sync_case,
    verdict,
)
from _timing import best_ns_per_call
from loadbalancer import LoadBalancer, RoundRobinStrategy
from loadbalancer.integrations.aiohttp import BalancedMiddleware
from loadbalancer.integrations.httpx import AsyncBalancedTransport, BalancedTransport
from loadbalancer.integrations.requests import BalancedAdapter

URL = "http://service/items/1"  # the logical URL the balanced clients ask for
MOCK_URL = "http://10.0.0.0:8080/items/1"  # the plain clients' URL over a fake wire
BODY = b'{"id": "1", "backend": "mock"}'

MOCK_CALLS = 2_000  # requests per round, over a mock or fake wire
MOCK_ROUNDS = 7
LOAD_REQUESTS = 4_000  # requests per client per case, against the real backend
LOAD_ROUNDS = 16  # ... in this many interleaved rounds
THREADS = 8
TASKS = 32

PLAIN = "plain"
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


def print_own_cost(title: str, results_us: dict[str, float], *, plain: str) -> None:
    """µs per request, and the balanced rows' excess over the plain row of the same run."""
    print(f"\n{title}")
    base = results_us[PLAIN]
    for name, us in results_us.items():
        label = plain if name == PLAIN else name
        line = f"  {label:<22} {us:8.1f} µs/req  {us / base:5.2f}x plain"
        if name != PLAIN:
            own = us - base
            line += (
                f"  own cost {own:+6.1f} µs  (target <= {OWN_TARGET_US:g} µs:"
                f" {verdict(own <= OWN_TARGET_US)})"
            )
        print(line)


# -- 1. httpx's own work, over httpx.MockTransport ------------------------------------------------


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
        print_own_cost(title, rows, plain="plain httpx")


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
        rows = {name: us for (k, name), us in best.items() if k == kind}
        print_own_cost(title, rows, plain="plain httpx")


# -- 2. requests' own work, over a fake socket ----------------------------------------------------


def requests_session(adapter: HTTPAdapter, prefix: str) -> requests.Session:
    """A session with ``adapter`` mounted for ``prefix``, reading no proxy or netrc settings
    from the environment (as trust_env=False for httpx)."""
    session = requests.Session()
    session.trust_env = False
    session.mount(prefix, adapter)
    return session


def mock_requests() -> None:
    # The plain HTTPAdapter and BalancedAdapter (an HTTPAdapter subclass) over the same fake
    # socket (_fake_wire.fake_socket): only the kernel's part is missing, so requests, urllib3
    # and http.client run in full for both, and the balancer's work is the difference. A
    # stand-in higher up (for urlopen, say) would skip the connection release that ends the
    # balancer's lease.
    adapters: dict[str, tuple[HTTPAdapter, str, str]] = {
        PLAIN: (HTTPAdapter(), "http://", MOCK_URL),
        ONE: (BalancedAdapter(balancer(mock_servers(1))), "http://service/", URL),
        THREE: (BalancedAdapter(balancer(mock_servers(3))), "http://service/", URL),
    }
    namespace: dict[str, object] = {}
    statements: dict[str, Callable[[], object] | str] = {}
    sessions = []
    for i, (name, (adapter, prefix, url)) in enumerate(adapters.items()):
        fake_socket(adapter, BODY)
        session = requests_session(adapter, prefix)
        sessions.append(session)
        session.get(url).raise_for_status()
        namespace[f"s{i}"] = session
        namespace[f"u{i}"] = url
        statements[name] = f"s{i}.get(u{i})"
    results = best_ns_per_call(
        statements, calls=MOCK_CALLS, rounds=MOCK_ROUNDS, namespace=namespace
    )
    for session in sessions:
        session.close()
    print_own_cost(
        "requests.Session over a fake socket: session.get(url)",
        {name: ns / 1000 for name, ns in results.items()},
        plain="plain requests",
    )


# -- 3. aiohttp's own work, over a fake transport -------------------------------------------------


def mock_aiohttp() -> None:
    targets: dict[str, tuple[list[str] | None, str]] = {
        PLAIN: (None, MOCK_URL),
        ONE: (mock_servers(1), URL),
        THREE: (mock_servers(3), URL),
    }

    async def timed(servers: list[str] | None, url: str) -> float:
        middlewares = () if servers is None else (BalancedMiddleware(balancer(servers)),)
        async with aiohttp.ClientSession(
            connector=FakeConnector(BODY), middlewares=middlewares
        ) as session:

            async def fetch() -> None:
                async with session.get(url) as response:
                    await response.read()

            for _ in range(50):  # warm-up
                await fetch()
            clock = time.perf_counter
            start = clock()
            for _ in range(MOCK_CALLS):
                await fetch()
            return (clock() - start) / MOCK_CALLS * 1e6

    best = dict.fromkeys(targets, float("inf"))
    gc.disable()
    try:
        for _ in range(MOCK_ROUNDS):
            for name, (servers, url) in targets.items():
                best[name] = min(best[name], asyncio.run(timed(servers, url)))
    finally:
        gc.enable()
    print_own_cost(
        "aiohttp.ClientSession over a fake transport: async with session.get(url): read(),"
        " one task",
        best,
        plain="plain aiohttp",
    )


# -- 4. against a real local backend -------------------------------------------------------------


def real_httpx(lb: LoadBalancer, url: str) -> None:
    names = ("plain httpx -> backend URL", f"balanced -> {URL}")
    with (
        httpx.Client(trust_env=False) as plain,
        httpx.Client(transport=BalancedTransport(lb), trust_env=False) as balanced,
    ):
        fetches: tuple[Fetch, Fetch] = (
            lambda: plain.get(url).status_code,
            lambda: balanced.get(URL).status_code,
        )
        for threads, case in ((1, "sequential, one thread"), (THREADS, f"{THREADS} threads")):
            loads = sync_case(fetches, requests=LOAD_REQUESTS, rounds=LOAD_ROUNDS, threads=threads)
            print_load(f"httpx.Client, {case}", names, *loads)

    async def run() -> tuple[Load, Load]:
        # Every task's connection kept alive (httpx keeps 20 by default): else 12 of the 32
        # reconnect after each request, and TCP handshakes swamp what is measured.
        limits = httpx.Limits(max_keepalive_connections=TASKS)
        async with (
            httpx.AsyncClient(limits=limits, trust_env=False) as plain,
            httpx.AsyncClient(
                transport=AsyncBalancedTransport(
                    lb, transport=httpx.AsyncHTTPTransport(limits=limits)
                ),
                trust_env=False,
            ) as balanced,
        ):

            async def fetch_plain() -> int:
                return (await plain.get(url)).status_code

            async def fetch_balanced() -> int:
                return (await balanced.get(URL)).status_code

            return await async_case(
                (fetch_plain, fetch_balanced),
                requests=LOAD_REQUESTS,
                rounds=LOAD_ROUNDS,
                tasks=TASKS,
            )

    print_load(f"httpx.AsyncClient, {TASKS} concurrent tasks", names, *asyncio.run(run()))
    if importlib.util.find_spec("sniffio") is None:
        # httpcore imports sniffio afresh at each async lock's set-up, and a failed import is
        # never cached: each is a search of sys.path (~50 µs; cProfile counted 4 a request
        # alone, 11 among 32 tasks). Its pool also scans all connections for every request.
        print(
            "    (sniffio is not installed: httpcore retries `import sniffio` 4-11 times a"
            " request, ~50 µs each,\n    and scans its pool per request: plain and balanced"
            " alike, this swamps these rows' CPU)"
        )


def real_requests(lb: LoadBalancer, url: str) -> None:
    names = ("plain requests -> backend URL", f"BalancedAdapter -> {URL}")
    with (
        requests_session(HTTPAdapter(), "http://") as plain,
        requests_session(BalancedAdapter(lb), "http://service/") as balanced,
    ):
        fetches: tuple[Fetch, Fetch] = (
            lambda: plain.get(url).status_code,
            lambda: balanced.get(URL).status_code,
        )
        for threads, case in ((1, "sequential, one thread"), (THREADS, f"{THREADS} threads")):
            loads = sync_case(fetches, requests=LOAD_REQUESTS, rounds=LOAD_ROUNDS, threads=threads)
            print_load(f"requests.Session, {case}", names, *loads)


def real_aiohttp(lb: LoadBalancer, url: str) -> None:
    names = ("plain aiohttp -> backend URL", f"BalancedMiddleware -> {URL}")

    async def run(tasks: int) -> tuple[Load, Load]:
        async with (
            aiohttp.ClientSession() as plain,
            aiohttp.ClientSession(middlewares=(BalancedMiddleware(lb),)) as balanced,
        ):

            async def fetch_plain() -> int:
                async with plain.get(url) as response:
                    await response.read()
                    return response.status

            async def fetch_balanced() -> int:
                async with balanced.get(URL) as response:
                    await response.read()
                    return response.status

            return await async_case(
                (fetch_plain, fetch_balanced),
                requests=LOAD_REQUESTS,
                rounds=LOAD_ROUNDS,
                tasks=tasks,
            )

    for tasks, case in ((1, "sequential, one task"), (TASKS, f"{TASKS} concurrent tasks")):
        print_load(f"aiohttp.ClientSession, {case}", names, *asyncio.run(run(tasks)))


def real_backend() -> None:
    with backend_process() as address:
        url = f"http://{address}/items/1"
        print(
            f"\none real uvicorn backend (h11), in its own process, on {address}:"
            f" {LOAD_REQUESTS:,} requests per client per case,"
            f"\nin {LOAD_ROUNDS} rounds, plain and balanced in turn. req/s: the best round's;"
            " p50/p99: wall-clock latency over all"
            "\nrequests; CPU: this process's CPU time (time.process_time, all threads) per"
            " request, median round."
            "\nThe backend's CPU, in its own process, is not counted: balanced minus plain CPU"
            " is the balancer's own"
            "\nCPU per request, network and server aside. Verdicts: medians over paired rounds"
            " (balanced vs the plain"
            "\nround just before it), req/s ratio and CPU difference."
        )
        lb = balancer([address])
        real_httpx(lb, url)
        real_requests(lb, url)
        real_aiohttp(lb, url)


def main() -> None:
    print(
        f"Python {sys.version.split()[0]}, httpx {httpx.__version__}, requests"
        f" {requests.__version__}, aiohttp {aiohttp.__version__}, loopback only"
    )
    began = time.perf_counter()
    mock_sync()
    mock_async()
    mock_requests()
    mock_aiohttp()
    real_backend()
    print(f"\n({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
