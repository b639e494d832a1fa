"""The gRPC channels when things go wrong around a call: dropped calls, membership churn,
deadlines shorter than a wait, a factory that fails, a loop that ends."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from loadbalancer import LoadBalancer, RetryPolicy
from loadbalancer.integrations.grpc import BalancedChannel, GrpcPolicy
from loadbalancer.integrations.grpc_aio import AsyncBalancedChannel, LocalAioRpcError

from .grpc_clients import AsyncClient, Client, SyncClient
from .grpc_servers import STREAM, UNARY, EchoServer, echo_servers
from .test_grpc_channel import _wait_for, balancer


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    with echo_servers(3) as started:
        yield started


def in_flight(lb: LoadBalancer) -> int:
    return sum(s.in_flight for s in lb.stats().values())


def test_a_dropped_sync_stream_is_cancelled_and_its_lease_ended(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers)
    for attempts in (1, 2):  # the real call, and the stream that may retry
        with BalancedChannel(lb, policy=GrpcPolicy(retry=RetryPolicy(attempts=attempts))) as ch:
            stream = ch.unary_stream(STREAM)(b"3")
            assert next(stream).endswith(b":0")
            assert in_flight(lb) == 1
            del stream
            gc.collect()
            _wait_for(lambda: in_flight(lb) == 0)
            _wait_for(lambda: all(s.streams_open == 0 for s in servers))
    assert sum(s.failures + s.successes for s in lb.stats().values()) == 0  # no outcome


def test_a_sync_stream_dropped_before_its_first_use_ends_its_lease(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers)
    with BalancedChannel(lb) as channel:
        stream = channel.unary_stream(STREAM)(b"3")  # may retry: not read until first used
        assert in_flight(lb) == 1
        del stream
        gc.collect()
        _wait_for(lambda: in_flight(lb) == 0)
        _wait_for(lambda: all(s.streams_open == 0 for s in servers))
        assert channel.backends.draining() == 0
    assert sum(s.failures + s.successes for s in lb.stats().values()) == 0


def test_a_sync_stream_returns_at_once_and_may_still_move(servers: list[EchoServer]) -> None:
    lb = balancer(servers)
    servers[0].mode = "slow"  # holds the stream before its first message
    with BalancedChannel(lb) as channel:
        stream = channel.unary_stream(STREAM)(b"1")  # returns while the server holds it
        assert servers[0].arrived.wait(10)
        assert stream.is_active()
        servers[0].mode = "unavailable"  # what the held stream sees, once let go
        servers[0].let_go()
        assert list(stream) == [b"s1:0"]  # its failure went to another server
    assert [s.count(STREAM) for s in servers] == [1, 1, 0]


def test_a_cancelled_sync_stream_is_not_retried(servers: list[EchoServer]) -> None:
    lb = balancer(servers)
    servers[0].mode = "slow"
    with BalancedChannel(lb) as channel:
        stream = channel.unary_stream(STREAM)(b"1")
        assert servers[0].arrived.wait(10)
        stream.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            next(stream)
        assert caught.value.code() is grpc.StatusCode.CANCELLED
    assert [s.count(STREAM) for s in servers] == [1, 0, 0]
    assert lb.stats()[servers[0].address].failures == 0


@pytest.mark.parametrize("kind", [SyncClient, AsyncClient])
def test_a_committed_stream_outlives_the_per_try_timeout(
    kind: Callable[..., Client], servers: list[EchoServer]
) -> None:
    client = kind(balancer(servers), policy=GrpcPolicy(retry=RetryPolicy(per_try_timeout=0.2)))
    try:
        stream = client.stream(b"2")
        assert stream.next() == b"s0:0"
        threading.Event().wait(0.4)  # time passing is the point: longer than per_try_timeout
        servers[0].let_go()
        assert stream.rest() == [b"s0:1"]
    finally:
        client.close()


@pytest.mark.parametrize("kind", [SyncClient, AsyncClient])
def test_no_retry_whose_wait_would_end_past_the_deadline(
    kind: Callable[..., Client], servers: list[EchoServer]
) -> None:
    client = kind(balancer(servers))
    try:
        servers[0].mode = "unavailable"
        servers[0].pushback = "3000"  # 3 s, against a call with 0.5 s
        with pytest.raises(grpc.RpcError) as caught:
            client.unary(timeout=0.5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE  # the server's own answer
        assert [s.count() for s in servers] == [1, 0, 0]
    finally:
        client.close()


def test_an_aio_call_whose_every_attempt_times_out_raises_an_aio_rpc_error(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers)
    for server in servers:
        server.mode = "slow"
    policy = GrpcPolicy(retry=RetryPolicy(attempts=2, per_try_timeout=0.1))

    async def call() -> grpc.StatusCode:
        async with AsyncBalancedChannel(lb, policy=policy) as channel:
            pending = channel.unary_unary(UNARY)(b"x", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pending
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            code: grpc.StatusCode = await pending.code()
            return code

    assert asyncio.run(call()) is grpc.StatusCode.DEADLINE_EXCEEDED
    assert sorted(s.count() for s in servers) == [0, 1, 1]


def test_no_server_is_an_aio_rpc_error_on_the_aio_channel() -> None:
    async def call() -> None:
        async with AsyncBalancedChannel(LoadBalancer()) as channel:
            with pytest.raises(LocalAioRpcError) as caught:
                await channel.unary_unary(UNARY)(b"x")
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

    asyncio.run(call())


@pytest.mark.parametrize("kind", [SyncClient, AsyncClient])
def test_calls_during_membership_churn_fail_nothing_and_channels_end_as_the_pool(
    kind: Callable[..., Client], servers: list[EchoServer]
) -> None:
    lb = balancer(servers)
    client = kind(lb)
    errors: list[BaseException] = []
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            try:
                client.unary(timeout=10)
            except BaseException as error:
                errors.append(error)
                return

    def churn() -> None:
        pools = ([s.address for s in servers], [servers[0].address], [servers[2].address])
        for i in range(300):
            lb.replace(pools[i % 3])
        lb.replace([s.address for s in servers[1:]])
        stop.set()

    callers = [threading.Thread(target=call) for _ in range(4)]
    changer = threading.Thread(target=churn)
    for thread in (*callers, changer):
        thread.start()
    for thread in (*callers, changer):
        thread.join(60)
    try:
        assert errors == []
        backends = client.channel.backends
        _wait_for(lambda: set(client.call_soon(backends.live)) == set(lb.servers))
        _wait_for(lambda: backends.draining() == 0)
    finally:
        client.close()


def test_a_factory_that_fails_for_one_server_leaves_the_others_working(
    servers: list[EchoServer], caplog: pytest.LogCaptureFixture
) -> None:
    bad = servers[1].address
    opened: list[Any] = []

    def factory(server: str) -> grpc.Channel:
        if server == bad:
            raise RuntimeError("no route to this one")
        channel = grpc.insecure_channel(server)
        opened.append(channel)
        return channel

    lb = balancer(servers)
    channel = BalancedChannel(lb, channel_factory=factory)
    assert sorted(channel.backends.live()) == sorted([servers[0].address, servers[2].address])
    assert "could not open a channel" in caplog.text
    call: Any = channel.unary_unary(UNARY)
    assert call(b"x") == b"s0:x"
    with pytest.raises(RuntimeError, match="no route"):
        call(b"x")  # the factory's own error, for the call that needed it
    channel.close()
    for backend in opened:
        with pytest.raises(ValueError, match="closed channel"):
            backend.unary_unary(UNARY)(b"x")


def test_an_aio_channel_ready_waits_for_a_server_without_blocking_the_loop(
    servers: list[EchoServer],
) -> None:
    lb = LoadBalancer()

    async def main() -> None:
        async with AsyncBalancedChannel(lb) as channel:
            assert channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            waiting = asyncio.ensure_future(channel.channel_ready())
            await asyncio.sleep(0)  # the loop is free: this returns
            assert not waiting.done()
            await asyncio.to_thread(lb.register, servers[0].address)  # from another thread
            await asyncio.wait_for(waiting, 10)
            assert channel.get_state() is grpc.ChannelConnectivity.READY

    asyncio.run(main())


def test_an_aio_call_left_when_its_loop_ends_leaves_nothing_in_flight(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers)
    kept: list[Any] = []

    async def main() -> None:
        channel = AsyncBalancedChannel(lb, policy=GrpcPolicy(retry=RetryPolicy(attempts=1)))
        call: Any = channel.unary_stream(STREAM)(b"3")
        assert (await call.read()).endswith(b":0")
        kept.append(call)  # neither read to its end nor cancelled

    asyncio.run(main())
    kept.clear()
    gc.collect()
    _wait_for(lambda: in_flight(lb) == 0)


def test_a_dropped_aio_channel_is_collected(servers: list[EchoServer]) -> None:
    lb = balancer(servers)
    refs: list[weakref.ref[AsyncBalancedChannel]] = []

    async def main() -> None:
        channel = AsyncBalancedChannel(lb)
        await channel.unary_unary(UNARY)(b"x")
        await channel.close()
        refs.append(weakref.ref(channel))

    asyncio.run(main())
    gc.collect()
    assert refs[0]() is None
    lb.register("127.0.0.1:1")  # the balancer no longer calls into it


def test_a_departed_servers_last_call_ending_on_grpcs_thread_closes_its_channel(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers[:1])
    with BalancedChannel(lb) as channel:
        old: Any = channel.backends.live()[servers[0].address]
        servers[0].mode = "slow"
        future = channel.unary_unary(UNARY).future(b"x")  # ends in grpc's own thread
        assert servers[0].arrived.wait(10)
        lb.replace([servers[1].address])
        assert channel.backends.draining() == 1
        servers[0].let_go()
        assert future.result(timeout=10) == b"s0:x"

        def closed() -> bool:
            try:
                old.unary_unary(UNARY)(b"x", timeout=5)
            except ValueError:  # grpc refuses calls on a closed channel
                return True
            except grpc.RpcError as error:  # or cancels one it was closed under
                return bool(error.code() is grpc.StatusCode.CANCELLED)
            return False

        _wait_for(closed)
        assert channel.backends.draining() == 0
        assert channel.unary_unary(UNARY)(b"y") == b"s1:y"


def test_a_sync_stream_cancelled_while_it_waits_to_retry_is_not_retried(
    servers: list[EchoServer],
) -> None:
    slept = threading.Event()
    let_go = threading.Event()

    def sleep(seconds: float) -> None:  # the balancer's: the retry waits here
        slept.set()
        let_go.wait(10)

    lb = LoadBalancer(sleep=sleep)
    lb.replace([servers[0].address, servers[1].address])
    servers[0].mode = "unavailable"
    with BalancedChannel(lb) as channel:
        stream = channel.unary_stream(STREAM)(b"1")
        read: list[BaseException] = []

        def drain() -> None:
            try:
                list(stream)
            except grpc.RpcError as error:
                read.append(error)

        reader = threading.Thread(target=drain)
        reader.start()
        assert slept.wait(10)  # the first attempt failed: its retry waits
        stream.cancel()
        let_go.set()
        reader.join(10)
    assert len(read) == 1
    assert read[0].code() is grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]
    assert servers[1].count(STREAM) == 0  # the retry never went out
    assert in_flight(lb) == 0


def test_a_sync_stream_cancelled_unread_ends_its_lease(servers: list[EchoServer]) -> None:
    lb = balancer(servers[:1])
    servers[0].let_go()
    with BalancedChannel(lb) as channel:
        cancelled = channel.unary_stream(STREAM)(b"3")
        unread = channel.unary_stream(STREAM)(b"1")  # grpc reads a stream as it is read
        cancelled.cancel()
        _wait_for(lambda: in_flight(lb) == 1)  # the cancelled one's lease has ended
        assert list(unread) == [b"s0:0"]
        _wait_for(lambda: in_flight(lb) == 0)  # and the other's, once read to its end
    stats = lb.stats()[servers[0].address]
    assert (stats.successes, stats.failures) == (1, 0)  # the cancel is no outcome


@pytest.mark.parametrize("kind", ["sync stream", "aio unary"])
def test_a_classifier_that_raises_ends_the_lease(
    kind: str, servers: list[EchoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("verdict broke")

    monkeypatch.setattr(GrpcPolicy, "verdict", broken)
    lb = balancer(servers[:1])
    servers[0].mode = "unavailable"

    def sync_stream() -> None:
        with BalancedChannel(lb) as channel:
            next(channel.unary_stream(STREAM)(b"1"))

    async def aio_unary() -> None:
        async with AsyncBalancedChannel(lb) as channel:
            await channel.unary_unary(UNARY)(b"x")

    with pytest.raises(RuntimeError, match="verdict broke"):
        sync_stream() if kind == "sync stream" else asyncio.run(aio_unary())
    gc.collect()
    _wait_for(lambda: in_flight(lb) == 0)


def test_every_aio_call_shape_raises_an_aio_rpc_error_with_no_server() -> None:
    async def main() -> list[str]:
        async with AsyncBalancedChannel(LoadBalancer()) as channel:
            shapes: list[str] = []
            for make in (channel.stream_unary, channel.stream_stream):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    make(UNARY)(iter([b"x"]))
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
                shapes.append(make.__name__)
            return shapes

    assert asyncio.run(main()) == ["stream_unary", "stream_stream"]
