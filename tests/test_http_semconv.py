"""The HTTP client semantic conventions, asserted of every integration through the shared suite.

Each test runs once per client in ``tests/http_clients.CLIENTS``, with a real OpenTelemetry SDK
``MeterProvider`` read by an ``InMemoryMetricReader`` (the SDK is imported by tests only) and
the real uvicorn backends of ``tests/http_backends``. Every attempt is one point of
``http.client.request.duration``; the attributes tell the attempts apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

import loadbalancer
from loadbalancer import HedgingPolicy, LoadBalancer, RetryPolicy
from loadbalancer.integrations._http import HttpPolicy
from loadbalancer.integrations._semconv import (
    BUCKETS,
    DURATION,
    KNOWN_METHODS,
    HttpMetrics,
    error_type,
    known_methods,
    method_attribute,
    protocol_version,
    status_error_type,
)

from .http_backends import Backend, backends
from .http_clients import CLIENTS, Client


@dataclass(frozen=True)
class Point:
    """One point of the duration histogram: one set of attributes, and what it summed."""

    attributes: dict[str, Any]
    count: int
    sum: float


class Metered(Protocol):
    def __call__(self, lb: LoadBalancer, policy: HttpPolicy | None = None) -> Client: ...


@dataclass
class Recording:
    """Clients of one kind that record on one in-memory reader."""

    name: str
    make: Metered
    reader: InMemoryMetricReader

    def points(self) -> list[Point]:
        """Every point of ``DURATION`` read so far (cumulative), checking how it is described."""
        data = self.reader.get_metrics_data()
        found: list[Point] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                assert (scope.scope.name, scope.scope.version) == (
                    "loadbalancer",
                    loadbalancer.__version__,
                )
                for metric in scope.metrics:
                    assert (metric.name, metric.unit) == (DURATION, "s")
                    for point in metric.data.data_points:
                        assert isinstance(point, HistogramDataPoint)
                        assert tuple(point.explicit_bounds) == BUCKETS
                        found.append(Point(dict(point.attributes or {}), point.count, point.sum))
        return found

    def on(self, backend: Backend) -> list[Point]:
        """The points of attempts that went to ``backend``."""
        return [p for p in self.points() if p.attributes["server.port"] == backend.port]


@pytest.fixture(params=sorted(CLIENTS))
def recording(request: pytest.FixtureRequest) -> Iterator[Recording]:
    """Clients of one kind, each recording on the same provider; all closed after the test."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    factory = CLIENTS[request.param]
    made: list[Client] = []

    def make(lb: LoadBalancer, policy: HttpPolicy | None = None) -> Client:
        client = factory(lb, policy, meter_provider=provider)
        made.append(client)
        return client

    yield Recording(request.param, make, reader)
    for client in made:
        client.close()
    provider.shutdown()


def balancer(pool: list[Backend]) -> LoadBalancer:
    lb = LoadBalancer()  # round robin: consecutive requests start on different backends
    lb.replace([b.address for b in pool])
    return lb


def attributes(backend: Backend, **more: object) -> dict[str, object]:
    """The attributes of a GET to ``http://inventory/...`` that went to ``backend``."""
    return {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": backend.port,
        "url.scheme": "http",
        "loadbalancer.service": "inventory",
        **more,
    }


def answered(status: int, **more: object) -> dict[str, object]:
    """The attributes a response with ``status`` adds."""
    return {"http.response.status_code": status, "network.protocol.version": "1.1", **more}


def test_a_get_records_one_point_with_the_semconv_attributes(recording: Recording) -> None:
    with backends(1) as (backend,):
        client = recording.make(balancer([backend]))
        assert client.get("http://inventory/items/42?color=red").status == 200
        (point,) = recording.points()
        assert point.attributes == attributes(backend, **answered(200))
        assert point.count == 1
        assert 0 < point.sum < 5  # seconds, not milliseconds


def test_a_retry_after_a_503_records_both_attempts(recording: Recording) -> None:
    with backends(2) as (failing, good):
        failing.mode = "fail503"
        client = recording.make(
            balancer([failing, good]), HttpPolicy(retry=RetryPolicy(attempts=2, backoff_base=0))
        )
        for i in range(4):
            assert client.get(f"http://inventory/items/{i}").status == 200
        assert failing.count() >= 1  # round robin started some requests on it
        failed, succeeded = recording.on(failing), recording.on(good)
        assert [p.attributes for p in failed] == [
            attributes(failing, **answered(503, **{"error.type": "503"}))
        ]
        assert [p.attributes for p in succeeded] == [attributes(good, **answered(200))]
        assert failed[0].count == failing.count()  # every attempt, retried ones included
        assert succeeded[0].count == good.count() == 4


def test_a_refused_connection_records_the_exception_class(recording: Recording) -> None:
    with backends(2) as (down, good):
        down.kill()
        lb = balancer([down, good])
        client = recording.make(lb)
        for i in range(4):
            assert client.get(f"http://inventory/items/{i}").status == 200
        refused = recording.on(down)
        assert [p.attributes for p in refused] == [
            attributes(down, **{"error.type": client.refused_error_type})  # no status code
        ]
        assert refused[0].count == lb.stats()[down.address].failures >= 1
        assert [(p.attributes, p.count) for p in recording.on(good)] == [
            (attributes(good, **answered(200)), 4)
        ]


def test_an_attempt_past_the_per_try_timeout_records_the_timeout(recording: Recording) -> None:
    per_try = 0.3
    with backends(2) as (hung, good):
        hung.mode = "hang"
        client = recording.make(
            balancer([hung, good]),
            HttpPolicy(retry=RetryPolicy(attempts=2, backoff_base=0, per_try_timeout=per_try)),
        )
        for i in range(2):
            assert client.get(f"http://inventory/items/{i}").status == 200
        (timed_out,) = recording.on(hung)
        assert timed_out.attributes == attributes(hung, **{"error.type": client.timeout_error_type})
        assert timed_out.count == hung.count() >= 1  # every attempt it was sent
        assert timed_out.sum >= per_try * 0.9  # to the timeout, not to an early give-up


def test_a_hedge_that_lost_records_its_cancellation(recording: Recording) -> None:
    if recording.name in ("httpx", "requests"):
        pytest.skip("blocking clients do not hedge")
    with backends(2) as (hung, good):
        hung.mode = "hang"
        client = recording.make(
            balancer([hung, good]), HttpPolicy(hedging=HedgingPolicy(delay=0.05))
        )
        for i in range(2):
            assert client.get(f"http://inventory/items/{i}").backend == good.name
        client.settle()  # the lost hedge is cancelled after the answer: let it unwind
        (cancelled,) = recording.on(hung)
        assert cancelled.attributes == attributes(hung, **{"error.type": "asyncio.CancelledError"})
        assert cancelled.count == hung.count() >= 1
        assert [(p.attributes, p.count) for p in recording.on(good)] == [
            (attributes(good, **answered(200)), 2)
        ]


def test_a_meter_provider_that_is_not_one_is_a_type_error(recording: Recording) -> None:
    factory = CLIENTS[recording.name]
    for wrong in (object(), MeterProvider, "global"):
        with pytest.raises(TypeError, match=r"^meter_provider must be an opentelemetry\.metrics"):
            factory(LoadBalancer(), None, meter_provider=wrong)


# Run in a fresh interpreter: this process has imported OpenTelemetry for the tests above.
WITHOUT_METRICS = """
import json, sys
from tests.http_backends import backends
from tests.http_clients import CLIENTS
from loadbalancer import LoadBalancer

with backends(1) as (backend,):
    lb = LoadBalancer()
    lb.replace([backend.address])
    client = CLIENTS[sys.argv[1]](lb, None)
    try:
        status = client.get("http://inventory/items/1").status
    finally:
        client.close()
print(json.dumps([status, sorted(m for m in sys.modules if m.startswith("opentelemetry"))]))
"""


def test_without_a_meter_provider_opentelemetry_is_never_imported(recording: Recording) -> None:
    # Nothing can be recorded through a library that was never imported: None costs nothing.
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_METRICS, recording.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent.parent,  # where ``tests`` is a package
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [200, []]


# -- the attribute rules, client-independent ------------------------------------------------------


def test_known_methods_are_kept_and_others_folded() -> None:
    assert {method_attribute(m) for m in KNOWN_METHODS} == KNOWN_METHODS
    assert method_attribute("PATCH") == "PATCH"
    assert method_attribute("PROPFIND") == "_OTHER"
    assert method_attribute("get") == "_OTHER"  # names are case-sensitive


def test_the_known_methods_variable_replaces_the_default() -> None:
    assert known_methods({}) == KNOWN_METHODS
    known = known_methods({"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS": "GET, PROPFIND,,"})
    assert known == {"GET", "PROPFIND"}
    assert method_attribute("PROPFIND", known) == "PROPFIND"
    assert method_attribute("POST", known) == "_OTHER"  # a full override, not an addition


def test_a_status_is_an_error_type_from_400_on() -> None:
    assert [status_error_type(s) for s in (200, 204, 304, 399)] == [None] * 4
    assert [status_error_type(s) for s in (400, 404, 429, 500, 503)] == [
        "400",
        "404",
        "429",
        "500",
        "503",
    ]
    assert status_error_type(99) == "99"  # a code the client cannot interpret
    assert status_error_type(600) == "600"


class _LocalError(Exception):
    pass


def test_an_error_type_names_the_class_as_its_package_exports_it() -> None:
    import httpx

    assert error_type(httpx.ConnectError("refused")) == "httpx.ConnectError"
    assert error_type(loadbalancer.AttemptTimeoutError("late")) == (
        "loadbalancer.AttemptTimeoutError"
    )
    assert error_type(TimeoutError()) == "TimeoutError"  # builtins need no module
    assert error_type(_LocalError()) == f"{__name__}._LocalError"  # not exported: its module


def test_protocol_versions_are_written_as_the_conventions_do() -> None:
    assert [protocol_version(*v) for v in ((1, 0), (1, 1), (2, 0), (3, 0))] == [
        "1.0",
        "1.1",
        "2",
        "3",
    ]


def test_a_failing_meter_never_fails_the_request(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenHistogram:
        def record(self, amount: float, attributes: dict[str, Any] | None = None) -> None:
            raise RuntimeError("the exporter is gone")

    metrics: HttpMetrics[int] = HttpMetrics(
        BrokenHistogram(),  # type: ignore[arg-type]
        KNOWN_METHODS,
        status=lambda response: response,
        version=lambda response: None,
    )
    attempt = metrics.request("GET", "inventory", "http", None).sync(lambda server: 200)
    with caplog.at_level("ERROR", logger="loadbalancer.metrics"):
        assert attempt("127.0.0.1:8080") == 200  # the response, not the meter's error
    assert "recording http.client.request.duration failed" in caplog.text
