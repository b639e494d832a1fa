"""The balanced gRPC channels, sync and asyncio, against real grpcio servers on 127.0.0.1.

Every test here runs against both channels (``client`` is parametrized): the asyncio twin
passes the same behavioural tests as the sync channel.
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadbalancer import (
    LoadBalancer,
    OutlierDetection,
    RendezvousStrategy,
    RetryBudget,
    RetryPolicy,
)
from loadbalancer.discovery import Discovery, FileSource
from loadbalancer.integrations.grpc import GrpcPolicy, StickyKey

from .collector import left_for_the_collector
from .grpc_clients import AsyncClient, Client, SyncClient
from .grpc_servers import SERVER_THREADS, STREAM, UNARY, EchoServer, echo_servers

MakeClient = Callable[..., Client]


@pytest.fixture(params=["sync", "aio"])
def make_client(request: pytest.FixtureRequest) -> Iterator[MakeClient]:
    kinds: dict[str, Callable[..., Client]] = {"sync": SyncClient, "aio": AsyncClient}
    kind = kinds[request.param]
    made: list[Client] = []

    def make(lb: LoadBalancer, **options: Any) -> Client:
        client = kind(lb, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    with echo_servers(3) as started:
        yield started


def balancer(servers: list[EchoServer], **options: Any) -> LoadBalancer:
    lb = LoadBalancer(**options)
    lb.replace([s.address for s in servers])
    return lb


def sleeps() -> tuple[list[float], Callable[[float], None]]:
    """A fake ``sleep`` for the balancer (asyncio backoff uses asyncio.sleep, unrecorded)."""
    slept: list[float] = []
    return slept, slept.append


def stats_of(lb: LoadBalancer, server: EchoServer) -> Any:
    return lb.stats()[server.address]


# -- balancing -----------------------------------------------------------------------------


def test_calls_are_spread_over_every_server(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    client = make_client(balancer(servers))
    answers = [client.unary(b"hi") for _ in range(6)]
    assert answers == [b"s0:hi", b"s1:hi", b"s2:hi"] * 2
    assert [s.count() for s in servers] == [2, 2, 2]


def test_a_server_killed_during_300_calls_from_8_threads_fails_no_call(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(
        servers,
        outlier_detection=OutlierDetection(consecutive_failures=3, max_ejection_percent=50),
    )
    client = make_client(lb)  # the default policy: one retry
    victim = servers[1]
    failures: list[BaseException] = []
    done = 0
    lock = threading.Lock()
    halfway = threading.Event()

    def work() -> None:
        nonlocal done
        for _ in range(300 // 8 + 1):
            with lock:
                if done >= 300:
                    return
                done += 1
                if done == 100:
                    halfway.set()
            try:
                client.unary(b"x", timeout=10)
            except grpc.RpcError as error:
                failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert halfway.wait(30)
    victim.kill()
    for thread in threads:
        thread.join(60)
    assert done == 300
    assert failures == []
    assert victim.count() > 0  # it served until it was killed
    assert stats_of(lb, victim).ejected_until is not None  # and was ejected


def test_a_server_answering_unavailable_is_ejected(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(
        servers,
        outlier_detection=OutlierDetection(consecutive_failures=2, max_ejection_percent=50),
    )
    client = make_client(lb)
    servers[0].mode = "unavailable"
    answers = [client.unary() for _ in range(9)]
    assert all(not a.startswith(b"s0:") for a in answers)  # each retried elsewhere
    assert servers[0].count() == 2  # then ejected: no more calls
    assert stats_of(lb, servers[0]).ejected_until is not None
    assert stats_of(lb, servers[0]).failures == 2


def test_not_found_is_the_server_working_and_ejects_nothing(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(
        servers,
        outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=100),
    )
    client = make_client(lb)
    servers[0].mode = "not_found"
    with pytest.raises(grpc.RpcError) as caught:
        client.unary()
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert sum(s.count() for s in servers) == 1  # an answer: not retried
    assert stats_of(lb, servers[0]).ejected_until is None
    assert stats_of(lb, servers[0]).failures == 0
    assert stats_of(lb, servers[0]).successes == 1


# -- streams -------------------------------------------------------------------------------


def test_a_stream_keeps_one_request_in_flight_on_its_server_until_it_ends(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(servers)
    client = make_client(lb)
    stream = client.stream(b"3")
    assert stream.next() == b"s0:0"
    assert [s.in_flight for s in lb.stats().values()] == [1, 0, 0]
    assert stream.next() == b"s0:1"
    assert stats_of(lb, servers[0]).in_flight == 1
    servers[0].let_go()
    assert stream.rest() == [b"s0:2"]
    assert stream.code() is grpc.StatusCode.OK
    _wait_for(lambda: stats_of(lb, servers[0]).in_flight == 0)
    assert stats_of(lb, servers[0]).successes == 1


def test_a_cancelled_stream_is_no_outcome(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(
        servers,
        outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=100),
    )
    client = make_client(lb)
    stream = client.stream(b"3")
    assert stream.next() == b"s0:0"
    stream.cancel()
    _wait_for(lambda: stats_of(lb, servers[0]).in_flight == 0)
    assert stats_of(lb, servers[0]).failures == 0
    assert stats_of(lb, servers[0]).successes == 0
    assert stats_of(lb, servers[0]).ejected_until is None


def test_client_and_bidirectional_streams_are_balanced_too(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(servers)
    client = make_client(lb)
    assert client.collect([b"a", b"b", b"c"]) == b"s0:3"
    assert client.chat([b"a", b"b"]) == [b"s1:a", b"s1:b"]
    _wait_for(lambda: all(s.in_flight == 0 for s in lb.stats().values()))
    assert [stats_of(lb, s).successes for s in servers] == [1, 1, 0]


def test_a_stream_that_breaks_after_a_message_is_not_retried(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(servers)
    client = make_client(lb, policy=GrpcPolicy(retry=RetryPolicy(attempts=3)))
    servers[0].mode = "message_then_unavailable"
    stream = client.stream(b"2")
    assert stream.next() == b"s0:0"
    with pytest.raises(grpc.RpcError) as caught:
        stream.rest()
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert [s.count(STREAM) for s in servers] == [1, 0, 0]


def test_a_stream_failing_before_its_first_message_goes_to_another_server(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    client = make_client(balancer(servers))
    servers[0].mode = "unavailable"
    stream = client.stream(b"1")
    assert stream.rest() == [b"s1:0"]
    assert [s.count(STREAM) for s in servers] == [1, 1, 0]


# -- retries (gRPC A6) -----------------------------------------------------------------------


def test_a_retry_never_follows_a_committed_call(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    client = make_client(balancer(servers), policy=GrpcPolicy(retry=RetryPolicy(attempts=3)))
    servers[0].mode = "committed_unavailable"  # headers sent, then UNAVAILABLE
    with pytest.raises(grpc.RpcError) as caught:
        client.unary()
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert [s.count() for s in servers] == [1, 0, 0]


def test_at_most_attempts_servers_are_tried(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    with echo_servers(2) as more:
        pool = servers + more
        lb = balancer(pool, retry_budget=RetryBudget.unlimited())
        client = make_client(lb, policy=GrpcPolicy(retry=RetryPolicy(attempts=3)))
        for server in pool:
            server.mode = "unavailable"
        with pytest.raises(grpc.RpcError) as caught:
            client.unary()
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sorted(s.count() for s in pool) == [0, 0, 1, 1, 1]


def test_codes_not_listed_as_retryable_are_not_retried(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    policy = GrpcPolicy(retryable_codes={grpc.StatusCode.NOT_FOUND})
    client = make_client(balancer(servers), policy=policy)
    servers[0].mode = "unavailable"
    with pytest.raises(grpc.RpcError):
        client.unary()
    servers[0].mode = "ok"
    servers[1].mode = "not_found"
    assert client.unary() == b"s2:x"  # NOT_FOUND retried, as configured
    assert [s.count() for s in servers] == [1, 1, 1]


def test_a_pushback_that_is_not_a_wait_stops_the_retry(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    client = make_client(balancer(servers), policy=GrpcPolicy(retry=RetryPolicy(attempts=3)))
    servers[0].mode = servers[1].mode = "unavailable"
    servers[0].pushback = "-1"  # A6: a negative pushback means do not retry
    servers[1].pushback = "soon"  # and so does one that is not a number
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            client.unary()
    assert [s.count() for s in servers] == [1, 1, 0]


def test_pushback_sets_the_wait_before_the_retry() -> None:
    slept, sleep = sleeps()
    with echo_servers(2) as pool:
        lb = balancer(pool, sleep=sleep)
        client = SyncClient(lb)
        try:
            pool[0].mode = "unavailable"
            pool[0].pushback = "250"
            assert client.unary() == b"s1:x"
            assert slept == [0.25]
        finally:
            client.close()


def test_backoff_is_jittered_below_its_cap() -> None:
    slept, sleep = sleeps()
    with echo_servers(3) as pool:
        lb = balancer(pool, sleep=sleep, retry_budget=RetryBudget.unlimited())
        policy = GrpcPolicy(retry=RetryPolicy(attempts=3, backoff_base=0.1))
        client = SyncClient(lb, policy=policy)
        try:
            pool[0].mode = pool[1].mode = "unavailable"
            assert client.unary() == b"s2:x"
            assert len(slept) == 2
            assert 0 <= slept[0] <= 0.1
            assert 0 <= slept[1] <= 0.2
        finally:
            client.close()


def test_the_timeout_is_a_deadline_for_every_attempt(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    client = make_client(balancer(servers))
    servers[0].mode = "slow"
    with pytest.raises(grpc.RpcError) as caught:
        client.unary(timeout=0.2)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert [s.count() for s in servers] == [1, 0, 0]  # no time left for a retry


# -- sticky keys -----------------------------------------------------------------------------


def test_a_metadata_key_sends_one_key_to_one_server(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(servers, strategy=RendezvousStrategy())
    client = make_client(lb, sticky=StickyKey(metadata="x-user"))
    first = {user: client.unary(metadata=(("x-user", user),))[:2] for user in "abcdefgh"}
    again = {user: client.unary(metadata=(("x-user", user),))[:2] for user in "abcdefgh"}
    assert first == again
    assert len(set(first.values())) > 1  # keys spread over servers


def test_a_key_can_come_from_the_request(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(servers, strategy=RendezvousStrategy())
    client = make_client(lb, sticky=StickyKey(function=lambda request: request[:1]))
    answers = {client.unary(b"k" + bytes([i]))[:2] for i in range(5)}
    assert len(answers) == 1  # every request starting with b"k": one server


# -- membership, discovery and cleanup -------------------------------------------------------


def test_channels_follow_membership_and_a_leaving_server_finishes_its_stream(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    lb = balancer(servers[:2])
    client = make_client(lb)
    backends = client.channel.backends
    assert sorted(backends.live()) == sorted(s.address for s in servers[:2])
    stream = client.stream(b"2")  # on s0
    assert stream.next() == b"s0:0"
    lb.replace([servers[1].address, servers[2].address])
    _wait_for(lambda: sorted(backends.live()) == sorted(s.address for s in servers[1:]))
    assert backends.draining() == 1  # s0's channel waits for its stream
    servers[0].let_go()
    assert stream.rest() == [b"s0:1"]
    _wait_for(lambda: backends.draining() == 0)
    assert {client.unary()[:2] for _ in range(4)} == {b"s1", b"s2"}


def test_a_discovery_source_drives_the_backend_channels(
    make_client: MakeClient, servers: list[EchoServer], tmp_path: Path
) -> None:
    members = tmp_path / "members.json"
    members.write_text(json.dumps({"servers": [servers[0].address]}))
    lb = LoadBalancer()
    with Discovery(lb, FileSource(members, interval=0.01)) as discovery:
        assert discovery.wait_ready(10)
        client = make_client(lb)
        assert client.unary() == b"s0:x"
        members.write_text(json.dumps({"servers": [s.address for s in servers[1:]]}))
        wanted = sorted(s.address for s in servers[1:])
        _wait_for(lambda: sorted(client.channel.backends.live()) == wanted)
        assert sorted(lb.servers) == wanted
        assert {client.unary()[:2] for _ in range(4)} == {b"s1", b"s2"}


def test_no_server_is_an_unavailable_rpc_error(make_client: MakeClient) -> None:
    client = make_client(LoadBalancer())
    with pytest.raises(grpc.RpcError) as caught:
        client.unary()
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no server" in str(caught.value.details()).lower()


def test_a_generated_stub_works_on_the_balanced_channel(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    client = make_client(balancer(servers))
    stub: Any = health_pb2_grpc.HealthStub(client.channel)  # its type stub lacks the methods
    request = health_pb2.HealthCheckRequest(service="")
    if isinstance(client, AsyncClient):

        async def check() -> Any:
            return await stub.Check(request)

        answer = client.run(check())
    else:
        answer = stub.Check(request)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_closing_closes_every_backend_channel_and_leaves_no_thread(
    servers: list[EchoServer],
) -> None:
    lb = balancer(servers)
    AsyncClient(lb).close()  # grpc.aio starts one poller thread per process, on first use
    before = _client_threads()
    for kind in (SyncClient, AsyncClient):
        client: Client = kind(lb)
        for _ in range(6):
            client.unary()
        assert client.stream(b"1").rest()[0].endswith(b":0")
        channels = list(client.channel.backends.live().values())
        assert len(channels) == 3
        client.close()
        assert client.channel.backends.live() == {}
        if isinstance(client, SyncClient):
            for channel in channels:  # grpc refuses calls on a closed channel
                with pytest.raises(ValueError, match="closed channel"):
                    channel.unary_unary(UNARY)(b"x")
            with pytest.raises(grpc.RpcError):
                client.unary()
        else:
            assert {c.get_state() for c in channels} == {grpc.ChannelConnectivity.SHUTDOWN}
        del channels, client  # grpc.aio stops its poller thread once no aio object is left
    gc.collect()
    _wait_for(lambda: _client_threads() <= before, what=lambda: _client_threads() - before)


def _client_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith(SERVER_THREADS)}


def _wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, what: Callable[[], object] = str
) -> None:
    """Wait for ``condition``: what grpc's own threads do when an RPC ends (a lease ended
    from a call's done callback, a thread exiting) is marked by no event we can wait on."""
    event = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        event.wait(0.005)
    raise AssertionError(f"condition not met in {timeout:g} s: {what()}")


# -- what a failed call leaves -----------------------------------------------------------------


def test_a_retried_unary_call_leaves_nothing_for_the_cyclic_collector(
    make_client: MakeClient, servers: list[EchoServer]
) -> None:
    """The first attempt's error, caught in the channel's frame, is not held there: the call's
    objects go with their reference counts, not the cyclic collector."""
    lb = balancer(servers, retry_budget=RetryBudget.unlimited())
    client = make_client(lb)
    client.unary()  # the backend channels made, outside the count
    servers[0].mode = "unavailable"
    before = stats_of(lb, servers[0]).failures
    with left_for_the_collector() as ours:
        for _ in range(6):
            assert client.unary() is not None
    assert stats_of(lb, servers[0]).failures > before  # first attempts failed, and were retried
    assert ours == []


@pytest.mark.parametrize("mode", ["unavailable", "not_found"])
def test_a_failed_sync_unary_call_leaves_nothing_for_the_cyclic_collector(
    servers: list[EchoServer], mode: str
) -> None:
    """Raised to the caller after every retry, or at once: held by none of the channel's frames."""
    lb = balancer(servers, retry_budget=RetryBudget.unlimited())
    client = SyncClient(lb)
    try:
        client.unary()
        for server in servers:
            server.mode = mode
        with left_for_the_collector() as ours:
            for _ in range(4):
                with contextlib.suppress(grpc.RpcError):
                    client.unary()
    finally:
        client.close()
    assert sum(s.count() for s in servers) >= 5  # the calls reached the servers
    assert ours == []
