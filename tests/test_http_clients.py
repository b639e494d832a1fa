"""One behavioural suite for every HTTP client integration, against real uvicorn backends.

Each test runs once per client in ``tests/http_clients.CLIENTS`` (httpx sync and async,
requests, aiohttp), so that what the issue asks of "every integration" is asserted of each,
by the same code. Client-specific details (error types, TLS, hedging, MockTransport-exact
outcomes) live in each integration's own test module.
"""

from __future__ import annotations

import pkgutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import pytest

import loadbalancer.integrations
from loadbalancer import LoadBalancer, OutlierDetection, RetryPolicy, RingHashStrategy
from loadbalancer.integrations._http import HttpPolicy, StickyKey

from .http_backends import Backend, backends
from .http_clients import CLIENTS, Client


class MakeClient(Protocol):
    def __call__(self, lb: LoadBalancer, policy: HttpPolicy | None = None) -> Client: ...


def test_the_suite_runs_through_every_integration() -> None:
    modules = {
        m.name for m in pkgutil.iter_modules(loadbalancer.integrations.__path__) if m.name[0] != "_"
    }
    # The gRPC channels share a suite of their own: tests/test_grpc_channel.py.
    assert modules - {"grpc", "grpc_aio"} == {"httpx", "requests", "aiohttp"}
    assert set(CLIENTS) == {"httpx", "httpx-async", "requests", "aiohttp"}


@pytest.fixture(params=sorted(CLIENTS))
def make_client(request: pytest.FixtureRequest) -> Iterator[MakeClient]:
    """Build clients of one kind; every one built is closed after the test."""
    made: list[Client] = []
    factory = CLIENTS[request.param]

    def make(lb: LoadBalancer, policy: HttpPolicy | None = None) -> Client:
        client = factory(lb, policy)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def balancer(pool: list[Backend], **kwargs: object) -> LoadBalancer:
    lb = LoadBalancer(**kwargs)  # type: ignore[arg-type]
    lb.replace([b.address for b in pool])
    return lb


def in_flight(lb: LoadBalancer) -> int:
    return sum(s.in_flight for s in lb.stats().values())


def test_a_backend_killed_mid_run_fails_no_request(make_client: MakeClient) -> None:
    with backends(3) as pool:
        lb = balancer(
            pool,
            outlier_detection=OutlierDetection(consecutive_failures=3, max_ejection_percent=50),
        )
        client = make_client(lb, HttpPolicy(retry=RetryPolicy(attempts=3, per_try_timeout=5.0)))
        victim = pool[1]
        done = 0
        done_lock = threading.Lock()
        hundred = threading.Event()
        failures: list[BaseException] = []

        def one(i: int) -> str:
            nonlocal done
            try:
                reply = client.get(f"http://inventory/items/{i}")
                assert reply.status == 200, reply
            except BaseException as exc:
                failures.append(exc)
                raise
            with done_lock:
                done += 1
                if done == 100:
                    hundred.set()
            return reply.backend

        def killer() -> None:
            hundred.wait(30)
            victim.kill()

        kill = threading.Thread(target=killer)
        kill.start()
        with ThreadPoolExecutor(8) as callers:
            served = list(callers.map(one, range(300)))
        kill.join()
        assert failures == []
        assert len(served) == 300
        stats = lb.stats()
        assert stats[victim.address].ejections >= 1
        assert victim.name not in served[150:]  # 8 callers: at most a few in flight at the kill
        assert {b.name for b in pool if b is not victim} <= set(served[150:])
        assert in_flight(lb) == 0


def test_a_hung_backend_times_out_and_the_retry_succeeds_elsewhere(
    make_client: MakeClient,
) -> None:
    with backends(2) as (hung, good):
        hung.mode = "hang"
        lb = balancer(
            [hung, good],
            outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=50),
        )
        per_try = 0.3
        client = make_client(lb, HttpPolicy(retry=RetryPolicy(attempts=2, per_try_timeout=per_try)))
        started = time.monotonic()
        answers = [client.get("http://inventory/items/1").backend for _ in range(4)]
        took = time.monotonic() - started
        assert answers == [good.name] * 4
        assert hung.count() == 1  # ejected after its first timeout
        assert lb.stats()[hung.address].ejections == 1
        # One per-try timeout, a backoff (at most 0.25 s), and four quick answers.
        assert took < per_try * 2 + 0.25 + 1.0


def test_a_post_is_never_sent_twice(make_client: MakeClient) -> None:
    with backends(2) as pool:
        for backend in pool:
            backend.mode = "hang"
        lb = balancer(pool)
        client = make_client(lb, HttpPolicy(retry=RetryPolicy(attempts=2, per_try_timeout=0.2)))
        with pytest.raises(client.timeout_error):
            client.post("http://inventory/items/1", b'{"n": 1}')
        assert sum(b.count("POST") for b in pool) == 1
        for backend in pool:
            backend.mode = "fail503"
        assert client.post("http://inventory/items/2", b"x").status == 503
        assert sum(b.count("POST") for b in pool) == 2


@pytest.mark.parametrize("stop_at", [None, 10])
def test_an_sse_stream_holds_exactly_one_lease_until_closed(
    make_client: MakeClient, stop_at: int | None
) -> None:
    with backends(2) as pool:
        lb = balancer(pool)
        client = make_client(lb)
        seen: list[tuple[int, int]] = []  # (leases in flight, servers with one) per event

        def on_event(n: int) -> bool:
            stats = lb.stats().values()
            seen.append((sum(s.in_flight for s in stats), [s.in_flight for s in stats].count(1)))
            return n != stop_at

        events = client.sse("http://inventory/sse?events=1000", on_event)
        assert events == (1000 if stop_at is None else stop_at)
        assert set(seen) == {(1, 1)}
        assert in_flight(lb) == 0
        assert sum(s.successes for s in lb.stats().values()) == 1
        for backend in pool:
            backend.wait_until(lambda b=backend: not b.in_flight())  # type: ignore[misc]


def test_fifty_cancelled_requests_eject_nothing(make_client: MakeClient) -> None:
    with backends(3) as pool:
        lb = balancer(
            pool,
            outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=100),
        )
        client = make_client(lb)
        for i in range(50):

            def arrived(i: int = i) -> None:
                pool[0].wait_until(lambda: sum(b.count() for b in pool) > i)

            client.cancelled_get("http://inventory/slow?seconds=30", arrived)
        stats = lb.stats()
        assert sum(s.cancelled for s in stats.values()) == 50
        assert not any(s.failures or s.ejections or s.in_flight for s in stats.values())


def test_all_503_stays_within_the_budget(make_client: MakeClient) -> None:
    with backends(3) as pool:
        for backend in pool:
            backend.mode = "fail503"
        lb = balancer(pool)
        client = make_client(lb, HttpPolicy(retry=RetryPolicy(attempts=3, backoff_base=0)))
        requests = 100
        for i in range(requests):
            assert client.get(f"http://inventory/items/{i}").status == 503
        attempts = sum(b.count() for b in pool)
        assert requests < attempts <= 1.2 * requests + 10
        assert in_flight(lb) == 0


def test_a_sticky_header_sends_a_user_to_one_backend_then_one_fallback(
    make_client: MakeClient,
) -> None:
    with backends(3) as pool:
        lb = balancer(
            pool,
            strategy=RingHashStrategy(),
            outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=50),
        )
        client = make_client(lb, HttpPolicy(sticky=StickyKey(header="x-user")))
        headers = {"x-user": "user-42"}
        homes = {client.get("http://inventory/items/1", headers).backend for _ in range(5)}
        assert len(homes) == 1
        home = next(b for b in pool if b.name in homes)
        home.kill()
        fallbacks = {client.get("http://inventory/items/1", headers).backend for _ in range(10)}
        assert len(fallbacks) == 1
        assert home.name not in fallbacks
        users = [client.get("http://inventory/items/1", {"x-user": f"u{i}"}) for i in range(30)]
        assert {reply.backend for reply in users} == {b.name for b in pool if b is not home}


def test_with_every_backend_gone_the_error_names_the_service_and_why(
    make_client: MakeClient,
) -> None:
    client = make_client(LoadBalancer())
    with pytest.raises(client.no_backend_error, match=r"'inventory'.*no servers") as raised:
        client.get("http://inventory/items/1")
    assert raised.value.__cause__ is not None  # chained to NoServersAvailableError


def test_a_4xx_is_a_success_and_a_5xx_a_failure(make_client: MakeClient) -> None:
    with backends(1) as pool:
        lb = balancer(pool)
        client = make_client(lb)
        assert client.get("http://inventory/status/404").status == 404
        assert client.get("http://inventory/status/500").status == 500
        stats = lb.stats()[pool[0].address]
        assert (stats.successes, stats.failures, stats.in_flight) == (1, 1, 0)


def test_the_path_and_query_stay_and_the_host_is_the_logical_name(
    make_client: MakeClient,
) -> None:
    with backends(2) as pool:
        client = make_client(balancer(pool))
        document = client.get("http://inventory/items/42?color=red&size=9").json()
        assert (document["path"], document["query"], document["host"]) == (
            "/items/42",
            "color=red&size=9",
            "inventory",
        )
        backend_host = make_client(balancer(pool), HttpPolicy(host_header="backend"))
        document = backend_host.get("http://inventory/items/42").json()
        assert document["host"] == document["address"]
