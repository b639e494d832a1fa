"""The httpx transports: over httpx.MockTransport (exact), then against real uvicorn backends."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer import (
    HedgingPolicy,
    LoadBalancer,
    NoServersAvailableError,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    RingHashStrategy,
)
from loadbalancer.integrations._http import ErrorKind
from loadbalancer.integrations.httpx import (
    IDEMPOTENT,
    AsyncBalancedTransport,
    BalancedTransport,
    HttpPolicy,
    HttpRetry,
    NoBackendAvailable,
    PerTryTimeout,
    StickyKey,
    error_kind,
    readdressed,
)
from loadbalancer.testing import FakeClock, run

from .http_backends import backends, client_tls

A, B, C = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"

Handler = Callable[[httpx.Request], httpx.Response]


def balancer(*servers: str, **kwargs: object) -> LoadBalancer:
    kwargs.setdefault("sleep", lambda seconds: None)
    lb = LoadBalancer(**kwargs)  # type: ignore[arg-type]
    lb.replace(list(servers or (A, B, C)))
    return lb


def outcomes(lb: LoadBalancer) -> dict[str, tuple[int, int, int, int]]:
    """Per server: successes, failures, cancelled (no outcome), in flight."""
    return {
        name: (s.successes, s.failures, s.cancelled, s.in_flight) for name, s in lb.stats().items()
    }


class Unread(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body still to be read, as a real transport returns it (``content=`` is read at once)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self.body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


def unread(text: str) -> httpx.Response:
    return httpx.Response(200, stream=Unread(text.encode()))


class Backends:
    """A MockTransport handler: each server answers as told (by default 200 with its name,
    the body unread), and every request is logged."""

    def __init__(self, **answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = answers
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        server = f"{request.url.host}:{request.url.port}"
        answer = self.answers.get(server)
        return unread(server) if answer is None else answer(request)

    @property
    def servers(self) -> list[str]:
        return [f"{r.url.host}:{r.url.port}" for r in self.seen]


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset by peer", request=request)


def status(code: int, **headers: str) -> Handler:
    return lambda request: httpx.Response(code, headers=headers, text=f"{code}")


def client(lb: LoadBalancer, backends: Backends, **kwargs: object) -> httpx.Client:
    transport = BalancedTransport(lb, transport=httpx.MockTransport(backends), **kwargs)  # type: ignore[arg-type]
    return httpx.Client(transport=transport)


# -- where requests go ---------------------------------------------------------------------------


def test_the_picked_server_replaces_scheme_host_and_port_and_keeps_path_and_query() -> None:
    lb = balancer("https://10.0.0.9:8443")
    backends = Backends()
    with client(lb, backends) as http:
        assert http.get("http://inventory/items/42?color=red&x=1").status_code == 200
    (sent,) = backends.seen
    assert str(sent.url) == "https://10.0.0.9:8443/items/42?color=red&x=1"
    assert sent.headers["host"] == "inventory"  # the logical name, by default


def test_a_server_without_scheme_or_port_keeps_the_requests() -> None:
    lb = balancer("replica")
    backends = Backends(**{"replica:None": status(204)})
    with client(lb, backends) as http:
        assert http.get("http://inventory:9000/x").status_code == 200
        assert http.get("https://inventory/y").status_code == 204
    assert [str(r.url) for r in backends.seen] == ["http://replica:9000/x", "https://replica/y"]


def test_host_header_backend_names_the_server() -> None:
    lb = balancer("[::1]:8080")
    backends = Backends()
    with client(lb, backends, policy=HttpPolicy(host_header="backend")) as http:
        http.get("http://inventory/")
    assert backends.seen[0].headers["host"] == "[::1]:8080"
    assert str(backends.seen[0].url) == "http://[::1]:8080/"


@pytest.mark.parametrize(
    ("server", "url", "sni"),
    [
        ("https://10.0.0.1:443", "http://inventory.svc/", "inventory.svc"),
        ("10.0.0.1:8443", "https://inventory.svc/", "inventory.svc"),
        ("[::1]:8443", "https://inventory.svc/", "inventory.svc"),
        ("replica.internal:8443", "https://inventory.svc/", None),  # verified as itself
        ("10.0.0.1:8080", "http://inventory.svc/", None),  # no TLS
    ],
)
def test_sni_names_the_logical_host_when_the_backend_is_an_ip(
    server: str, url: str, sni: str | None
) -> None:
    backends = Backends()
    with client(balancer(server), backends) as http:
        http.get(url)
    assert backends.seen[0].extensions.get("sni_hostname") == sni


def test_a_mapping_routes_each_host_to_its_balancer() -> None:
    inventory, billing = balancer(A), balancer(B)
    backends = Backends()
    transport = BalancedTransport(
        {"inventory": inventory, "billing": billing}, transport=httpx.MockTransport(backends)
    )
    with httpx.Client(transport=transport) as http:
        assert http.get("http://inventory/").text == A
        assert http.get("http://billing/").text == B
        with pytest.raises(NoBackendAvailable, match="no balancer for host 'orders'") as info:
            http.get("http://orders/")
    assert info.value.host == "orders"
    assert isinstance(info.value.__cause__, LookupError)


def test_mounts_send_one_service_through_the_balancer() -> None:
    backends = Backends()
    transport = BalancedTransport(balancer(C), transport=httpx.MockTransport(backends))
    other = httpx.MockTransport(lambda request: httpx.Response(200, text="direct"))
    with httpx.Client(transport=other, mounts={"http://inventory": transport}) as http:
        assert http.get("http://inventory/a").text == C
        assert http.get("http://example.com/").text == "direct"


def test_sticky_header_pins_a_user_to_one_backend_and_one_fallback() -> None:
    lb = balancer(A, B, C, strategy=RingHashStrategy())
    backends = Backends()
    policy = HttpPolicy(sticky=StickyKey(header="x-user"))
    with client(lb, backends, policy=policy) as http:
        homes = {http.get("http://inventory/", headers={"x-user": "42"}).text for _ in range(10)}
        assert len(homes) == 1
        (home,) = homes
        backends.answers[home] = refuse
        fallbacks = {
            http.get("http://inventory/", headers={"x-user": "42"}).text for _ in range(10)
        }
        assert len(fallbacks) == 1
        assert home not in fallbacks


def test_sticky_cookie_and_function() -> None:
    lb = balancer(A, B, C, strategy=RingHashStrategy())
    for sticky, kwargs in [
        (StickyKey(cookie="session"), {"headers": {"cookie": "a=1; session=s-1"}}),
        (StickyKey(function=lambda r: r.url.params.get("user")), {"params": {"user": "u-1"}}),
    ]:
        backends = Backends()
        with client(lb, backends, policy=HttpPolicy(sticky=sticky)) as http:
            picks = {http.get("http://inventory/", **kwargs).text for _ in range(8)}  # type: ignore[arg-type]
        assert len(picks) == 1


# -- retries --------------------------------------------------------------------------------------


def test_a_refused_get_is_retried_on_another_server() -> None:
    lb = balancer(A, B)
    backends = Backends(**{A: refuse})
    with client(lb, backends) as http:
        assert http.get("http://inventory/").text == B
    assert backends.servers == [A, B]
    assert outcomes(lb) == {A: (0, 1, 0, 0), B: (1, 0, 0, 0)}


def test_a_refused_post_is_retried_nothing_of_it_was_sent() -> None:
    lb = balancer(A, B)
    backends = Backends(**{A: refuse})
    with client(lb, backends) as http:
        assert http.post("http://inventory/orders", content=b"x").text == B


def test_a_post_is_never_retried_once_it_may_have_been_sent() -> None:
    lb = balancer(A, B)
    backends = Backends(**{A: reset, B: reset})
    with client(lb, backends) as http, pytest.raises(httpx.ReadError):
        http.post("http://inventory/orders", json={"n": 1})
    assert len(backends.seen) == 1
    assert outcomes(lb)[backends.servers[0]] == (0, 1, 0, 0)


def test_a_post_marked_idempotent_is_retried() -> None:
    lb = balancer(A, B)
    backends = Backends(**{A: reset})
    with client(lb, backends) as http:
        answer = http.post("http://inventory/", content=b"x", extensions={IDEMPOTENT: True})
    assert answer.text == B
    assert backends.servers == [A, B]


def test_503_is_retried_for_get_and_not_for_post() -> None:
    lb = balancer(A, B)
    backends = Backends(**{A: status(503)})
    with client(lb, backends) as http:
        assert http.get("http://inventory/").text == B
        assert backends.servers == [A, B]
        answer = http.post("http://inventory/", content=b"x")
        assert (answer.status_code, answer.text) == (503, "503")
    assert backends.servers == [A, B, A]
    assert outcomes(lb) == {A: (0, 2, 0, 0), B: (1, 0, 0, 0)}


def test_4xx_is_a_success_and_5xx_a_failure_not_retried_unless_502_503_504() -> None:
    lb = balancer(A, B)
    backends = Backends(**{A: status(404), B: status(500)})
    with client(lb, backends) as http:
        assert http.get("http://inventory/").status_code == 404
        assert http.get("http://inventory/").status_code == 500
    assert backends.servers == [A, B]
    assert outcomes(lb) == {A: (1, 0, 0, 0), B: (0, 1, 0, 0)}


def test_retry_after_is_honoured_through_the_injected_sleep() -> None:
    slept: list[float] = []
    lb = balancer(A, B, sleep=slept.append)
    backends = Backends(**{A: status(503, **{"Retry-After": "2"})})
    with client(lb, backends) as http:
        assert http.get("http://inventory/").text == B
    assert slept == [2.0]


def test_retry_after_past_the_cap_answers_with_the_503() -> None:
    slept: list[float] = []
    lb = balancer(A, B, sleep=slept.append)
    backends = Backends(**{A: status(503, **{"Retry-After": "3600"})})
    with client(lb, backends) as http:
        answer = http.get("http://inventory/")
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "3600")
    assert slept == []
    assert backends.servers == [A]


def test_a_one_shot_streamed_body_is_never_retried() -> None:
    lb = balancer(A, B)
    backends = Backends(**{A: refuse})

    def body() -> Iterator[bytes]:
        yield b"chunk"

    with client(lb, backends) as http, pytest.raises(httpx.ConnectError):
        http.put("http://inventory/blob", content=body())
    assert backends.servers == [A]


def test_the_last_answer_is_returned_when_attempts_run_out() -> None:
    lb = balancer(A, B, C)
    backends = Backends(**{s: status(503) for s in (A, B, C)})
    policy = HttpPolicy(retry=RetryPolicy(attempts=3))
    with client(lb, backends, policy=policy) as http:
        answer = http.get("http://inventory/")
    assert (answer.status_code, answer.text) == (503, "503")
    assert sorted(backends.servers) == [A, B, C]
    assert all(s[3] == 0 for s in outcomes(lb).values())


def test_a_retry_with_no_server_left_returns_the_buffered_answer() -> None:
    def sleep(seconds: float) -> None:
        lb.unregister(A)  # every server went away during the backoff

    lb = balancer(A, sleep=sleep)
    backends = Backends(**{A: status(503)})

    with client(lb, backends) as http:
        answer = http.get("http://inventory/")
    assert (answer.status_code, answer.text) == (503, "503")
    assert lb.retry_budget.stats().retries == 0  # the token was refunded


def test_all_503_stays_within_the_budget() -> None:
    lb = balancer(A, B, C, retry_budget=RetryBudget(ratio=0.2, reserve=10))
    backends = Backends(**{s: status(503) for s in (A, B, C)})
    policy = HttpPolicy(retry=RetryPolicy(attempts=3))
    with client(lb, backends, policy=policy) as http:
        for _ in range(200):
            assert http.get("http://inventory/").status_code == 503
    assert len(backends.seen) <= 1.2 * 200 + 10


def test_per_try_timeout_caps_each_httpx_timeout() -> None:
    backends = Backends()
    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.5))
    with client(balancer(A), backends, policy=policy) as http:
        http.get("http://inventory/", timeout=httpx.Timeout(2.0, read=0.1))
    assert backends.seen[0].extensions["timeout"] == {
        "connect": 0.5,
        "read": 0.1,
        "write": 0.5,
        "pool": 0.5,
    }


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError("x"), ErrorKind.NOT_SENT),
        (httpx.ConnectTimeout("x"), ErrorKind.NOT_SENT),
        (httpx.ReadTimeout("x"), ErrorKind.TIMEOUT),
        (httpx.WriteTimeout("x"), ErrorKind.TIMEOUT),
        (httpx.ReadError("x"), ErrorKind.BROKEN),
        (httpx.WriteError("x"), ErrorKind.BROKEN),
        (httpx.RemoteProtocolError("x"), ErrorKind.BROKEN),
        (httpx.PoolTimeout("x"), ErrorKind.LOCAL),
        (httpx.LocalProtocolError("x"), ErrorKind.LOCAL),
        (httpx.UnsupportedProtocol("x"), ErrorKind.LOCAL),
        (ValueError("x"), ErrorKind.LOCAL),
    ],
)
def test_error_kinds(error: Exception, kind: ErrorKind) -> None:
    assert error_kind(error) is kind


def test_a_local_error_records_no_outcome_and_is_not_retried() -> None:
    lb = balancer(A, B)

    def local(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("bad header")

    backends = Backends(**{A: local})
    with client(lb, backends) as http, pytest.raises(httpx.LocalProtocolError):
        http.get("http://inventory/")
    assert outcomes(lb)[A] == (0, 0, 1, 0)


# -- leases and streams ---------------------------------------------------------------------------


def events(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield f"data: {i}\n\n".encode()


def test_a_stream_holds_its_lease_until_closed() -> None:
    clock = FakeClock()
    lb = balancer(A, clock=clock)
    backends = Backends(**{A: lambda request: httpx.Response(200, content=events(1000))})
    with client(lb, backends) as http:
        transport = http._transport
        assert isinstance(transport, BalancedTransport)
        with http.stream("GET", "http://inventory/events") as response:
            assert outcomes(lb)[A] == (0, 0, 0, 1)
            assert transport.open_streams == 1
            count = 0
            for _ in response.iter_lines():
                count += 1
                assert lb.stats()[A].in_flight == 1
                clock.advance(0.01)
        assert count == 2000  # each event is a line and a blank line
        assert outcomes(lb)[A] == (1, 0, 0, 0)
        assert transport.open_streams == 0
    assert lb.stats()[A].latency_ewma == pytest.approx(20.0)  # to the end of the body


def test_breaking_out_of_a_stream_early_ends_the_lease_at_close() -> None:
    lb = balancer(A)
    backends = Backends(**{A: lambda request: httpx.Response(200, content=events(1000))})
    with client(lb, backends) as http:
        with http.stream("GET", "http://inventory/events") as response:
            for line in response.iter_lines():
                if line == "data: 10":
                    break
            assert lb.stats()[A].in_flight == 1
        assert outcomes(lb)[A] == (1, 0, 0, 0)


def test_a_body_that_breaks_off_is_a_failure() -> None:
    lb = balancer(A)

    def broken(request: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            yield b"partial"
            raise httpx.ReadError("connection reset", request=request)

        return httpx.Response(200, content=body())

    with client(lb, Backends(**{A: broken})) as http, pytest.raises(httpx.ReadError):
        http.get("http://inventory/")
    assert outcomes(lb)[A] == (0, 1, 0, 0)


def test_an_unclosed_response_ends_its_lease_when_collected() -> None:
    lb = balancer(A)
    transport = BalancedTransport(lb, transport=httpx.MockTransport(Backends()))
    response = transport.handle_request(httpx.Request("GET", "http://inventory/"))
    assert outcomes(lb)[A] == (0, 0, 0, 1)
    del response
    gc.collect()
    assert outcomes(lb)[A] == (0, 0, 1, 0)
    assert transport.open_streams == 0


class Recording(httpx.MockTransport):
    closed = 0

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


def test_close_propagates_and_ends_open_leases() -> None:
    lb = balancer(A)
    inner = Recording(Backends())
    transport = BalancedTransport(lb, transport=inner)
    response = transport.handle_request(httpx.Request("GET", "http://inventory/"))
    transport.close()
    assert inner.closed == 1
    assert outcomes(lb)[A] == (0, 0, 1, 0)
    response.close()  # closing afterwards changes nothing
    assert outcomes(lb)[A] == (0, 0, 1, 0)


def test_the_default_inner_transport_is_httpx() -> None:
    transport = BalancedTransport(balancer(A))
    transport.close()
    atransport = AsyncBalancedTransport(balancer(A))
    asyncio.run(atransport.aclose())


# -- errors ----------------------------------------------------------------------------------------


def test_an_empty_pool_is_a_transport_error_naming_the_host() -> None:
    lb = LoadBalancer()
    with client(lb, Backends()) as http, pytest.raises(httpx.TransportError) as info:
        http.get("http://inventory/")
    error = info.value
    assert isinstance(error, NoBackendAvailable)
    assert error.host == "inventory"
    assert "no backend available for 'inventory'" in str(error)
    assert "the pool is empty" in str(error)
    assert isinstance(error.__cause__, NoServersAvailableError)


def test_all_ejected_says_so() -> None:
    lb = balancer(A, B, panic_threshold=0)
    lb.set_healthy(A, False)
    lb.set_healthy(B, False)
    with (
        client(lb, Backends()) as http,
        pytest.raises(NoBackendAvailable, match="all 2 are ejected or unhealthy"),
    ):
        http.get("http://inventory/")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transport": object()}, r"transport must be an httpx\.BaseTransport"),
        ({"policy": RetryPolicy()}, "policy must be an HttpPolicy"),
    ],
)
def test_transport_arguments_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        BalancedTransport(balancer(A), **kwargs)  # type: ignore[arg-type]


def test_async_transport_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match=r"transport must be an httpx\.AsyncBaseTransport"):
        AsyncBalancedTransport(balancer(A), transport=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy must be an HttpPolicy"):
        AsyncBalancedTransport(balancer(A), policy=HttpRetry())  # type: ignore[arg-type]


# -- async -----------------------------------------------------------------------------------------


class AsyncBackends:
    """An async MockTransport handler: each server waits ``delay`` then answers as told."""

    def __init__(
        self,
        delays: dict[str, float] | None = None,
        /,
        **answers: Callable[[httpx.Request], httpx.Response],
    ) -> None:
        self.delays = delays or {}
        self.answers = answers
        self.started: list[str] = []
        self.finished: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        server = f"{request.url.host}:{request.url.port}"
        self.started.append(server)
        await asyncio.sleep(self.delays.get(server, 0.0))
        self.finished.append(server)
        answer = self.answers.get(server)
        return unread(server) if answer is None else answer(request)


def aclient(lb: LoadBalancer, backends: AsyncBackends, **kwargs: object) -> httpx.AsyncClient:
    transport = AsyncBalancedTransport(lb, transport=httpx.MockTransport(backends), **kwargs)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport)


def test_async_retries_go_elsewhere() -> None:
    lb = balancer(A, B)
    backends = AsyncBackends(**{A: refuse})

    async def main() -> str:
        async with aclient(lb, backends) as http:
            return (await http.get("http://inventory/")).text

    assert run(main()) == B
    assert outcomes(lb) == {A: (0, 1, 0, 0), B: (1, 0, 0, 0)}


def test_async_503_is_retried_for_get_not_post() -> None:
    lb = balancer(A, B)
    backends = AsyncBackends(**{A: status(503)})

    async def main() -> tuple[str, int]:
        async with aclient(lb, backends) as http:
            got = await http.get("http://inventory/")
            posted = await http.post("http://inventory/", content=b"x")
            return got.text, posted.status_code

    assert run(main()) == (B, 503)
    assert backends.started == [A, B, A]


def test_async_hedging_answers_from_the_fast_server_in_virtual_time() -> None:
    lb = balancer(A, B)
    backends = AsyncBackends({A: 1.0, B: 0.01})
    policy = HttpPolicy(hedging=HedgingPolicy(delay=0.05))

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        async with aclient(lb, backends, policy=policy) as http:
            start = loop.time()
            text = (await http.get("http://inventory/")).text
            return text, loop.time() - start

    text, took = run(main())
    assert text == B
    assert took == pytest.approx(0.06)
    assert backends.started == [A, B]
    assert backends.finished == [B]
    assert outcomes(lb) == {A: (0, 0, 1, 0), B: (1, 0, 0, 0)}
    assert lb.retry_budget.stats().hedges == 1


def test_async_hedging_is_off_for_a_post() -> None:
    lb = balancer(A, B)
    backends = AsyncBackends({A: 1.0, B: 0.01})
    policy = HttpPolicy(hedging=HedgingPolicy(delay=0.05))

    async def main() -> str:
        async with aclient(lb, backends, policy=policy) as http:
            return (await http.post("http://inventory/", content=b"x")).text

    assert run(main()) == A
    assert backends.started == [A]


def test_async_per_try_timeout_retries_elsewhere() -> None:
    lb = balancer(A, B)
    backends = AsyncBackends({A: 100.0})
    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.5, backoff_base=0))

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        async with aclient(lb, backends, policy=policy) as http:
            start = loop.time()
            text = (await http.get("http://inventory/")).text
            return text, loop.time() - start

    text, took = run(main())
    assert text == B
    assert took == pytest.approx(0.5)
    assert outcomes(lb) == {A: (0, 1, 0, 0), B: (1, 0, 0, 0)}


def test_async_cancellation_records_no_outcome() -> None:
    lb = balancer(A, B, outlier_detection=OutlierDetection(consecutive_failures=1))
    backends = AsyncBackends({A: 10.0, B: 10.0})

    async def main() -> None:
        async with aclient(lb, backends) as http:
            for _ in range(50):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(http.get("http://inventory/"), 0.1)

    run(main())
    stats = lb.stats()
    assert sum(s.cancelled for s in stats.values()) == 50
    assert not any(s.failures or s.ejected_until or s.in_flight for s in stats.values())


def test_async_stream_holds_its_lease_until_closed() -> None:
    lb = balancer(A)

    def stream(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(1000):
                yield f"data: {i}\n\n".encode()

        return httpx.Response(200, content=body())

    backends = AsyncBackends(**{A: stream})

    async def main() -> int:
        count = 0
        async with aclient(lb, backends) as http:
            async with http.stream("GET", "http://inventory/events") as response:
                async for line in response.aiter_lines():
                    assert lb.stats()[A].in_flight == 1
                    if line == "data: 500":
                        break
                    count += 1
            assert outcomes(lb)[A] == (1, 0, 0, 0)
        return count

    assert run(main()) == 1000


def test_async_cancelled_body_read_records_no_outcome() -> None:
    lb = balancer(A)

    def stream(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            await asyncio.sleep(10)
            yield b"never"

        return httpx.Response(200, content=body())

    async def main() -> None:
        async with aclient(lb, AsyncBackends(**{A: stream})) as http:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(http.get("http://inventory/"), 1.0)

    run(main())
    assert outcomes(lb)[A] == (0, 0, 1, 0)


def test_aclose_propagates_and_ends_open_leases() -> None:
    lb = balancer(A)
    inner = Recording(AsyncBackends())
    transport = AsyncBalancedTransport(lb, transport=inner)

    async def main() -> None:
        response = await transport.handle_async_request(httpx.Request("GET", "http://inventory/"))
        assert outcomes(lb)[A] == (0, 0, 0, 1)
        await transport.aclose()
        await response.aclose()

    run(main())
    assert inner.closed == 1
    assert outcomes(lb)[A] == (0, 0, 1, 0)


def test_async_no_backend_is_a_transport_error() -> None:
    async def main() -> None:
        async with aclient(LoadBalancer(), AsyncBackends()) as http:
            await http.get("http://inventory/")

    with pytest.raises(NoBackendAvailable, match="'inventory': no servers available"):
        run(main())


def test_async_all_503_stays_within_the_budget() -> None:
    lb = balancer(A, B, C)
    backends = AsyncBackends(**{s: status(503) for s in (A, B, C)})
    policy = HttpPolicy(retry=RetryPolicy(attempts=3))

    async def main() -> None:
        async with aclient(lb, backends, policy=policy) as http:
            answers = await asyncio.gather(*(http.get("http://inventory/") for _ in range(200)))
        assert {a.status_code for a in answers} == {503}

    run(main())
    assert len(backends.started) <= 1.2 * 200 + 10
    assert all(s.in_flight == 0 for s in lb.stats().values())


def test_async_simultaneous_answers_the_first_attempt_wins_the_other_is_closed() -> None:
    lb = balancer(A, B)
    backends = AsyncBackends({A: 0.06, B: 0.01})  # both answer at 0.06 s
    policy = HttpPolicy(hedging=HedgingPolicy(delay=0.05))

    async def main() -> str:
        async with aclient(lb, backends, policy=policy) as http:
            text = (await http.get("http://inventory/")).text
            await asyncio.sleep(0)  # the loser's close runs in a task of its own
            return text

    assert run(main()) == A
    assert sorted(backends.finished) == [A, B]
    assert outcomes(lb) == {A: (1, 0, 0, 0), B: (1, 0, 0, 0)}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_an_error_not_retried_for_want_of_budget_says_so() -> None:
    lb = balancer(A, B, retry_budget=RetryBudget(ratio=0, reserve=1))
    backends = Backends(**{A: refuse, B: refuse})
    with client(lb, backends) as http:
        with pytest.raises(httpx.ConnectError) as first:
            http.get("http://inventory/")  # retried once on B: the attempts ran out
        with pytest.raises(httpx.ConnectError) as second:
            http.get("http://inventory/")  # no token left for the retry
    assert not getattr(first.value, "__notes__", [])
    assert getattr(second.value, "__notes__", None) == [
        "loadbalancer: not retried on another server: the retry budget is exhausted"
    ]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_async_an_error_not_retried_for_want_of_budget_says_so() -> None:
    lb = balancer(A, B, retry_budget=RetryBudget(ratio=0, reserve=1))
    backends = AsyncBackends(**{A: refuse, B: refuse})

    async def main() -> list[list[str]]:
        notes = []
        async with aclient(lb, backends) as http:
            for _ in range(2):
                try:
                    await http.get("http://inventory/")
                except httpx.ConnectError as error:
                    notes.append(getattr(error, "__notes__", []))
        return notes

    assert run(main()) == [
        [],
        ["loadbalancer: not retried on another server: the retry budget is exhausted"],
    ]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="notes are 3.11+")
def test_async_a_per_try_timeout_not_retried_for_want_of_budget_says_so() -> None:
    lb = balancer(A, B, retry_budget=RetryBudget(ratio=0, reserve=1))
    backends = AsyncBackends({A: 10.0, B: 10.0})
    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.1))

    async def main() -> list[list[str]]:
        notes = []
        async with aclient(lb, backends, policy=policy) as http:
            for _ in range(2):
                try:
                    await http.get("http://inventory/")
                except PerTryTimeout as error:
                    notes.append(getattr(error, "__notes__", []))
        return notes

    assert run(main()) == [
        [],
        ["loadbalancer: not retried on another server: the retry budget is exhausted"],
    ]


# -- against real servers (tests/http_backends.py: uvicorn on 127.0.0.1) --------------------------
# What every integration must do against real servers is tests/test_http_clients.py's, run
# through these transports too; here is only what is httpx's own (TLS, hedging).


def real_balancer(addresses: list[str], **kwargs: object) -> LoadBalancer:
    lb = LoadBalancer(**kwargs)  # type: ignore[arg-type]
    lb.replace(addresses)
    return lb


def test_real_tls_to_an_ip_backend_verifies_the_logical_name() -> None:
    with backends(1, tls=True) as (backend,):
        lb = real_balancer([backend.address])
        inner = httpx.HTTPTransport(verify=client_tls())
        with httpx.Client(transport=BalancedTransport(lb, transport=inner)) as http:
            answer = http.get("https://localhost/items/1")  # the certificate names localhost
            assert answer.json()["host"] == "localhost"
        # A new pool: httpcore reuses a connection per backend address, whatever its SNI.
        inner = httpx.HTTPTransport(verify=client_tls())
        with (
            httpx.Client(transport=BalancedTransport(lb, transport=inner)) as http,
            pytest.raises(httpx.ConnectError, match="certificate verify failed"),
        ):
            http.get("https://inventory/items/1")  # ... and not inventory


def test_real_async_hedging_answers_from_the_live_backend() -> None:
    async def main(lb: LoadBalancer) -> list[str]:
        policy = HttpPolicy(hedging=HedgingPolicy(delay=0.05))
        async with httpx.AsyncClient(transport=AsyncBalancedTransport(lb, policy=policy)) as http:
            answers = [await http.get("http://inventory/items/1") for _ in range(4)]
        return [a.json()["backend"] for a in answers]

    with backends(2) as (hung, live):
        hung.mode = "hang"
        lb = real_balancer([hung.address, live.address])
        started = time.monotonic()
        assert asyncio.run(main(lb)) == [live.name] * 4
        assert time.monotonic() - started < 2.0
        hung.wait_until(lambda: not hung.in_flight())  # each hedge that lost was cut off
        stats = lb.stats()
        assert stats[hung.address].failures == 0  # a lost race is no outcome
        assert all(s.in_flight == 0 for s in stats.values())


# -- regressions found in review -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_retry_never_goes_back_to_the_server_that_failed(method: str) -> None:
    lb = balancer(A)  # one server: nothing else to retry on
    backends = Backends(**{A: refuse if method == "POST" else status(503)})
    policy = HttpPolicy(retry=RetryPolicy(attempts=3))
    with client(lb, backends, policy=policy) as http:
        if method == "POST":
            with pytest.raises(httpx.ConnectError):
                http.post("http://inventory/orders", content=b"{}")
        else:
            assert http.get("http://inventory/").status_code == 503
    assert backends.servers == [A]  # sent once, never twice to the same server
    assert lb.retry_budget.stats().retries == 0  # the token went back


def test_async_hedging_never_doubles_up_on_one_server() -> None:
    lb = balancer(A)
    backends = AsyncBackends({A: 1.0})
    policy = HttpPolicy(hedging=HedgingPolicy(delay=0.1, attempts=3))

    async def main() -> str:
        async with aclient(lb, backends, policy=policy) as http:
            return (await http.get("http://inventory/")).text

    assert run(main()) == A
    assert backends.started == [A]
    assert lb.retry_budget.stats().hedges == 0


def test_async_per_try_timeout_is_an_httpx_timeout() -> None:
    lb = balancer(A)
    backends = AsyncBackends({A: 100.0})
    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.5))

    async def main() -> None:
        async with aclient(lb, backends, policy=policy) as http:
            await http.post("http://inventory/orders", content=b"{}")

    with pytest.raises(httpx.TimeoutException, match=r"took over 0\.5 s") as caught:
        run(main())
    assert isinstance(caught.value.__cause__, Exception)
    assert outcomes(lb) == {A: (0, 1, 0, 0)}


def test_async_a_retryable_answer_with_a_stalled_body_does_not_hold_up_the_retry() -> None:
    lb = balancer(A, B)

    async def stalled_body() -> AsyncIterator[bytes]:
        yield b"overloaded"
        await asyncio.sleep(3600)
        yield b"never"

    class Stalled(AsyncBackends):
        async def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "10.0.0.1":
                return httpx.Response(503, content=stalled_body())
            return await super().__call__(request)

    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.2, backoff_base=0))

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        async with aclient(lb, Stalled(), policy=policy) as http:
            start = loop.time()
            text = (await http.get("http://inventory/")).text
            return text, loop.time() - start

    text, took = run(main())
    assert text == B
    assert took == pytest.approx(0.2)  # the stalled body was given the per-try timeout only


def test_a_collection_while_the_transport_holds_its_lock_does_not_deadlock() -> None:
    lb = balancer(A)
    transport = BalancedTransport(lb, transport=httpx.MockTransport(Backends()))
    http = httpx.Client(transport=transport)
    response = http.send(http.build_request("GET", "http://inventory/"), stream=True)
    del response  # unclosed, in a reference cycle: freed only by the cyclic collector
    done = threading.Event()

    def collect_under_the_lock() -> None:
        with transport._holds._lock:  # white-box: where a collection can strike
            gc.collect()
        done.set()

    threading.Thread(target=collect_under_the_lock, daemon=True).start()
    # On failure the client is left open: closing it would wait for the deadlocked lock.
    assert done.wait(5.0), "the finalizer deadlocked on the transport's lock"
    http.close()
    assert outcomes(lb) == {A: (0, 0, 1, 0)}


def test_an_error_returned_when_no_server_is_left_keeps_its_cause() -> None:
    lb = balancer(A, B)

    def refuse_with_cause(request: httpx.Request) -> httpx.Response:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as cause:
            raise httpx.ConnectError("connection refused", request=request) from cause

    def leave(request: httpx.Request) -> httpx.Response:
        lb.replace([])
        return refuse_with_cause(request)

    with (
        client(lb, Backends(**{A: leave, B: leave})) as http,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        http.get("http://inventory/")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_a_body_the_inner_transport_read_whole_holds_no_lease() -> None:
    lb = balancer(A)
    backends = Backends(**{A: lambda request: httpx.Response(200, content=b"read at once")})
    transport = BalancedTransport(lb, transport=httpx.MockTransport(backends))
    response = transport.handle_request(httpx.Request("GET", "http://inventory/"))
    assert response.read() == b"read at once"
    assert outcomes(lb)[A] == (1, 0, 0, 0)
    assert transport.open_streams == 0


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    ),
    port=st.one_of(st.none(), st.sampled_from([80, 443]), st.integers(1, 65535)),
    target=st.sampled_from(
        ["http://inventory/", "http://u:p@Inventory:81/a%20b/c?x=1&y=%2F#frag", "https://svc/?"]
    ),
)
def test_readdressing_fast_agrees_with_httpx_copy_with(
    scheme: str, host: str, port: int | None, target: str
) -> None:
    url = httpx.URL(target)
    fast = readdressed(url, scheme, host, port)
    public = url.copy_with(scheme=scheme, host=host, port=port)
    assert fast == public
    assert (fast.scheme, fast.host, fast.port, fast.raw_path) == (
        public.scheme,
        public.host,
        public.port,
        public.raw_path,
    )
    assert str(fast) == str(public)
