"""The gRPC health probes against real grpcio servers: the standard Health/Check service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from loadbalancer import AsyncHealthChecker, HealthChecker, LoadBalancer, ProbeResult
from loadbalancer.integrations.grpc import GrpcHealthProbe
from loadbalancer.integrations.grpc_aio import AsyncGrpcHealthProbe

from .grpc_servers import EchoServer, echo_servers

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def probe_once(kind: str, server: str, **options: Any) -> ProbeResult:
    if kind == "sync":
        return GrpcHealthProbe(**options)(server)
    return asyncio.run(AsyncGrpcHealthProbe(**options)(server))


@pytest.fixture(params=["sync", "aio"])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def server() -> Iterator[EchoServer]:
    with echo_servers(1) as (started,):
        yield started


@contextlib.contextmanager
def server_without_health() -> Iterator[str]:
    bare = grpc.server(ThreadPoolExecutor(2))
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        bare.stop(0).wait()


def test_a_serving_server_is_healthy(kind: str, server: EchoServer) -> None:
    assert probe_once(kind, server.address) == ProbeResult(True)


def test_a_server_not_serving_is_unhealthy_and_says_so(kind: str, server: EchoServer) -> None:
    server.health.set("", NOT_SERVING)
    assert probe_once(kind, server.address) == ProbeResult(False, "status NOT_SERVING")


def test_a_named_service_is_probed(kind: str, server: EchoServer) -> None:
    server.health.set("test.Echo", health_pb2.HealthCheckResponse.SERVING)
    server.health.set("", NOT_SERVING)
    assert probe_once(kind, server.address, service="test.Echo")
    unknown = probe_once(kind, server.address, service="no.Such")
    assert not unknown
    assert unknown.reason is not None
    assert unknown.reason.startswith("NOT_FOUND")


def test_a_server_without_the_health_service_is_unhealthy(kind: str) -> None:
    with server_without_health() as address:
        result = probe_once(kind, address)
    assert result == ProbeResult(False, "no grpc.health.v1.Health service (UNIMPLEMENTED)")


def test_a_refused_connection_is_unhealthy_and_prompt(kind: str, server: EchoServer) -> None:
    address = server.address
    server.kill()
    result = probe_once(kind, address, timeout=5)
    assert not result
    assert result.reason is not None
    assert result.reason.startswith("UNAVAILABLE")


def test_the_sync_checker_marks_a_server_not_serving_unhealthy() -> None:
    with echo_servers(2) as servers:
        lb = LoadBalancer()
        lb.replace([s.address for s in servers])
        servers[1].health.set("", NOT_SERVING)
        checker = HealthChecker(lb, GrpcHealthProbe(), fall=1, rise=1)
        assert checker.check_now() == {servers[0].address: True, servers[1].address: False}
        assert lb.stats().healthy == 1
        assert checker.status()[servers[1].address].last_failure == "status NOT_SERVING"


def test_the_async_checker_marks_a_server_not_serving_unhealthy() -> None:
    with echo_servers(2) as servers:
        lb = LoadBalancer()
        lb.replace([s.address for s in servers])
        servers[0].health.set("", NOT_SERVING)

        async def check() -> dict[str, bool]:
            checker = AsyncHealthChecker(lb, AsyncGrpcHealthProbe(), fall=1, rise=1)
            return await checker.check_now()

        assert asyncio.run(check()) == {servers[0].address: False, servers[1].address: True}
        assert lb.stats().healthy == 1
