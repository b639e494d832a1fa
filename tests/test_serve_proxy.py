"""The proxy engine, end to end: real backends, real clients, a real ``ProxyServer`` on
127.0.0.1, all on the test's event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest

from loadbalancer import LoadBalancer, OutlierDetection, RetryBudget, RetryPolicy
from loadbalancer.serve._server import ProxyServer
from loadbalancer.serve._settings import (
    AccessRecord,
    Forwarding,
    Pool,
    ProxySettings,
    Route,
    Sticky,
    Timeouts,
)
from loadbalancer.strategies.registry import STRATEGIES

from .collector import left_for_the_collector
from .serve_backends import AsyncBackend, RawClient, free_port, run, started


def settings(lb: LoadBalancer, **kwargs: Any) -> ProxySettings:
    """One pool ``p`` with ``lb``, every request routed to it; ``kwargs`` go to the pool,
    except the ``ProxySettings`` fields."""
    own = {
        k: kwargs.pop(k) for k in ("timeouts", "limits", "forwarding", "on_access") if k in kwargs
    }
    return ProxySettings(pools={"p": Pool("p", lb, **kwargs)}, routes=(Route("p"),), **own)


@asynccontextmanager
async def proxying(proxy_settings: ProxySettings) -> AsyncIterator[ProxyServer]:
    """A started ``ProxyServer`` on a free port, closed after."""
    server = ProxyServer(proxy_settings)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


def balancer(backends: list[AsyncBackend], **kwargs: Any) -> LoadBalancer:
    """A balancer over ``backends``."""
    lb = LoadBalancer(**kwargs)
    lb.replace([b.address for b in backends])
    return lb


def url(server: ProxyServer, path: str) -> str:
    """The proxy's URL for ``path``."""
    return f"http://127.0.0.1:{server.port}{path}"


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll the loop until ``predicate()`` holds (state changed by callbacks, not sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def in_flight(lb: LoadBalancer) -> int:
    """Requests in flight on every server of ``lb``."""
    return sum(s.in_flight for s in lb.stats().values())


# -- core proxying --------------------------------------------------------------------------


def test_get_keeps_alive_on_both_sides() -> None:
    async def main() -> None:
        backends = await started(2)
        lb = balancer(backends)
        async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
            answers = [(await client.get(url(proxy, f"/echo/{i}?q=1"))) for i in range(20)]
            assert [a.status_code for a in answers] == [200] * 20
            assert {a.json()["backend"] for a in answers} == {"b0", "b1"}
            assert answers[3].json()["target"] == "/echo/3?q=1"
            # one client connection, one upstream connection per backend: both reused
            assert proxy.connections == 1
            assert proxy.upstream_connections == 2
            assert [b.connections for b in backends] == [1, 1]
            assert sum(s.successes for s in lb.stats().values()) == 20
            assert in_flight(lb) == 0

    run(main)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /chunks?n=40&size=16384 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["whole", "streamed", "with_body"],
)
def test_a_request_leaves_nothing_for_the_cyclic_collector(request_bytes: bytes) -> None:
    """Each request's objects go as it ends, freed by their reference counts: an exchange and
    its answer naming each other would wait for the cyclic collector, which costs a pass over
    every young object."""

    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(request_bytes)
            assert (await raw.response())[0] == 200
            with left_for_the_collector() as ours:
                for _ in range(30):
                    await raw.send(request_bytes)
                    assert (await raw.response())[0] == 200
            raw.close()
            assert ours == []

    run(main)


def test_a_client_leaving_mid_stream_leaves_nothing_for_the_cyclic_collector() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        async with proxying(settings(lb)) as proxy:
            with left_for_the_collector() as ours:
                for _ in range(5):
                    raw = await RawClient.connect(proxy.port)
                    await raw.send(b"GET /sse?n=3 HTTP/1.1\r\nHost: x\r\n\r\n")
                    await asyncio.wait_for(raw.reader.readuntil(b"data: 0\n\n"), 5)
                    raw.close()
                    await wait_for(lambda: in_flight(lb) == 0 and proxy.connections == 0)
            assert ours == []

    run(main)


@pytest.mark.parametrize("case", ["refused_then_retried", "503_then_retried", "all_refused_502"])
def test_a_retried_or_failed_request_leaves_nothing_for_the_cyclic_collector(case: str) -> None:
    """A failed attempt's error holds its traceback, and so the frames it passed through:
    none of them may hold the error back in turn (the first attempt, kept in the engine's
    frames), or each failure waits for the cyclic collector."""

    async def main() -> None:
        bad, good = await started(2)
        down = f"127.0.0.1:{free_port()}"
        lb = LoadBalancer()
        if case == "refused_then_retried":
            lb.replace([down, good.address])
        elif case == "503_then_retried":
            bad.mode = "fail503"
            lb.replace([bad.address, good.address])
        else:
            lb.replace([down])
        retry = RetryPolicy(attempts=2, backoff_base=0)
        expected = 502 if case == "all_refused_502" else 200
        async with proxying(settings(lb, retry=retry)) as proxy:
            raw = await RawClient.connect(proxy.port)
            request = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
            await raw.send(request)
            assert (await raw.response())[0] == expected
            failed = sum(s.failures for s in lb.stats().values())
            with left_for_the_collector() as ours:
                for _ in range(10):
                    await raw.send(request)
                    assert (await raw.response())[0] == expected
            raw.close()
        assert sum(s.failures for s in lb.stats().values()) > failed  # failures were made
        assert ours == []

    run(main)


def test_request_bodies_content_length_and_chunked_arrive_whole() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy, httpx.AsyncClient() as client:
            small = await client.post(url(proxy, "/echo"), content=b"hello")
            assert small.json()["body"] == "hello"

            async def parts() -> AsyncIterator[bytes]:
                for i in range(50):
                    yield bytes([65 + i % 26]) * 5000

            big = await client.post(url(proxy, "/echo"), content=parts())
            assert big.json()["body_length"] == 250_000
            assert backend.requests[-1].body == b"".join(
                bytes([65 + i % 26]) * 5000 for i in range(50)
            )
            assert backend.requests[-1].header("transfer-encoding") == "chunked"

    run(main)


def test_chunked_response_is_forwarded_as_chunks_intact() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /chunks?n=5&size=7 HTTP/1.1\r\nHost: x\r\n\r\n")
            status, fields, body = await raw.response()
            assert status == 200
            assert fields["transfer-encoding"] == "chunked"
            assert body == b"aaaaaaabbbbbbbcccccccdddddddeeeeeee"
            raw.close()

    run(main)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def main() -> None:
        backends = await started(3)
        async with proxying(settings(balancer(backends))) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(
                b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10))
                + b"POST /echo/p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            )
            targets = []
            for _ in range(11):
                status, _, body = await raw.response()
                assert status == 200
                targets.append(json.loads(body)["target"])
            assert targets == [f"/echo/{i}" for i in range(10)] + ["/echo/p"]
            raw.close()

    run(main)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_proxies(name: str) -> None:
    async def main() -> None:
        backends = await started(2)
        lb = LoadBalancer(STRATEGIES[name]())
        lb.replace([b.address for b in backends])
        async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
            for _ in range(4):
                answer = await client.get(url(proxy, "/echo/s"), headers={"user": "u1"})
                assert answer.status_code == 200
            assert sum(s.successes for s in lb.stats().values()) == 4

    run(main)


def test_head_and_204_have_no_body_and_the_connection_stays_usable() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"Content-Length: " in head  # the GET's length, kept for a HEAD
            await raw.send(b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await raw.response()
            assert (status, body) == (204, b"")
            await raw.send(b"GET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await raw.response()
            assert status == 200
            assert json.loads(body)["target"] == "/echo/after"
            # A HEAD's answer that announces a body (Content-Length > 0) closes its
            # connection: a server may send that body anyway, and it would be read as the
            # next answer. The 204's connection is kept.
            assert backend.connections == 2
            raw.close()

    run(main)


def test_routes_by_host_without_port_or_case_and_by_path_prefix() -> None:
    async def main() -> None:
        a, b, c = await started(3)
        proxy_settings = ProxySettings(
            pools={
                "api": Pool("api", balancer([a])),
                "www": Pool("www", balancer([b])),
                "rest": Pool("rest", balancer([c])),
            },
            routes=(
                Route("api", host="api.example", path_prefix="/echo/v1"),
                Route("www", host="www.example"),
                Route("rest", path_prefix="/echo"),
            ),
        )
        async with proxying(proxy_settings) as proxy, httpx.AsyncClient() as client:

            async def served(host: str, path: str) -> str | int:
                answer = await client.get(url(proxy, path), headers={"Host": host})
                if answer.status_code != 200:
                    return answer.status_code
                return str(answer.json()["backend"])

            assert await served("API.Example:8080", "/echo/v1/x") == "b0"
            assert await served("api.example", "/echo/v2") == "b2"  # falls through to "rest"
            assert await served("www.example", "/echo/v1") == "b1"
            assert await served("other", "/echo") == "b2"
            missing = await client.get(url(proxy, "/nowhere"), headers={"Host": "other"})
            assert missing.status_code == 404
            assert missing.headers["x-loadbalancer-error"] == "no_route"

    run(main)


def test_no_server_answers_503_named() -> None:
    async def main() -> None:
        lb = LoadBalancer()
        async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
            answer = await client.get(url(proxy, "/echo"))
            assert answer.status_code == 503
            assert answer.headers["x-loadbalancer-error"] == "no_upstream"

    run(main)


def test_refused_connection_is_a_failure_retried_elsewhere_even_for_post() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        down = f"127.0.0.1:{free_port()}"
        lb = LoadBalancer()
        lb.replace([down, backend.address])
        async with proxying(settings(lb, retry=RetryPolicy(attempts=2, backoff_base=0))) as proxy:
            async with httpx.AsyncClient() as client:
                for _ in range(4):
                    answer = await client.post(url(proxy, "/echo"), content=b"x")
                    assert answer.status_code == 200
            assert lb.stats()[down].failures >= 1
            assert lb.stats()[down].successes == 0

    run(main)


def test_every_server_refusing_is_502_named() -> None:
    async def main() -> None:
        lb = LoadBalancer()
        lb.replace([f"127.0.0.1:{free_port()}"])
        async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
            answer = await client.get(url(proxy, "/echo"))
            assert answer.status_code == 502
            assert answer.headers["x-loadbalancer-error"] == "upstream_refused"
            assert sum(s.failures for s in lb.stats().values()) == 1

    run(main)


def test_failure_statuses_are_failures_and_retried_for_idempotent_requests() -> None:
    async def main() -> None:
        bad, good = await started(2)
        bad.mode = "fail503"
        lb = balancer([bad, good])
        retry = RetryPolicy(attempts=2, backoff_base=0)
        async with proxying(settings(lb, retry=retry)) as proxy, httpx.AsyncClient() as client:
            for _ in range(4):
                answer = await client.get(url(proxy, "/echo"))
                assert answer.status_code == 200
            post = await client.post(url(proxy, "/status/503"), content=b"x")
            assert post.status_code == 503  # a POST that reached a server is not retried
            assert "x-loadbalancer-error" not in post.headers  # the backend's own answer
            four = await client.get(url(proxy, "/status/404"))
            assert four.status_code == 404  # the server working: a success
        stats = lb.stats()
        assert stats[bad.address].failures >= 2
        assert stats[bad.address].successes == 0
        assert stats[good.address].successes >= 5

    run(main)


# -- streaming and leases -------------------------------------------------------------------


def test_sse_events_arrive_before_the_backend_produces_the_next_and_the_lease_spans_it() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        async with proxying(settings(lb)) as proxy, aiohttp.ClientSession() as session:
            async with session.get(url(proxy, "/sse?n=3")) as response:
                assert response.headers["content-type"] == "text/event-stream"
                first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
                assert first == b"data: 0\n\n"
                assert backend.sse_sent == 1  # the next is not produced yet: not buffered
                assert in_flight(lb) == 1  # the lease is held while the stream is open
                backend.gate.set()
                second = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
                assert second == b"data: 1\n\n"
                assert backend.sse_sent == 2
                backend.gate.set()
                rest = await asyncio.wait_for(response.content.read(), 5)
                assert rest == b"data: 2\n\n"
            await wait_for(lambda: in_flight(lb) == 0)
            assert sum(s.successes for s in lb.stats().values()) == 1

    run(main)


def test_client_leaving_mid_stream_ends_the_lease_with_no_outcome() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        async with proxying(settings(lb)) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /sse?n=3 HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(raw.reader.readuntil(b"data: 0\n\n"), 5)
            assert in_flight(lb) == 1
            raw.close()
            await wait_for(lambda: in_flight(lb) == 0)
            stats = lb.stats()[backend.address]
            assert (stats.successes, stats.failures, stats.cancelled) == (0, 0, 1)
            # the upstream connection was closed, not put back half-read: the next request
            # opens another
            async with httpx.AsyncClient() as client:
                assert (await client.get(url(proxy, "/echo"))).status_code == 200
            assert backend.connections == 2

    run(main)


def test_access_records_name_the_upstream_attempts_and_outcome() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        records: list[AccessRecord] = []
        lb = balancer([backend])
        proxy_settings = settings(lb, on_access=records.append)
        async with proxying(proxy_settings) as proxy, httpx.AsyncClient() as client:
            await client.get(url(proxy, "/echo/1"), headers={"Host": "Svc"})
            await client.get(url(proxy, "/nowhere/1"))
        assert len(records) == 2
        ok = records[0]
        assert (ok.method, ok.target, ok.host, ok.status) == ("GET", "/echo/1", "svc", 200)
        assert (ok.pool, ok.upstream, ok.attempts, ok.outcome) == (
            "p",
            backend.address,
            1,
            "success",
        )
        assert ok.upstream_time is not None
        assert ok.total_time >= ok.upstream_time
        assert ok.bytes_sent > 0
        assert ok.client == "127.0.0.1"
        assert records[1].status == 200  # the nowhere path is still routed by prefix "/"

    run(main)


def test_reload_routes_new_requests_at_once() -> None:
    async def main() -> None:
        a, b = await started(2)
        async with proxying(settings(balancer([a]))) as proxy, httpx.AsyncClient() as client:
            assert (await client.get(url(proxy, "/echo"))).json()["backend"] == "b0"
            proxy.reload(settings(balancer([b])))
            assert (await client.get(url(proxy, "/echo"))).json()["backend"] == "b1"
            assert proxy.connections == 1  # the client's connection was kept

    run(main)


def test_sticky_header_pins_a_key_to_one_server() -> None:
    async def main() -> None:
        from loadbalancer import RendezvousStrategy

        backends = await started(3)
        lb = LoadBalancer(RendezvousStrategy())
        lb.replace([b.address for b in backends])
        proxy_settings = settings(lb, sticky=Sticky(header="X-User", cookie="sid"))
        async with proxying(proxy_settings) as proxy, httpx.AsyncClient() as client:
            for user in ("alice", "bob", "carol"):
                seen = {
                    (await client.get(url(proxy, "/echo"), headers={"X-User": user})).json()[
                        "backend"
                    ]
                    for _ in range(5)
                }
                assert len(seen) == 1
            by_cookie = {
                (await client.get(url(proxy, "/echo"), headers={"Cookie": "a=1; sid=zed"})).json()[
                    "backend"
                ]
                for _ in range(5)
            }
            assert len(by_cookie) == 1

    run(main)


def test_forwarding_headers_replace_an_untrusted_chain() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy, httpx.AsyncClient() as client:
            echo = await client.get(
                url(proxy, "/echo"),
                headers={"X-Forwarded-For": "6.6.6.6", "Host": "svc.example"},
            )
            headers = dict(echo.json()["headers"])
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-forwarded-host"] == "svc.example"
            assert headers["host"] == "svc.example"

    run(main)


def test_forwarding_trusts_the_configured_hops_and_adds_via() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        forwarding = Forwarding(trusted_hops=1, via=True)
        proxy_settings = settings(balancer([backend]), forwarding=forwarding)
        async with proxying(proxy_settings) as proxy, httpx.AsyncClient() as client:
            echo = await client.get(
                url(proxy, "/echo"), headers={"X-Forwarded-For": "6.6.6.6, 10.0.0.9"}
            )
            headers = dict(echo.json()["headers"])
            assert headers["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
            assert headers["via"] == "1.1 loadbalancer"

    run(main)


def test_rfc7239_forwarded_style() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        proxy_settings = settings(balancer([backend]), forwarding=Forwarding(style="forwarded"))
        async with proxying(proxy_settings) as proxy, httpx.AsyncClient() as client:
            echo = await client.get(url(proxy, "/echo"), headers={"Forwarded": "for=6.6.6.6"})
            headers = dict(echo.json()["headers"])
            assert headers["forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{proxy.port}"'
            assert "x-forwarded-for" not in headers

    run(main)


def test_hop_by_hop_fields_are_removed_both_ways() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(
                b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\n"
                b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                b"TE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n"
            )
            status, _, body = await raw.response()
            assert status == 200
            names = {k for k, _ in json.loads(body)["headers"]}
            for gone in ("x-secret", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
                assert gone not in names
            assert "x-kept" in names
            raw.close()

    run(main)


# -- failover under trouble -----------------------------------------------------------------


def test_killed_backend_during_concurrent_gets_gives_no_errors() -> None:
    async def main() -> None:
        backends = await started(3)
        # The budget's reserve covers the burst of retries at the kill: every request in
        # flight on the killed backend at once.
        lb = balancer(
            backends,
            outlier_detection=OutlierDetection(consecutive_failures=2),
            retry_budget=RetryBudget(ratio=0.2, reserve=50),
        )
        retry = RetryPolicy(attempts=3, backoff_base=0.001)
        async with proxying(settings(lb, retry=retry)) as proxy:
            statuses: list[int] = []
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:

                async def worker(n: int) -> None:
                    for i in range(15):
                        if n == 0 and i == 5:
                            await backends[0].kill()
                        answer = await client.get(url(proxy, f"/echo/{n}/{i}"))
                        statuses.append(answer.status_code)

                await asyncio.gather(*(worker(n) for n in range(20)))
            assert len(statuses) == 300
            assert [s for s in statuses if s != 200] == []

    run(main)


def test_hung_backend_trips_the_read_timeout_is_retried_and_counted_a_failure() -> None:
    async def main() -> None:
        hung, good = await started(2)
        hung.mode = "hang"
        lb = balancer([hung, good], outlier_detection=OutlierDetection(consecutive_failures=1))
        timeouts = Timeouts(upstream_read=0.2)
        retry = RetryPolicy(attempts=2, backoff_base=0)
        proxy_settings = settings(lb, timeouts=timeouts, retry=retry)
        async with proxying(proxy_settings) as proxy, httpx.AsyncClient() as client:
            answers = [await client.get(url(proxy, "/echo")) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        assert {a.json()["backend"] for a in answers} == {"b1"}
        stats = lb.stats()[hung.address]
        # (a second pick may come before the background rebuild publishes the ejection)
        assert stats.failures >= 1
        assert stats.successes == 0
        assert stats.ejections == 1  # outlier detection ejected the hung server

    run(main)


def test_hung_backend_alone_is_504_named() -> None:
    async def main() -> None:
        (hung,) = await started(1)
        hung.mode = "hang"
        lb = balancer([hung])
        timeouts = Timeouts(upstream_read=0.2)
        async with (
            proxying(settings(lb, timeouts=timeouts)) as proxy,
            httpx.AsyncClient() as client,
        ):
            answer = await client.get(url(proxy, "/echo"))
            assert answer.status_code == 504
            assert answer.headers["x-loadbalancer-error"] == "upstream_timeout"
            assert lb.stats()[hung.address].failures == 1

    run(main)


def test_a_large_streamed_post_is_not_retried_once_sent() -> None:
    async def main() -> None:
        (hung, good) = await started(2)
        hung.mode = "hang"
        lb = LoadBalancer()
        lb.replace([hung.address, good.address])
        timeouts = Timeouts(upstream_read=0.3)
        retry = RetryPolicy(attempts=2, backoff_base=0)
        proxy_settings = settings(lb, timeouts=timeouts, retry=retry, retry_non_idempotent=True)
        async with proxying(proxy_settings) as proxy, httpx.AsyncClient() as client:
            small = await client.put(url(proxy, "/echo"), content=b"x" * 1000)
            assert small.status_code == 200  # small: kept whole, replayed on b1
            assert small.json()["body_length"] == 1000
            big = await client.put(url(proxy, "/echo"), content=b"x" * 200_000)
            # too big to keep: either it went to b1 at once, or it hung on b0 and was not
            # sent twice
            assert big.status_code in (200, 504)
            assert (
                len([r for r in good.requests if r.body == b"x" * 200_000])
                + len([r for r in hung.requests if len(r.body) == 200_000])
                == 1
            )

    run(main)


def test_drain_lets_a_request_in_flight_finish_and_refuses_new_connections() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        server = ProxyServer(settings(lb))
        await server.start("127.0.0.1", 0)
        port = server.port
        raw = await RawClient.connect(port)
        await raw.send(b"GET /sse?n=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(raw.reader.readuntil(b"data: 0\n\n"), 5)
        draining = asyncio.ensure_future(server.drain(5.0))
        await asyncio.sleep(0)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        backend.gate.set()
        rest = await asyncio.wait_for(raw.reader.read(), 5)
        raw.close()
        assert rest.endswith(b"data: 1\n\n\r\n0\r\n\r\n")
        await asyncio.wait_for(draining, 5)
        assert in_flight(lb) == 0
        assert lb.stats()[backend.address].successes == 1

    run(main)


def test_start_on_a_given_socket() -> None:
    async def main() -> None:
        import socket

        (backend,) = await started(1)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = ProxyServer(settings(balancer([backend])))
        await server.start("ignored", 0, sock=sock)
        try:
            assert server.port == sock.getsockname()[1]
            async with httpx.AsyncClient() as client:
                assert (await client.get(url(server, "/echo"))).status_code == 200
        finally:
            await server.close()

    run(main)


def test_the_engine_runs_on_uvloop_too() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        backends = await started(2)
        lb = balancer(backends)
        async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
            for i in range(6):
                answer = await client.post(url(proxy, f"/echo/{i}"), content=b"abc")
                assert answer.json()["body"] == "abc"
            sse = await client.get(url(proxy, "/chunks?n=4&size=3"))
            assert sse.text == "aaabbbcccddd"
            assert proxy.upstream_connections == 2

    async def bounded() -> None:
        await asyncio.wait_for(main(), 20)
        from . import serve_backends

        for backend in list(serve_backends._LIVE):
            await backend.kill()
        serve_backends._LIVE.clear()

    uvloop.run(bounded())


def test_hedging_asks_another_server_when_the_first_is_slow() -> None:
    async def main() -> None:
        from loadbalancer import HedgingPolicy

        hung, good = await started(2)
        hung.mode = "hang"
        lb = LoadBalancer()
        lb.replace([hung.address, good.address])
        hedging = HedgingPolicy(delay=0.05)
        async with proxying(settings(lb, hedging=hedging)) as proxy, httpx.AsyncClient() as client:
            answers = [await client.get(url(proxy, "/echo")) for _ in range(4)]
            assert [a.json()["backend"] for a in answers] == ["b1"] * 4
            assert len(hung.requests) >= 1  # asked first, then hedged away from
            stats = lb.stats()[hung.address]
            assert stats.failures == 0  # a lost hedge is no outcome
            await wait_for(lambda: in_flight(lb) == 0)

    run(main)


async def raw_backend(answer: bytes, *, close: bool = True) -> tuple[asyncio.AbstractServer, str]:
    """A backend that reads one request head and writes ``answer`` (then closes)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            if not close:
                await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_an_unparsable_upstream_answer_is_502_upstream_invalid_and_a_failure() -> None:
    async def main() -> None:
        server, address = await raw_backend(b"HTTP/1.1 2x0 What\r\n\r\n")
        lb = LoadBalancer()
        lb.replace([address])
        try:
            async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
                answer = await client.get(url(proxy, "/"))
                assert answer.status_code == 502
                assert answer.headers["x-loadbalancer-error"] == "upstream_invalid"
                assert lb.stats()[address].failures == 1
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_an_upstream_cut_off_mid_body_is_a_failure_and_the_client_is_cut_off_too() -> None:
    async def main() -> None:
        server, address = await raw_backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
        )
        lb = LoadBalancer()
        lb.replace([address])
        records: list[AccessRecord] = []
        try:
            async with proxying(settings(lb, on_access=records.append)) as proxy:
                raw = await RawClient.connect(proxy.port)
                await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert b"Content-Length: 100" in head
                rest = await asyncio.wait_for(raw.reader.read(), 5)
                assert rest == b"only ten b"  # then the close: the client sees it short
                raw.close()
                await wait_for(lambda: in_flight(lb) == 0)
                stats = lb.stats()[address]
                assert (stats.successes, stats.failures) == (0, 1)
                await wait_for(lambda: len(records) == 1)
                assert records[0].outcome == "failure"
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_a_close_delimited_upstream_body_is_rechunked_for_the_client() -> None:
    async def main() -> None:
        server, address = await raw_backend(b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nto the end")
        lb = LoadBalancer()
        lb.replace([address])
        try:
            async with proxying(settings(lb)) as proxy:
                raw = await RawClient.connect(proxy.port)
                await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                status, fields, body = await raw.response()
                assert (status, body) == (200, b"to the end")
                assert fields["transfer-encoding"] == "chunked"
                assert lb.stats()[address].successes == 1
                raw.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_a_client_leaving_before_the_answer_ends_the_attempt_with_no_outcome() -> None:
    async def main() -> None:
        (hung,) = await started(1)
        hung.mode = "hang"
        lb = balancer([hung])
        records: list[AccessRecord] = []
        async with proxying(settings(lb, on_access=records.append)) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(hung.arrived.wait(), 5)
            assert in_flight(lb) == 1
            raw.close()
            await wait_for(lambda: in_flight(lb) == 0)
            stats = lb.stats()[hung.address]
            assert (stats.successes, stats.failures, stats.cancelled) == (0, 0, 1)
            assert [r.outcome for r in records] == ["none"]

    run(main)


def test_a_stale_kept_alive_connection_is_retried_on_a_new_one_not_counted_a_failure() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        backend.mode = "once"
        lb = balancer([backend])
        async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
            for i in range(3):
                answer = await client.get(url(proxy, f"/echo/{i}"))
                assert answer.status_code == 200
            assert backend.dropped == 2  # the second and third went out on stale connections
            stats = lb.stats()[backend.address]
            assert (stats.successes, stats.failures) == (3, 0)
            # a POST is never sent twice: a stale connection is its failure
            post = await client.post(url(proxy, "/echo"), content=b"x")
            assert post.status_code == 502
            assert post.headers["x-loadbalancer-error"] == "upstream_reset"

    run(main)


def test_large_bodies_stream_intact_both_ways_with_a_slow_reader() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        async with proxying(settings(lb)) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /chunks?n=300&size=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.sleep(0.2)  # a reader slow to start: the proxy must hold back, not fail
            body = b""
            while True:
                size = int((await asyncio.wait_for(raw.reader.readline(), 5)).strip(), 16)
                chunk = await asyncio.wait_for(raw.reader.readexactly(size + 2), 5)
                if size == 0:
                    break
                body += chunk[:-2]
            assert body == b"".join(bytes([97 + i % 26]) * 10000 for i in range(300))
            raw.close()
        async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
            upload = bytes(range(256)) * 20000  # 5 MB, with a Content-Length
            answer = await client.put(url(proxy, "/echo"), content=upload)
            assert answer.json()["body_length"] == len(upload)
            assert backend.requests[-1].body == upload

    run(main)


def test_the_per_try_timeout_cancels_an_attempt_and_retries_it_elsewhere() -> None:
    async def main() -> None:
        hung, good = await started(2)
        hung.mode = "hang"
        lb = balancer([hung, good])
        retry = RetryPolicy(attempts=2, backoff_base=0, per_try_timeout=0.2)
        async with proxying(settings(lb, retry=retry)) as proxy, httpx.AsyncClient() as client:
            answers = [await client.get(url(proxy, "/echo")) for _ in range(2)]
            assert [a.json()["backend"] for a in answers] == ["b1", "b1"]
            hung_stats = lb.stats()[hung.address]
            assert hung_stats.failures >= 1  # each cancelled attempt is the hung one's failure
            assert hung_stats.cancelled == 0
            lb.replace([hung.address])
            alone = await client.get(url(proxy, "/echo"))
            assert alone.status_code == 504
            assert alone.headers["x-loadbalancer-error"] == "upstream_timeout"

    run(main)


def test_a_404_of_the_proxy_keeps_the_connection_alive() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        proxy_settings = ProxySettings(
            pools={"p": Pool("p", balancer([backend]))}, routes=(Route("p", host="svc"),)
        )
        async with proxying(proxy_settings) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /echo HTTP/1.1\r\nHost: other\r\n\r\n")
            status, fields, _ = await raw.response()
            assert (status, fields["x-loadbalancer-error"]) == (404, "no_route")
            assert "connection" not in fields
            await raw.send(b"GET /echo HTTP/1.1\r\nHost: svc\r\n\r\n")
            status, _, _ = await raw.response()
            assert status == 200
            raw.close()
            assert proxy.connections <= 1

    run(main)


def test_a_retried_status_honours_retry_after_up_to_the_policy_cap() -> None:
    async def main() -> None:
        raw_answer = b"HTTP/1.1 503 Busy\r\nRetry-After: 3600\r\nContent-Length: 4\r\n\r\nbusy"
        server, address = await raw_backend(raw_answer, close=False)
        (good,) = await started(1)
        lb = LoadBalancer()
        lb.replace([address, good.address])
        retry = RetryPolicy(attempts=2, backoff_base=0, max_retry_after=1.0)
        try:
            async with proxying(settings(lb, retry=retry)) as proxy, httpx.AsyncClient() as client:
                answers = [await client.get(url(proxy, "/echo")) for _ in range(2)]
                # an hour's pushback is past the cap: no retry, the 503 itself is the answer
                assert sorted(a.status_code for a in answers) == [200, 503]
                busy = next(a for a in answers if a.status_code == 503)
                assert busy.text == "busy"
                assert "x-loadbalancer-error" not in busy.headers
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_a_retried_answer_whose_body_stalls_is_still_answered_whole() -> None:
    async def main() -> None:
        # Alone in its pool, a 503 is set aside for a retry that finds no other server, and
        # is then the answer: its body never ends, so it goes out empty, framed as such.
        server, address = await raw_backend(
            b"HTTP/1.1 503 Busy\r\nContent-Length: 10\r\n\r\nabcd", close=False
        )
        lb = LoadBalancer()
        lb.replace([address])
        try:
            async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
                answer = await client.get(url(proxy, "/"), timeout=5)
                assert answer.status_code == 503
                assert answer.content == b""
                assert lb.stats()[address].failures == 1
                assert in_flight(lb) == 0
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_drain_answers_every_pipelined_request_already_read_the_last_closing() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        server = ProxyServer(settings(lb))
        await server.start("127.0.0.1", 0)
        raw = await RawClient.connect(server.port)
        idle = await RawClient.connect(server.port)
        await raw.send(
            b"GET /sse?n=2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /echo/2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /echo/3 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await asyncio.wait_for(raw.reader.readuntil(b"data: 0\n\n"), 5)
        draining = asyncio.ensure_future(server.drain(5.0))
        assert await idle.closed()  # an idle keep-alive connection is closed at once
        backend.gate.set()
        await asyncio.wait_for(raw.reader.readuntil(b"0\r\n\r\n"), 5)  # the stream's end
        second = await raw.response()
        third = await raw.response()
        assert (second[0], third[0]) == (200, 200)
        assert "connection" not in second[1]
        assert third[1]["connection"] == "close"
        assert await raw.closed()
        raw.close()
        idle.close()
        await asyncio.wait_for(draining, 5)
        assert lb.stats()[backend.address].successes == 3

    run(main)


def test_idle_upstream_connections_are_capped_per_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadbalancer.serve import _upstream

    monkeypatch.setattr(_upstream, "MAX_IDLE_PER_SERVER", 2)

    async def main() -> None:
        (backend,) = await started(1)
        limits = httpx.Limits(max_connections=6)
        proxied = proxying(settings(balancer([backend])))
        async with proxied as proxy, httpx.AsyncClient(limits=limits) as client:

            async def burst() -> None:
                answers = await asyncio.gather(
                    *(client.get(url(proxy, f"/slow?ms=200&i={i}")) for i in range(6))
                )
                assert [a.status_code for a in answers] == [200] * 6

            await burst()
            assert backend.connections == 6  # six at once: six connections
            await burst()
            # two were kept idle and reused; the other four closed, so four are new
            assert backend.connections == 10

    run(main)


def test_an_endless_upstream_head_is_502_upstream_invalid() -> None:
    async def main() -> None:
        fields = b"".join(b"X-%d: v\r\n" % i for i in range(300))
        server, address = await raw_backend(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n")
        lb = LoadBalancer()
        lb.replace([address])
        try:
            async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
                answer = await client.get(url(proxy, "/"))
                assert answer.status_code == 502
                assert answer.headers["x-loadbalancer-error"] == "upstream_invalid"
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_a_mixed_load_leaves_nothing_in_flight_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        backends = await started(3)
        lb = balancer(backends, retry_budget=RetryBudget(ratio=0.5, reserve=100))
        proxy_settings = settings(lb, retry=RetryPolicy(attempts=3, backoff_base=0.001))
        async with proxying(proxy_settings) as proxy:
            statuses: list[int] = []
            connector = aiohttp.TCPConnector(limit=30)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one(i: int) -> None:
                    kind = i % 5
                    if kind == 0:
                        async with session.get(url(proxy, f"/echo/{i}")) as r:
                            await r.read()
                            statuses.append(r.status)
                    elif kind == 1:
                        async with session.post(url(proxy, "/echo"), data=b"x" * (i * 97)) as r:
                            assert (await r.json())["body_length"] == i * 97
                            statuses.append(r.status)
                    elif kind == 2:
                        async with session.get(url(proxy, "/chunks?n=20&size=500")) as r:
                            assert len(await r.read()) == 10_000
                            statuses.append(r.status)
                    elif kind == 3:
                        async with session.get(url(proxy, "/status/404")) as r:
                            statuses.append(r.status)
                    else:  # a client that leaves mid-stream
                        raw = await RawClient.connect(proxy.port)
                        await raw.send(b"GET /sse?n=2 HTTP/1.1\r\nHost: x\r\n\r\n")
                        await asyncio.wait_for(raw.reader.readuntil(b"data: 0\n\n"), 5)
                        raw.close()

                await asyncio.gather(*(one(i) for i in range(400)))
            assert statuses.count(200) + statuses.count(404) == len(statuses) == 320
            await wait_for(lambda: in_flight(lb) == 0)
            stats = lb.stats().values()
            assert sum(s.failures for s in stats) == 0
            assert sum(s.cancelled for s in stats) == 80  # the streams left mid-way

    run(main)
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == []


def test_drain_answers_a_request_sent_on_an_idle_connection_just_as_it_begins() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        server = ProxyServer(settings(lb))
        await server.start("127.0.0.1", 0)
        raw = await RawClient.connect(server.port)
        await raw.send(b"GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await raw.response())[0] == 200  # no Connection: close: the client may go on
        draining = asyncio.ensure_future(server.drain(5.0))
        await asyncio.sleep(0)  # the drain has begun
        await raw.send(b"GET /echo/2 HTTP/1.1\r\nHost: x\r\n\r\n")  # the close race
        status, fields, _ = await raw.response()
        assert (status, fields["connection"]) == (200, "close")
        assert await raw.closed()
        raw.close()
        await asyncio.wait_for(draining, 5)

    run(main)


def test_http10_clients_keep_alive_only_when_they_ask() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /echo/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, fields, _ = await raw.response()
            assert (status, fields["connection"]) == (200, "keep-alive")
            assert backend.requests[0].header("host") == "p"  # HTTP/1.1 upstream: the pool's
            await raw.send(b"GET /chunks?n=2&size=3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, fields, body = await raw.response()  # no length: read to the close
            assert (status, body) == (200, b"aaabbb")
            assert "transfer-encoding" not in fields  # HTTP/1.0 has no chunks
            raw.close()
            plain = await RawClient.connect(proxy.port)
            await plain.send(b"GET /echo/2 HTTP/1.0\r\n\r\n")
            status, fields, _ = await plain.response()
            assert (status, fields["connection"]) == (200, "close")
            assert await plain.closed()
            plain.close()

    run(main)


def test_pipelined_bodies_stay_with_their_requests() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxying(settings(balancer([backend]))) as proxy:
            raw = await RawClient.connect(proxy.port)
            await raw.send(
                b"POST /echo/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
                b"POST /echo/2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n"
                b"GET /echo/3 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /echo/4 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nlast"
            )
            bodies = []
            for _ in range(4):
                status, _, body = await raw.response()
                assert status == 200
                answer = json.loads(body)
                bodies.append((answer["target"], answer["body"]))
            assert bodies == [
                ("/echo/1", "first"),
                ("/echo/2", "second"),
                ("/echo/3", ""),
                ("/echo/4", "last"),
            ]
            raw.close()

    run(main)


def test_an_upstream_answer_framed_two_ways_is_502_never_forwarded() -> None:
    async def main() -> None:
        server, address = await raw_backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsmuggl"
        )
        lb = LoadBalancer()
        lb.replace([address])
        try:
            async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
                answer = await client.get(url(proxy, "/"))
                assert answer.status_code == 502
                assert answer.headers["x-loadbalancer-error"] == "upstream_invalid"
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_an_upstream_trailer_is_dropped_and_never_leaks_into_the_next_answer() -> None:
    async def main() -> None:
        answers = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\nX-Trailer: leaked\r\n\r\n"
        )
        count = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    count += 1
                    writer.write(
                        answers if count == 1 else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    )
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        lb = LoadBalancer()
        lb.replace([f"127.0.0.1:{server.sockets[0].getsockname()[1]}"])
        try:
            async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
                first = await client.get(url(proxy, "/"))
                second = await client.get(url(proxy, "/"))
                assert (first.text, second.text) == ("hi", "ok")
                assert "x-trailer" not in first.headers
                assert "x-trailer" not in second.headers
                assert proxy.upstream_connections == 1  # the same connection, reused
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_a_failing_on_access_is_logged_and_the_proxying_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(record: AccessRecord) -> None:
        raise RuntimeError("the log is full")

    async def main() -> None:
        (backend,) = await started(1)
        lb = balancer([backend])
        async with proxying(settings(lb, on_access=broken)) as proxy, httpx.AsyncClient() as client:
            for _ in range(3):
                assert (await client.get(url(proxy, "/echo"))).status_code == 200
            assert lb.stats()[backend.address].successes == 3

    run(main)
    failed = [r for r in caplog.records if r.getMessage().startswith("on_access failed")]
    assert len(failed) == 3


def test_https_upstreams_are_verified_and_an_untrusted_one_is_502_upstream_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loadbalancer.serve import _upstream

    from .health_servers import client_tls
    from .http_backends import backends

    with backends(1, tls=True) as (tls_backend,):
        server = f"https://127.0.0.1:{tls_backend.port}"

        async def main() -> tuple[int, str, int, str]:
            lb = LoadBalancer()
            lb.replace([server])
            async with proxying(settings(lb)) as proxy, httpx.AsyncClient() as client:
                untrusted = await client.get(url(proxy, "/items/1"))  # the system's CAs only
                monkeypatch.setattr(_upstream, "TLS_CONTEXT", client_tls())
                trusted = await client.get(url(proxy, "/items/1"))
                return (
                    untrusted.status_code,
                    untrusted.headers.get("x-loadbalancer-error", ""),
                    trusted.status_code,
                    trusted.json()["backend"],
                )

        assert run(main) == (502, "upstream_tls", 200, tls_backend.name)


def test_connections_that_close_leave_nothing_for_the_cyclic_collector() -> None:
    """A client that does not keep alive, and an upstream that closes after its answer: each
    connection goes with its reference count as it closes (its parser let go of it)."""

    async def main() -> None:
        upstream, address = await raw_backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        lb = LoadBalancer()
        lb.register(address)
        async with proxying(settings(lb)) as proxy:

            async def once() -> None:
                raw = await RawClient.connect(proxy.port)
                await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert (await raw.response())[0] == 200
                assert await raw.reader.read() == b""  # the proxy closed, as it said
                raw.close()
                await wait_for(lambda: proxy.connections == 0)

            await once()
            with left_for_the_collector() as ours:
                for _ in range(10):
                    await once()
            assert ours == []
        upstream.close()

    run(main)
