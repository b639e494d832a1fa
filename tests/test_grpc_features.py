"""What the gRPC channels pass through (options, interceptors, credentials, a factory), and
what only the asyncio channel does (hedging, per-try timeouts, cancelling a call)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from loadbalancer import HedgingPolicy, LoadBalancer, RetryPolicy
from loadbalancer.integrations.grpc import BalancedChannel, GrpcPolicy
from loadbalancer.integrations.grpc_aio import AsyncBalancedChannel

from .grpc_servers import CERT, UNARY, EchoServer, echo_servers
from .test_grpc_channel import _wait_for, balancer


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    with echo_servers(3) as started:
        yield started


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# -- passed through to the backend channels --------------------------------------------------


class _AddMetadata(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = (*(details.metadata or ()), ("x-intercepted", "sync"))
        return continuation(details._replace(metadata=metadata), request)


class _AsyncAddMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("x-intercepted", "aio"))
        return await continuation(details._replace(metadata=metadata), request)


def test_options_and_interceptors_reach_every_backend_channel(servers: list[EchoServer]) -> None:
    options = [("grpc.primary_user_agent", "lb-test/1")]
    with BalancedChannel(
        balancer(servers), options=options, interceptors=[_AddMetadata()]
    ) as channel:
        for _ in range(3):
            channel.unary_unary(UNARY)(b"x")

    async def aio() -> None:
        async with AsyncBalancedChannel(
            balancer(servers), options=options, interceptors=[_AsyncAddMetadata()]
        ) as channel:
            for _ in range(3):
                await channel.unary_unary(UNARY)(b"x")

    run(aio())
    for server in servers:
        seen = [(m.get("x-intercepted"), str(m.get("user-agent"))) for m in server.metadata]
        assert [s for s, _ in seen] == ["sync", "aio"]
        assert all(agent.startswith("lb-test/1") for _, agent in seen)


def test_credentials_make_tls_backend_channels() -> None:
    tls = [EchoServer(f"t{i}", tls=True) for i in range(2)]
    try:
        credentials = grpc.ssl_channel_credentials(CERT.read_bytes())
        with BalancedChannel(balancer(tls), credentials=credentials) as channel:
            assert {channel.unary_unary(UNARY)(b"x") for _ in range(2)} == {b"t0:x", b"t1:x"}

        async def aio() -> set[bytes]:
            async with AsyncBalancedChannel(balancer(tls), credentials=credentials) as channel:
                return {await channel.unary_unary(UNARY)(b"x") for _ in range(2)}

        assert run(aio()) == {b"t0:x", b"t1:x"}
        with BalancedChannel(balancer(tls)) as plain, pytest.raises(grpc.RpcError):
            plain.unary_unary(UNARY)(b"x", timeout=5)  # no TLS: the servers will not talk
    finally:
        for server in tls:
            server.kill()


def test_a_channel_factory_makes_each_backend_channel(servers: list[EchoServer]) -> None:
    made: list[str] = []

    def factory(server: str) -> grpc.Channel:
        made.append(server)
        return grpc.insecure_channel(server)

    lb = balancer(servers)
    with BalancedChannel(lb, channel_factory=factory) as channel:
        assert channel.unary_unary(UNARY)(b"x") == b"s0:x"
    assert made == [s.address for s in servers]


# -- the sync channel's other call shapes ------------------------------------------------------


def test_future_and_with_call(servers: list[EchoServer]) -> None:
    lb = balancer(servers)
    with BalancedChannel(lb) as channel:
        call = channel.unary_unary(UNARY)
        answer, rpc = call.with_call(b"a")
        assert (answer, rpc.code()) == (b"s0:a", grpc.StatusCode.OK)
        future = call.future(b"b")
        assert future.result(timeout=10) == b"s1:b"
        _wait_for(lambda: all(s.in_flight == 0 for s in lb.stats().values()))
        assert [lb.stats()[s.address].successes for s in servers] == [1, 1, 0]


def test_subscribe_reports_the_best_backend_state(servers: list[EchoServer]) -> None:
    first: list[grpc.ChannelConnectivity] = []
    second: list[grpc.ChannelConnectivity] = []
    ready = threading.Event()

    def seen(state: grpc.ChannelConnectivity) -> None:
        first.append(state)
        if state is grpc.ChannelConnectivity.READY:
            ready.set()

    channel = BalancedChannel(balancer(servers))
    channel.subscribe(seen, try_to_connect=True)
    assert first  # told the state at once, as grpc's channels do
    assert ready.wait(10)  # and READY once a backend has connected
    channel.unsubscribe(seen)
    told = len(first)
    channel.subscribe(second.append)
    assert second == [grpc.ChannelConnectivity.READY]
    channel.close()
    assert second[-1] is grpc.ChannelConnectivity.SHUTDOWN
    assert len(first) == told  # unsubscribed: told nothing more


def test_a_channel_with_no_servers_is_in_transient_failure() -> None:
    states: list[grpc.ChannelConnectivity] = []
    with BalancedChannel(LoadBalancer()) as channel:
        channel.subscribe(states.append)
    assert states == [
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    ]


# -- asyncio only: hedging, per-try timeouts, cancelling ---------------------------------------


def test_a_hedge_answers_for_a_slow_server_and_the_slow_attempt_is_no_outcome(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers)
    servers[0].mode = "slow"
    policy = GrpcPolicy(hedging=HedgingPolicy(delay=0.05), hedged_methods={UNARY})

    async def call() -> bytes:
        async with AsyncBalancedChannel(lb, policy=policy) as channel:
            answer: bytes = await channel.unary_unary(UNARY)(b"x", timeout=10)
            return answer

    assert run(call()) == b"s1:x"
    assert [s.count() for s in servers] == [1, 1, 0]
    slow = lb.stats()[servers[0].address]
    assert (slow.in_flight, slow.failures, slow.successes) == (0, 0, 0)


def test_a_method_not_listed_is_not_hedged(servers: list[EchoServer]) -> None:
    lb = balancer(servers)
    servers[0].mode = "slow"
    policy = GrpcPolicy(hedging=HedgingPolicy(delay=0.01), hedged_methods={"/other.S/M"})

    async def call() -> None:
        async with AsyncBalancedChannel(lb, policy=policy) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                await channel.unary_unary(UNARY)(b"x", timeout=0.3)
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    run(call())
    assert [s.count() for s in servers] == [1, 0, 0]


def test_an_attempt_past_its_per_try_timeout_is_retried_and_charged(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers)
    servers[0].mode = "slow"
    policy = GrpcPolicy(retry=RetryPolicy(per_try_timeout=0.1))

    async def call() -> bytes:
        async with AsyncBalancedChannel(lb, policy=policy) as channel:
            answer: bytes = await channel.unary_unary(UNARY)(b"x", timeout=10)
            return answer

    assert run(call()) == b"s1:x"
    assert lb.stats()[servers[0].address].failures == 1  # DEADLINE_EXCEEDED is a failure


def test_cancelling_a_call_is_no_outcome(servers: list[EchoServer]) -> None:
    lb = balancer(servers)
    servers[0].mode = "slow"

    async def call() -> tuple[bool, grpc.StatusCode]:
        async with AsyncBalancedChannel(lb) as channel:
            pending = channel.unary_unary(UNARY)(b"x")
            assert await asyncio.to_thread(servers[0].arrived.wait, 10)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            return pending.cancelled(), await pending.code()

    assert run(call()) == (True, grpc.StatusCode.CANCELLED)
    slow = lb.stats()[servers[0].address]
    assert (slow.in_flight, slow.failures, slow.successes) == (0, 0, 0)
