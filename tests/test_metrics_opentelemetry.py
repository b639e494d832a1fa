"""The OpenTelemetry exporter, read back through the SDK's in-memory reader after the scripted run.

The SDK is imported by these tests only (the library needs just ``opentelemetry-api``), and
every ``MeterProvider`` here is local: the global one is never set. The figures are the ones
``tests.metrics_scenario.run`` states, read as a Prometheus scrape would be: by name and labels.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.metrics import (
    CallbackOptions,
    NoOpMeter,
    NoOpMeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    Observation,
)
from opentelemetry.metrics import Meter as ApiMeter
from opentelemetry.metrics import MeterProvider as ApiMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum

import loadbalancer
from loadbalancer import LoadBalancer
from loadbalancer.discovery import DiscoveryStatus
from loadbalancer.metrics import METRICS
from loadbalancer.metrics._catalog import LABEL_ATTRIBUTES
from loadbalancer.metrics.opentelemetry import LoadBalancerInstruments

from . import metrics_scenario

EXPORTED = [m for m in METRICS if m.kind != "histogram"]
BALANCER = LABEL_ATTRIBUTES["balancer"]
SERVER = LABEL_ATTRIBUTES["server"]
OUTCOME = LABEL_ATTRIBUTES["outcome"]
REASON = LABEL_ATTRIBUTES["reason"]
VERDICT = LABEL_ATTRIBUTES["verdict"]
SOURCE = LABEL_ATTRIBUTES["source"]

Points = dict[frozenset[tuple[str, Any]], float]


@dataclass(frozen=True)
class Exported:
    """One instrument as the reader collected it."""

    unit: str | None
    description: str | None
    data: Sum | Gauge
    points: Points

    def value(self, **attributes: str) -> float:
        """The point with exactly these attributes (keys as in LABEL_ATTRIBUTES)."""
        key = frozenset((LABEL_ATTRIBUTES[k], v) for k, v in attributes.items())
        return self.points[key]

    def of(self, balancer: str) -> Points:
        """The points attributed to ``balancer``."""
        return {k: v for k, v in self.points.items() if (BALANCER, balancer) in k}


def collect(reader: InMemoryMetricReader) -> dict[str, Exported]:
    """Collect once, and index the library's instruments by name."""
    data = reader.get_metrics_data()
    found: dict[str, Exported] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "loadbalancer"
            for metric in scope.metrics:
                assert isinstance(metric.data, (Sum, Gauge)), metric.name
                points: Points = {}
                for point in metric.data.data_points:
                    key = frozenset((point.attributes or {}).items())
                    assert key not in points, f"{metric.name}: {key} twice"
                    points[key] = point.value
                assert metric.name not in found
                found[metric.name] = Exported(metric.unit, metric.description, metric.data, points)
    return found


@dataclass
class Reporter:
    """A discovery runner stand-in whose ``status`` counts its reads: ``stats()`` reads it
    once per call, so this counts ``stats()`` calls through a balancer that is ``@final``."""

    source: str
    reads: int = 0
    on_read: Callable[[], None] | None = None

    @property
    def status(self) -> DiscoveryStatus:
        self.reads += 1
        if self.on_read is not None:
            self.on_read()
        return DiscoveryStatus(self.source, True, 4, 3, 0, 0, 1.5, None)


@dataclass
class Run:
    """The scenario after ``run()``, exported through a reader of its own."""

    scenario: metrics_scenario.Scenario
    reader: InMemoryMetricReader
    provider: MeterProvider
    instruments: LoadBalancerInstruments
    reporters: dict[str, Reporter] = field(default_factory=dict)

    def reset(self) -> None:
        for reporter in self.reporters.values():
            reporter.reads = 0

    def reads(self) -> dict[str, int]:
        return {name: r.reads for name, r in self.reporters.items()}


@pytest.fixture
def run() -> Iterator[Run]:
    scenario = metrics_scenario.balancers()
    reporters = {name: Reporter(f"{name}-source") for name in scenario.balancers}
    for name, lb in scenario.balancers.items():
        lb.attach_discovery(reporters[name])
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = LoadBalancerInstruments(scenario.balancers, meter_provider=provider)
    metrics_scenario.run(scenario)
    done = Run(scenario, reader, provider, instruments, reporters)
    done.reset()
    yield done
    provider.shutdown()


@pytest.fixture
def exported(run: Run) -> dict[str, Exported]:
    return collect(run.reader)


# -- the scenario's figures ----------------------------------------------------------------------


def test_ejection_is_counted_by_reason_and_active(exported: dict[str, Exported]) -> None:
    by_reason = exported["loadbalancer.outlier_detection.ejections"]
    assert by_reason.value(balancer="api", reason="consecutive_failures") == 1.0
    assert by_reason.value(balancer="api", reason="failure_percentage") == 0.0
    assert exported["loadbalancer.outlier_detection.ejections_active"].value(balancer="api") == 1.0
    per_server = exported["loadbalancer.upstream.ejections"]
    assert {s: per_server.value(balancer="api", server=s) for s in "abcde"} == {
        "a": 1.0,
        "b": 0.0,
        "c": 0.0,
        "d": 0.0,
        "e": 0.0,
    }


def test_ejection_remaining_is_seconds_left_for_the_ejected_server_only(
    exported: dict[str, Exported],
) -> None:
    remaining = exported["loadbalancer.upstream.ejection_remaining"]
    assert remaining.points == {frozenset({(BALANCER, "api"), (SERVER, "a")}): 20.0}


def test_failover_figures(exported: dict[str, Exported]) -> None:
    assert exported["loadbalancer.failover.requests"].value(balancer="api") == 1.0
    assert exported["loadbalancer.failover.retries"].value(balancer="api") == 1.0
    assert exported["loadbalancer.failover.hedges"].value(balancer="api") == 0.0
    assert exported["loadbalancer.failover.budget_rejections"].value(balancer="api") == 0.0


def test_panic_is_active_and_entered_once(exported: dict[str, Exported]) -> None:
    assert exported["loadbalancer.panic.active"].value(balancer="api") == 1.0
    assert exported["loadbalancer.panic.entered"].value(balancer="api") == 1.0
    eligible = exported["loadbalancer.upstream.eligible"]
    assert [eligible.value(balancer="api", server=s) for s in "abcde"] == [1.0] * 5


def test_membership_and_its_changes(exported: dict[str, Exported]) -> None:
    assert exported["loadbalancer.membership.size"].value(balancer="api") == 5.0
    assert exported["loadbalancer.membership.healthy"].value(balancer="api") == 2.0
    assert exported["loadbalancer.membership.eligible"].value(balancer="api") == 5.0
    assert exported["loadbalancer.membership.changes"].value(balancer="api") == 2.0
    assert exported["loadbalancer.membership.change_age"].value(balancer="api") == 9.5
    healthy = exported["loadbalancer.upstream.healthy"]
    assert healthy.value(balancer="api", server="b") == 0.0
    assert healthy.value(balancer="api", server="c") == 0.0
    assert healthy.value(balancer="api", server="d") == 1.0
    changes = exported["loadbalancer.health_check.changes"]
    assert changes.value(balancer="api", verdict="unhealthy") == 2.0
    assert changes.value(balancer="api", verdict="healthy") == 0.0


def test_completed_outcomes_per_server(run: Run, exported: dict[str, Exported]) -> None:
    expected = {(s, o): 0.0 for s in "abcde" for o in ("success", "failure", "none")}
    expected["a", "failure"] = 5.0
    expected[run.scenario.first_attempt, "failure"] += 1.0
    expected[run.scenario.retry_attempt, "success"] += 1.0
    completed = exported["loadbalancer.upstream.completed_requests"]
    assert {
        (s, o): completed.value(balancer="api", server=s, outcome=o) for s, o in expected
    } == expected
    assert len(completed.of("api")) == len(expected)


def test_requests_and_in_flight_per_server(run: Run, exported: dict[str, Exported]) -> None:
    started = dict.fromkeys("abcde", 0.0)
    started["a"] = 5.0
    started[run.scenario.first_attempt] += 1.0
    started[run.scenario.retry_attempt] += 1.0
    started["d"] += 1.0  # the held lease
    requests = exported["loadbalancer.upstream.requests"]
    assert {s: requests.value(balancer="api", server=s) for s in "abcde"} == started
    active = exported["loadbalancer.upstream.active_requests"]
    assert {s: active.value(balancer="api", server=s) for s in "abcde"} == {
        "a": 0.0,
        "b": 0.0,
        "c": 0.0,
        "d": 1.0,
        "e": 0.0,
    }


def test_latency_ewma_gauge(run: Run, exported: dict[str, Exported]) -> None:
    ewma = exported["loadbalancer.upstream.latency_ewma"]
    cache = run.scenario.cache_server
    # Three samples of 0.125 s, and nothing on the other cache server: no series for it.
    assert ewma.of("cache") == {frozenset({(BALANCER, "cache"), (SERVER, cache)}): 0.125}
    # In api, each server that has a sample has its estimate; d (in flight) and e have none.
    stats = run.scenario.balancers["api"].stats()
    sampled = {run.scenario.first_attempt, run.scenario.retry_attempt, "a"}
    assert {s: ewma.value(balancer="api", server=s) for s in sorted(sampled)} == {
        s: stats[s].latency_ewma for s in sorted(sampled)
    }
    assert len(ewma.of("api")) == len(sampled)


def test_the_cache_balancer_is_attributed_apart(run: Run, exported: dict[str, Exported]) -> None:
    server = run.scenario.cache_server
    other = ({"x", "y"} - {server}).pop()
    requests = exported["loadbalancer.upstream.requests"]
    assert requests.value(balancer="cache", server=server) == 3.0
    assert requests.value(balancer="cache", server=other) == 0.0
    completed = exported["loadbalancer.upstream.completed_requests"]
    assert completed.value(balancer="cache", server=server, outcome="success") == 3.0
    assert exported["loadbalancer.membership.size"].value(balancer="cache") == 2.0
    assert exported["loadbalancer.membership.changes"].value(balancer="cache") == 1.0
    assert exported["loadbalancer.panic.active"].value(balancer="cache") == 0.0
    assert exported["loadbalancer.outlier_detection.ejections_active"].value(balancer="cache") == 0
    assert exported["loadbalancer.failover.retries"].value(balancer="cache") == 0.0
    # Every point belongs to one balancer or the other, and per-server series name only
    # that balancer's servers: api's a-e never appear under cache, nor x, y under api.
    for name, instrument in exported.items():
        assert len(instrument.of("api")) + len(instrument.of("cache")) == len(instrument.points), (
            name
        )
        for key in instrument.of("cache"):
            assert dict(key).get(SERVER, "x") in {"x", "y"}, name
        for key in instrument.of("api"):
            assert dict(key).get(SERVER, "a") in set("abcde"), name


def test_discovery_is_attributed_by_source(exported: dict[str, Exported]) -> None:
    updates = exported["loadbalancer.discovery.updates"]
    assert updates.points == {
        frozenset({(BALANCER, "api"), (SOURCE, "api-source")}): 3.0,
        frozenset({(BALANCER, "cache"), (SOURCE, "cache-source")}): 3.0,
    }
    age = exported["loadbalancer.discovery.last_update_age"]
    assert age.value(balancer="api", source="api-source") == 1.5
    assert exported["loadbalancer.discovery.running"].value(balancer="cache", source="cache-source")


# -- the instruments -----------------------------------------------------------------------------


def test_the_collected_instruments_are_the_catalog_minus_the_histogram(
    exported: dict[str, Exported],
) -> None:
    # The scenario gives every instrument at least one point, so each is collected.
    assert set(exported) == {m.otel_name for m in EXPORTED}
    assert "loadbalancer.upstream.request.duration" not in exported
    for metric in EXPORTED:
        instrument = exported[metric.otel_name]
        assert (instrument.unit, instrument.description) == (metric.unit, metric.help)
        if metric.kind == "gauge":
            assert isinstance(instrument.data, Gauge), metric.otel_name
        else:
            assert isinstance(instrument.data, Sum), metric.otel_name
            assert instrument.data.is_monotonic == (metric.kind == "counter"), metric.otel_name


def test_the_histogram_stays_out_even_when_enabled(run: Run) -> None:
    for lb in run.scenario.balancers.values():
        lb.enable_latency_histogram()
    assert run.scenario.balancers["api"].stats()["a"].latency_histogram is not None
    assert "loadbalancer.upstream.request.duration" not in collect(run.reader)


@dataclass
class Created:
    kind: str
    name: str
    unit: str
    description: str
    callbacks: Sequence[Callable[[CallbackOptions], Any]]


class RecordingMeter(NoOpMeter):
    """A meter that records the asynchronous instruments created on it."""

    def __init__(self, name: str, version: str | None, created: list[Created]) -> None:
        super().__init__(name, version)
        self.created = created

    def create_observable_counter(
        self, name: str, callbacks: Any = None, unit: str = "", description: str = ""
    ) -> ObservableCounter:
        self.created.append(Created("counter", name, unit, description, callbacks))
        return super().create_observable_counter(name, callbacks, unit, description)

    def create_observable_up_down_counter(
        self, name: str, callbacks: Any = None, unit: str = "", description: str = ""
    ) -> ObservableUpDownCounter:
        self.created.append(Created("updown", name, unit, description, callbacks))
        return super().create_observable_up_down_counter(name, callbacks, unit, description)

    def create_observable_gauge(
        self, name: str, callbacks: Any = None, unit: str = "", description: str = ""
    ) -> ObservableGauge:
        self.created.append(Created("gauge", name, unit, description, callbacks))
        return super().create_observable_gauge(name, callbacks, unit, description)


class RecordingMeterProvider(NoOpMeterProvider):
    """Hands out RecordingMeters, and remembers what each was asked for."""

    def __init__(self) -> None:
        self.meters: list[tuple[str, str | None]] = []
        self.created: list[Created] = []

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> ApiMeter:
        self.meters.append((name, version))
        return RecordingMeter(name, version, self.created)


def test_one_asynchronous_instrument_per_metric_on_the_library_meter() -> None:
    provider = RecordingMeterProvider()
    LoadBalancerInstruments(meter_provider=provider)
    assert provider.meters == [("loadbalancer", loadbalancer.__version__)]
    assert [(c.kind, c.name, c.unit, c.description) for c in provider.created] == [
        (m.kind, m.otel_name, m.unit, m.help) for m in EXPORTED
    ]
    assert all(len(c.callbacks) == 1 for c in provider.created)


def test_callbacks_yield_observations_and_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = RecordingMeterProvider()
    solo, broken = LoadBalancer(), LoadBalancer()
    solo.replace(["s1"])
    broken.replace(["s2"])
    metrics_scenario.break_stats(monkeypatch, broken)
    LoadBalancerInstruments({"solo": solo, "broken": broken}, meter_provider=provider)
    observed = {c.name: list(c.callbacks[0](CallbackOptions())) for c in provider.created}
    assert set(observed) == {m.otel_name for m in EXPORTED}
    assert all(isinstance(o, Observation) for found in observed.values() for o in found)
    assert [(o.value, o.attributes) for o in observed["loadbalancer.upstream.weight"]] == [
        (1.0, {BALANCER: "solo", SERVER: "s1"})
    ]
    assert all(
        dict(o.attributes or {})[BALANCER] == "solo" for found in observed.values() for o in found
    )


# -- cost: one stats() per balancer per collection -----------------------------------------------


def test_stats_is_read_once_per_balancer_per_collection(run: Run) -> None:
    exported = collect(run.reader)
    assert len(exported) == len(EXPORTED)  # every instrument reported from that one reading
    assert run.reads() == {"api": 1, "cache": 1}
    collect(run.reader)
    assert run.reads() == {"api": 2, "cache": 2}


def test_each_readers_collection_reads_once() -> None:
    scenario = metrics_scenario.balancers()
    reporters = {name: Reporter(name) for name in scenario.balancers}
    for name, lb in scenario.balancers.items():
        lb.attach_discovery(reporters[name])
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first, second])
    LoadBalancerInstruments(scenario.balancers, meter_provider=provider)
    metrics_scenario.run(scenario)
    for reporter in reporters.values():
        reporter.reads = 0
    try:
        from_first = collect(first)
        assert {n: r.reads for n, r in reporters.items()} == {"api": 1, "cache": 1}
        from_second = collect(second)
        assert {n: r.reads for n, r in reporters.items()} == {"api": 2, "cache": 2}
        for exported in (from_first, from_second):
            assert exported["loadbalancer.failover.retries"].value(balancer="api") == 1.0
            assert exported["loadbalancer.membership.size"].value(balancer="cache") == 2.0
    finally:
        provider.shutdown()


def test_a_balancer_added_after_the_refresh_is_read_by_the_next_callback() -> None:
    provider = RecordingMeterProvider()
    one, two = LoadBalancer(), LoadBalancer()
    one.replace(["p"])
    two.replace(["q", "r"])
    counted = {"one": Reporter("one"), "two": Reporter("two")}
    one.attach_discovery(counted["one"])
    two.attach_discovery(counted["two"])
    instruments = LoadBalancerInstruments({"one": one}, meter_provider=provider)
    callbacks = [c.callbacks[0] for c in provider.created]
    counted["one"].reads = counted["two"].reads = 0
    list(callbacks[0](CallbackOptions()))  # the refresh: one is read
    instruments.add("two", two)
    size = next(
        cb for c, cb in zip(provider.created, callbacks, strict=True) if c.name.endswith("size")
    )
    observed = {dict(o.attributes or {})[BALANCER]: o.value for o in size(CallbackOptions())}
    assert observed == {"one": 1.0, "two": 2.0}
    for callback in callbacks[1:]:
        list(callback(CallbackOptions()))
    assert (counted["one"].reads, counted["two"].reads) == (1, 1)


# -- failures ------------------------------------------------------------------------------------


def test_a_balancer_whose_stats_raise_is_skipped_and_logged(
    run: Run, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_scenario.break_stats(monkeypatch, run.scenario.balancers["api"])
    with pytest.raises(RuntimeError):
        run.scenario.balancers["api"].stats()  # what the exporter meets
    run.reset()
    with caplog.at_level(logging.ERROR, logger="loadbalancer.metrics"):
        exported = collect(run.reader)
    assert all(not i.of("api") for i in exported.values())
    assert exported["loadbalancer.membership.size"].points == {
        frozenset({(BALANCER, "cache")}): 2.0
    }
    assert run.reads() == {"api": 1, "cache": 1}  # tried once, not once per instrument
    errors = [r for r in caplog.records if r.name == "loadbalancer.metrics"]
    assert len(errors) == 1
    assert "'api'" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is RuntimeError

    monkeypatch.undo()  # mended: the next collection tries again
    assert collect(run.reader)["loadbalancer.membership.size"].value(balancer="api") == 5.0


# -- remove and close ----------------------------------------------------------------------------


def test_remove_stops_the_balancers_points(run: Run) -> None:
    assert run.instruments.remove("cache") is True
    assert run.instruments.remove("cache") is False
    assert set(run.instruments.balancers) == {"api"}
    exported = collect(run.reader)
    assert all(not i.of("cache") for i in exported.values())
    assert exported["loadbalancer.membership.size"].value(balancer="api") == 5.0
    assert run.reads() == {"api": 1, "cache": 0}

    run.instruments.add("cache", run.scenario.balancers["cache"])  # and it may come back
    assert collect(run.reader)["loadbalancer.membership.size"].value(balancer="cache") == 2.0


def test_close_stops_every_point(run: Run) -> None:
    assert collect(run.reader)  # reporting before
    run.instruments.close()
    run.instruments.close()  # again: nothing
    run.reset()
    assert collect(run.reader) == {}
    assert run.reads() == {"api": 0, "cache": 0}
    assert run.instruments.balancers == {}
    assert run.instruments.remove("api") is False
    with pytest.raises(RuntimeError, match="closed"):
        run.instruments.add("api", run.scenario.balancers["api"])
    assert collect(run.reader) == {}


# -- providers -----------------------------------------------------------------------------------


def test_a_no_op_provider_works_and_records_nothing() -> None:
    scenario = metrics_scenario.balancers()
    reporter = Reporter("api-source")
    scenario.balancers["api"].attach_discovery(reporter)
    reporter.reads = 0
    instruments = LoadBalancerInstruments(meter_provider=NoOpMeterProvider())
    instruments.add("api", scenario.balancers["api"])
    assert reporter.reads == 0  # nothing read at creation or add: only collections read
    assert set(instruments.balancers) == {"api"}
    assert instruments.remove("api") is True
    instruments.close()


def test_the_global_provider_is_the_default() -> None:
    # Not set by any test, so it is the API's proxy: the instruments wait for an SDK.
    lb = LoadBalancer()
    reporter = Reporter("src")
    lb.attach_discovery(reporter)
    reporter.reads = 0
    instruments = LoadBalancerInstruments({"default": lb})
    assert instruments.balancers == {"default": lb}
    assert reporter.reads == 0
    instruments.close()


def test_an_sdk_provider_is_an_api_provider() -> None:
    assert isinstance(MeterProvider(), ApiMeterProvider)  # what the type check relies on


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["not a provider", object(), NoOpMeter("a meter")])
def test_meter_provider_must_be_a_meter_provider(provider: object) -> None:
    with pytest.raises(TypeError, match="meter_provider"):
        LoadBalancerInstruments(meter_provider=provider)  # type: ignore[arg-type]


def test_bad_balancers_create_nothing() -> None:
    lb = LoadBalancer()
    cases: list[tuple[object, type[Exception]]] = [
        ([lb], TypeError),
        ("api", TypeError),
        ({1: lb}, TypeError),
        ({"": lb}, ValueError),
        ({"api": "lb"}, TypeError),
        ({"api": lb, "again": lb}, ValueError),
    ]
    for balancers, error in cases:
        provider = RecordingMeterProvider()
        with pytest.raises(error, match="balancers"):
            LoadBalancerInstruments(balancers, meter_provider=provider)  # type: ignore[arg-type]
        assert provider.created == [], balancers


@pytest.mark.parametrize(
    ("name", "lb", "error", "argument"),
    [
        (1, "fresh", TypeError, "name"),
        ("", "fresh", ValueError, "name"),
        ("api", "fresh", ValueError, "name"),  # taken
        ("other", "api's", ValueError, "lb"),  # the same balancer twice
        ("other", "a str", TypeError, "lb"),
        ("other", "None", TypeError, "lb"),
    ],
)
def test_add_refuses_bad_input_and_changes_nothing(
    run: Run, name: object, lb: str, error: type[Exception], argument: str
) -> None:
    value = {
        "fresh": LoadBalancer(),
        "api's": run.scenario.balancers["api"],
        "a str": "a str",
        "None": None,
    }[lb]
    before = collect(run.reader)
    with pytest.raises(error, match=argument):
        run.instruments.add(name, value)  # type: ignore[arg-type]
    assert run.instruments.balancers == run.scenario.balancers
    after = collect(run.reader)
    assert {n: i.points for n, i in after.items()} == {n: i.points for n, i in before.items()}


@pytest.mark.parametrize(("name", "error"), [(None, TypeError), (3, TypeError), ("", ValueError)])
def test_remove_refuses_bad_names(run: Run, name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="name"):
        run.instruments.remove(name)  # type: ignore[arg-type]
    assert run.instruments.balancers == run.scenario.balancers


# -- concurrency ---------------------------------------------------------------------------------


def test_a_balancer_replaced_during_its_reading_reports_the_new_one() -> None:
    """stats() runs outside the lock guarding the balancers: add and remove do not wait for
    it, and a reading of a balancer removed meanwhile is dropped, not reported as the new
    one's."""
    old, new = LoadBalancer(), LoadBalancer()
    old.replace(["o1", "o2", "o3"])
    new.replace(["n1"])
    entered, release = threading.Event(), threading.Event()
    reporter = Reporter("old-source")
    old.attach_discovery(reporter)

    def block() -> None:
        entered.set()
        assert release.wait(timeout=30)

    reporter.on_read = block  # from now on: attach_discovery has read it already
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = LoadBalancerInstruments({"svc": old}, meter_provider=provider)

    def swap() -> None:
        assert instruments.remove("svc") is True
        instruments.add("svc", new)

    with ThreadPoolExecutor(max_workers=2) as pool:
        collecting = pool.submit(collect, reader)
        try:
            assert entered.wait(timeout=30)  # the collection is inside old.stats()
            pool.submit(swap).result(timeout=30)  # TimeoutError if it waited for stats()
        finally:
            release.set()
        exported = collecting.result(timeout=30)
    assert exported["loadbalancer.membership.size"].points == {frozenset({(BALANCER, "svc")}): 1.0}
    assert "loadbalancer.discovery.running" not in exported  # old's reporter: never reported
    assert instruments.balancers == {"svc": new}
    provider.shutdown()


def test_concurrent_adds_removes_and_collections(caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = LoadBalancerInstruments(meter_provider=provider)
    names = [f"lb{i}" for i in range(8)]
    balancers = {name: LoadBalancer() for name in names}
    for name, lb in balancers.items():
        lb.replace([f"{name}-s"])
    start = threading.Barrier(len(names) + 1)

    def churn(name: str) -> None:
        start.wait(timeout=30)
        for _ in range(50):
            instruments.add(name, balancers[name])
            assert instruments.remove(name) is True
        instruments.add(name, balancers[name])

    def collections() -> list[set[str]]:
        start.wait(timeout=30)
        seen = []
        for _ in range(20):
            size = collect(reader).get("loadbalancer.membership.size")
            if size is not None:
                seen.append({dict(k)[BALANCER] for k in size.points})
        return seen

    with (
        caplog.at_level(logging.ERROR, logger="loadbalancer.metrics"),
        ThreadPoolExecutor(max_workers=len(names) + 1) as pool,
    ):
        churning = [pool.submit(churn, name) for name in names]
        seen = pool.submit(collections).result(timeout=60)
        for future in churning:
            future.result(timeout=60)  # re-raises a thread's failure here
    assert not caplog.records
    assert all(s <= set(names) for s in seen)
    assert set(instruments.balancers) == set(names)
    final = collect(reader)["loadbalancer.membership.size"]
    assert final.points == {frozenset({(BALANCER, n)}): 1.0 for n in names}
    provider.shutdown()


# -- imports -------------------------------------------------------------------------------------


def test_importing_the_metrics_package_does_not_import_opentelemetry() -> None:
    code = (
        "import json, sys\n"
        "def otel():\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
        "import loadbalancer, loadbalancer.metrics\n"
        "before = otel()\n"
        "import loadbalancer.metrics.opentelemetry\n"
        "after = otel()\n"
        "print(json.dumps({'before': before, 'api': 'opentelemetry.metrics' in after,\n"
        "                  'sdk': [m for m in after if m.startswith('opentelemetry.sdk')]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"before": [], "api": True, "sdk": []}
