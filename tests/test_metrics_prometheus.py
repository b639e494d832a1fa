"""The Prometheus exporter: a real registry scraped with ``generate_latest`` after the scripted
run, parsed back, and checked figure by figure; then registration, bad input, broken balancers.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from loadbalancer import DEFAULT_LATENCY_BUCKETS, LoadBalancer
from loadbalancer.discovery import DiscoveryStatus
from loadbalancer.metrics import METRICS, Metric
from loadbalancer.metrics.prometheus import LoadBalancerCollector

from . import metrics_scenario
from .fakes import FakeClock

Labels = frozenset[tuple[str, str]]

# Prometheus has no up-down counter: a count that goes both ways is a gauge.
PROMETHEUS_TYPE = {
    "counter": "counter",
    "gauge": "gauge",
    "updown": "gauge",
    "histogram": "histogram",
}


def family_name(metric: Metric) -> str:
    """The family name a parser gives ``metric``: a counter's without its ``_total``."""
    return metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name


class Scrape:
    """One scrape of a registry, parsed back from the text exposition format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.text = generate_latest(registry).decode()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}
        self.values: dict[tuple[str, Labels], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.values, f"duplicate series {key}"
                self.values[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The value of the one series ``name`` with exactly ``labels``."""
        return self.values[(name, frozenset(labels.items()))]

    def series(self, name: str, **having: str) -> dict[Labels, float]:
        """Every series named ``name`` whose labels include ``having``, by its labels."""
        return {
            labels: value
            for (sample, labels), value in self.values.items()
            if sample == name and set(having.items()) <= labels
        }

    def balancers(self) -> set[str]:
        """The balancer label values found in any series."""
        return {dict(labels)["balancer"] for _, labels in self.values}


@pytest.fixture
def scenario() -> metrics_scenario.Scenario:
    return metrics_scenario.balancers()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()  # never the global one: tests must not leak into each other


@pytest.fixture
def scraped(scenario: metrics_scenario.Scenario, registry: CollectorRegistry) -> Scrape:
    """The collector attached before the run (so the histograms count it), then one scrape."""
    registry.register(LoadBalancerCollector(scenario.balancers))
    metrics_scenario.run(scenario)
    return Scrape(registry)


def balancer(*servers: str) -> LoadBalancer:
    lb = LoadBalancer(clock=FakeClock(), rebuild_in_background=False)
    lb.replace(servers)
    return lb


# -- the scripted run's figures ---------------------------------------------------------------


def test_the_ejection_is_counted_by_reason_and_active_with_its_time_left(scraped: Scrape) -> None:
    ejections = "loadbalancer_outlier_detection_ejections_total"
    assert scraped.value(ejections, balancer="api", reason="consecutive_failures") == 1
    assert scraped.value(ejections, balancer="api", reason="failure_percentage") == 0
    active = "loadbalancer_outlier_detection_ejections_active"
    assert scraped.value(active, balancer="api") == 1
    assert scraped.value(active, balancer="cache") == 0
    per_server = scraped.series("loadbalancer_upstream_ejections_total", balancer="api")
    assert {dict(k)["server"]: v for k, v in per_server.items()} == {
        "a": 1,
        "b": 0,
        "c": 0,
        "d": 0,
        "e": 0,
    }
    # Only the ejected server has a remaining time, in seconds from now: 30 s less 10 s gone.
    assert scraped.series("loadbalancer_upstream_ejection_remaining_seconds") == {
        frozenset({("balancer", "api"), ("server", "a")}): 20.0
    }


def test_the_retry_is_counted_and_the_budget_refused_nothing(scraped: Scrape) -> None:
    assert scraped.value("loadbalancer_upstream_rq_retry_total", balancer="api") == 1
    assert scraped.value("loadbalancer_upstream_rq_hedge_total", balancer="api") == 0
    assert scraped.value("loadbalancer_upstream_rq_retry_overflow_total", balancer="api") == 0
    assert scraped.value("loadbalancer_failover_rq_total", balancer="api") == 1
    assert scraped.value("loadbalancer_upstream_rq_retry_total", balancer="cache") == 0


def test_the_panic_is_active_and_entered_once(scraped: Scrape) -> None:
    assert scraped.value("loadbalancer_lb_panic_active", balancer="api") == 1
    assert scraped.value("loadbalancer_lb_panic_total", balancer="api") == 1
    assert scraped.value("loadbalancer_lb_panic_active", balancer="cache") == 0
    assert scraped.value("loadbalancer_lb_panic_total", balancer="cache") == 0
    changes = "loadbalancer_health_check_changes_total"
    assert scraped.value(changes, balancer="api", verdict="unhealthy") == 2
    assert scraped.value(changes, balancer="api", verdict="healthy") == 0
    # In panic every server is eligible, the ejected and the unhealthy included.
    eligible = scraped.series("loadbalancer_upstream_eligible", balancer="api")
    assert sorted(eligible.values()) == [1, 1, 1, 1, 1]


def test_the_membership_figures(scraped: Scrape) -> None:
    assert scraped.value("loadbalancer_membership_size", balancer="api") == 5
    assert scraped.value("loadbalancer_membership_healthy", balancer="api") == 2
    assert scraped.value("loadbalancer_membership_eligible", balancer="api") == 5
    assert scraped.value("loadbalancer_membership_change_total", balancer="api") == 2
    assert scraped.value("loadbalancer_membership_change_age_seconds", balancer="api") == 9.5
    healthy = scraped.series("loadbalancer_upstream_healthy", balancer="api")
    assert {dict(k)["server"]: v for k, v in healthy.items()} == {
        "a": 1,
        "b": 0,
        "c": 0,
        "d": 1,
        "e": 1,
    }


def test_requests_and_outcomes_per_server(
    scenario: metrics_scenario.Scenario, scraped: Scrape
) -> None:
    first, retry = scenario.first_attempt, scenario.retry_attempt
    assert first != retry
    assert {first, retry} <= {"b", "c", "d"}  # a was ejected, e not yet registered
    expected = {server: {"success": 0.0, "failure": 0.0, "none": 0.0} for server in "abcde"}
    expected["a"]["failure"] = 5
    expected[first]["failure"] += 1
    expected[retry]["success"] += 1
    completed = {
        (dict(k)["server"], dict(k)["outcome"]): v
        for k, v in scraped.series(
            "loadbalancer_upstream_rq_completed_total", balancer="api"
        ).items()
    }
    assert completed == {
        (server, outcome): n for server, counts in expected.items() for outcome, n in counts.items()
    }
    started = {"a": 5.0, "b": 0.0, "c": 0.0, "d": 1.0, "e": 0.0}  # d: the lease still held
    started[first] += 1
    started[retry] += 1
    requests = scraped.series("loadbalancer_upstream_rq_total", balancer="api")
    assert {dict(k)["server"]: v for k, v in requests.items()} == started
    active = scraped.series("loadbalancer_upstream_rq_active", balancer="api")
    assert {dict(k)["server"]: v for k, v in active.items()} == {
        "a": 0,
        "b": 0,
        "c": 0,
        "d": 1,
        "e": 0,
    }


def test_the_latency_histogram_of_the_ejected_server(scraped: Scrape) -> None:
    buckets = {
        dict(k)["le"]: v
        for k, v in scraped.series(
            "loadbalancer_upstream_rq_time_seconds_bucket", balancer="api", server="a"
        ).items()
    }
    # 5 failures of 0.25 s each: all in the 0.25 bucket (le is inclusive), none below.
    assert buckets["0.1"] == 0
    assert buckets["0.25"] == 5
    assert buckets["10.0"] == 5
    assert buckets["+Inf"] == 5
    # le spelled as prometheus_client's own histograms spell it, +Inf last.
    assert list(buckets) == [
        *("0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0"),
        *("2.5", "5.0", "7.5", "10.0", "+Inf"),
    ]
    time = "loadbalancer_upstream_rq_time_seconds"
    assert scraped.value(f"{time}_count", balancer="api", server="a") == 5
    assert scraped.value(f"{time}_sum", balancer="api", server="a") == 1.25


def test_the_latency_histogram_of_the_cache_server(
    scenario: metrics_scenario.Scenario, scraped: Scrape
) -> None:
    server = scenario.cache_server
    buckets = {
        dict(k)["le"]: v
        for k, v in scraped.series(
            "loadbalancer_upstream_rq_time_seconds_bucket", balancer="cache", server=server
        ).items()
    }
    assert buckets["0.1"] == 0
    assert buckets["0.25"] == 3  # 3 successes of 0.125 s
    assert buckets["+Inf"] == 3
    time = "loadbalancer_upstream_rq_time_seconds"
    assert scraped.value(f"{time}_sum", balancer="cache", server=server) == 0.375
    (other,) = set("xy") - {server}
    assert scraped.value(f"{time}_count", balancer="cache", server=other) == 0
    assert (
        scraped.value("loadbalancer_upstream_latency_ewma_seconds", balancer="cache", server=server)
        == 0.125
    )
    # No sample yet, no moving average: the other server has no EWMA series at all.
    assert not scraped.series("loadbalancer_upstream_latency_ewma_seconds", server=other)


def test_two_balancers_export_side_by_side_without_clashing(
    scenario: metrics_scenario.Scenario, scraped: Scrape
) -> None:
    assert scraped.balancers() == {"api", "cache"}
    servers: dict[str, set[str]] = {"api": set(), "cache": set()}
    for labels in scraped.series("loadbalancer_upstream_rq_total"):
        servers[dict(labels)["balancer"]].add(dict(labels)["server"])
    assert servers == {"api": set("abcde"), "cache": {"x", "y"}}
    assert scraped.value("loadbalancer_membership_size", balancer="cache") == 2
    assert scraped.value("loadbalancer_membership_healthy", balancer="cache") == 2
    assert scraped.value("loadbalancer_membership_change_total", balancer="cache") == 1
    completed = "loadbalancer_upstream_rq_completed_total"
    cache_server = scenario.cache_server
    assert scraped.value(completed, balancer="cache", server=cache_server, outcome="success") == 3
    # Every pool-wide family has exactly one series per balancer (Scrape rejects duplicates).
    for metric in METRICS:
        if not metric.labels and metric.name != "loadbalancer_retry_budget_balance":
            assert set(scraped.series(metric.name)) == {
                frozenset({("balancer", "api")}),
                frozenset({("balancer", "cache")}),
            }, metric.name


def test_every_metric_is_exposed_in_catalog_order_even_without_series(scraped: Scrape) -> None:
    exposed = [
        f"{f.name}_total" if f.type == "counter" else f.name for f in scraped.families.values()
    ]
    assert exposed == [m.name for m in METRICS]
    for metric in METRICS:
        family = scraped.families[family_name(metric)]
        assert family.type == PROMETHEUS_TYPE[metric.kind], metric.name
        assert family.documentation == metric.help
    # No discovery runner here: those families are there, empty, as describe() announced.
    assert scraped.families["loadbalancer_discovery_running"].samples == []


def test_openmetrics_scrapes_carry_the_unit_of_the_seconds_metrics(
    scenario: metrics_scenario.Scenario, registry: CollectorRegistry
) -> None:
    registry.register(LoadBalancerCollector(scenario.balancers))
    metrics_scenario.run(scenario)
    text = openmetrics.generate_latest(registry).decode()  # type: ignore[no-untyped-call]
    parsed = openmetrics_parser.text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    families = {f.name: f for f in parsed}
    for metric in METRICS:
        family = families[family_name(metric)]
        assert family.unit == ("seconds" if metric.unit == "s" else ""), metric.name
    assert families["loadbalancer_upstream_rq_time_seconds"].unit == "seconds"


# -- describe and registration ------------------------------------------------------------------


def test_describe_names_the_families_collect_yields() -> None:
    collector = LoadBalancerCollector({"api": balancer("a")})
    described = [(f.name, f.type, f.documentation, f.unit) for f in collector.describe()]
    collected = [(f.name, f.type, f.documentation, f.unit) for f in collector.collect()]
    assert described == collected
    assert [f.samples for f in collector.describe()] == [[] for _ in METRICS]
    names = [f"{n}_total" if t == "counter" else n for n, t, _, _ in described]
    assert names == [m.name for m in METRICS]


def test_it_is_a_prometheus_collector() -> None:
    assert Collector in LoadBalancerCollector.__mro__


def test_registering_uses_describe_not_a_scrape(registry: CollectorRegistry) -> None:
    collector = LoadBalancerCollector({"api": balancer("a")})

    def no_scrape() -> Iterator[object]:
        raise AssertionError("register() scraped the balancers")

    collector.collect = no_scrape  # type: ignore[method-assign,assignment]
    registry.register(collector)
    # The names describe() gave are held: another collector of the same metrics clashes.
    with pytest.raises(ValueError, match="loadbalancer_membership_size"):
        registry.register(LoadBalancerCollector())


def test_registering_twice_on_one_registry_is_refused(registry: CollectorRegistry) -> None:
    collector = LoadBalancerCollector({"api": balancer("a")})
    registry.register(collector)
    with pytest.raises(ValueError, match="loadbalancer_"):
        registry.register(collector)
    with pytest.raises(ValueError, match="loadbalancer_"):
        registry.register(LoadBalancerCollector({"other": balancer("b")}))


def test_two_collectors_on_two_registries_export_only_their_own() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    first.register(LoadBalancerCollector({"one": balancer("a", "b")}))
    second.register(LoadBalancerCollector({"two": balancer("x", "y", "z")}))
    one, two = Scrape(first), Scrape(second)
    assert one.balancers() == {"one"}
    assert two.balancers() == {"two"}
    assert one.value("loadbalancer_membership_size", balancer="one") == 2
    assert two.value("loadbalancer_membership_size", balancer="two") == 3


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_exporter_registers_nothing_on_the_global_registry() -> None:
    code = (
        "import json, sys\n"
        "import loadbalancer, loadbalancer.metrics\n"
        "core = 'prometheus_client' in sys.modules\n"
        "import loadbalancer.metrics.prometheus\n"
        "from prometheus_client import REGISTRY, generate_latest\n"
        "names = [f.name for f in REGISTRY.collect()]\n"
        "text = generate_latest(REGISTRY).decode()\n"
        "print(json.dumps({'core': core, 'names': names, 'text': 'loadbalancer' in text}))\n"
    )
    result = json.loads(run_python(code))
    assert result["core"] is False  # loadbalancer and loadbalancer.metrics leave it unloaded
    assert result["names"]  # the default process/platform/gc collectors: the scrape worked
    assert not [n for n in result["names"] if n.startswith("loadbalancer")]
    assert result["text"] is False


# -- latency buckets --------------------------------------------------------------------------


def test_adding_enables_the_latency_histogram_in_the_default_buckets() -> None:
    lb = balancer("a")
    LoadBalancerCollector({"api": lb})
    assert lb.latency_buckets == tuple(float(b) for b in DEFAULT_LATENCY_BUCKETS)


def test_custom_buckets_even_from_an_iterator_serve_every_balancer(
    registry: CollectorRegistry,
) -> None:
    one, two = balancer("a"), balancer("b")
    collector = LoadBalancerCollector(latency_buckets=iter([0.5, 2.0]))
    collector.add("one", one)
    collector.add("two", two)
    assert one.latency_buckets == two.latency_buckets == (0.5, 2.0)
    registry.register(collector)
    scrape = Scrape(registry)
    les = {
        dict(k)["le"]
        for k in scrape.series("loadbalancer_upstream_rq_time_seconds_bucket", balancer="two")
    }
    assert les == {"0.5", "2.0", "+Inf"}


def test_without_buckets_a_balancer_is_left_alone(registry: CollectorRegistry) -> None:
    plain, counted = balancer("a"), balancer("b")
    counted.enable_latency_histogram([0.1, 1])
    registry.register(
        LoadBalancerCollector({"plain": plain, "counted": counted}, latency_buckets=None)
    )
    assert plain.latency_buckets is None
    for lb in (plain, counted):
        with lb.lease():
            pass
    scrape = Scrape(registry)
    bucket = "loadbalancer_upstream_rq_time_seconds_bucket"
    assert not scrape.series(bucket, balancer="plain")
    assert {dict(k)["le"]: v for k, v in scrape.series(bucket, balancer="counted").items()} == {
        "0.1": 1,
        "1.0": 1,
        "+Inf": 1,
    }
    # The EWMA gauge needs no histogram: both balancers have it.
    ewma = "loadbalancer_upstream_latency_ewma_seconds"
    assert scrape.value(ewma, balancer="plain", server="a") == 0
    assert scrape.value(ewma, balancer="counted", server="b") == 0
    assert "loadbalancer_upstream_rq_time_seconds" in scrape.families


def test_a_balancer_counting_other_buckets_is_refused_and_nothing_changes() -> None:
    lb = balancer("a")
    lb.enable_latency_histogram([0.1, 1])
    collector = LoadBalancerCollector({"kept": balancer("k")})
    with pytest.raises(ValueError, match="buckets"):
        collector.add("api", lb)
    assert lb.latency_buckets == (0.1, 1.0)
    assert balancers_of(collector) == {"kept"}
    collector.add("api", balancer("b"))  # the name was not taken by the failed add
    assert balancers_of(collector) == {"kept", "api"}


@pytest.mark.parametrize(
    ("buckets", "error"),
    [
        ([], ValueError),
        ([1, 0.5], ValueError),
        ([0, 1], ValueError),
        ("0.1", TypeError),
        (3, TypeError),
    ],
)
def test_bad_latency_buckets_are_refused_by_name(buckets: object, error: type[Exception]) -> None:
    lb = balancer("a")
    with pytest.raises(error, match="latency_buckets"):
        LoadBalancerCollector({"api": lb}, latency_buckets=buckets)  # type: ignore[arg-type]
    assert lb.latency_buckets is None


# -- bad input ----------------------------------------------------------------------------------


def balancers_of(collector: LoadBalancerCollector) -> set[str]:
    """The balancer names a collector exports, from its families' samples."""
    return {
        sample.labels["balancer"] for family in collector.collect() for sample in family.samples
    }


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [(None, TypeError, "name"), (3, TypeError, "name"), ("", ValueError, "name")],
)
def test_a_bad_name_is_refused(name: object, error: type[Exception], match: str) -> None:
    collector = LoadBalancerCollector({"kept": balancer("k")})
    lb = balancer("a")
    with pytest.raises(error, match=match):
        collector.add(name, lb)  # type: ignore[arg-type]
    assert balancers_of(collector) == {"kept"}
    assert lb.latency_buckets is None  # refused before the balancer was touched


def test_a_name_taken_twice_is_refused() -> None:
    first = balancer("a")
    collector = LoadBalancerCollector({"api": first})
    with pytest.raises(ValueError, match="'api'"):
        collector.add("api", balancer("b"))
    scrape = {
        s.labels["server"] for f in collector.collect() for s in f.samples if "server" in s.labels
    }
    assert scrape == {"a"}  # still the first balancer


def test_one_balancer_under_two_names_is_refused() -> None:
    lb = balancer("a")
    collector = LoadBalancerCollector({"api": lb})
    with pytest.raises(ValueError, match="'api'"):
        collector.add("again", lb)
    assert balancers_of(collector) == {"api"}


@pytest.mark.parametrize("lb", [None, "lb", {"a": 1}])
def test_something_else_than_a_balancer_is_refused(lb: object) -> None:
    collector = LoadBalancerCollector({"kept": balancer("k")})
    with pytest.raises(TypeError, match="lb must be a LoadBalancer"):
        collector.add("api", lb)  # type: ignore[arg-type]
    assert balancers_of(collector) == {"kept"}


@pytest.mark.parametrize("balancers", [[("api", None)], "api", 3])
def test_balancers_must_be_a_mapping(balancers: object) -> None:
    with pytest.raises(TypeError, match="balancers"):
        LoadBalancerCollector(balancers)  # type: ignore[arg-type]


def test_a_bad_entry_in_balancers_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="lb must be a LoadBalancer"):
        LoadBalancerCollector({"api": "not a balancer"})  # type: ignore[dict-item]


def test_removing_an_unknown_name_says_so_and_changes_nothing() -> None:
    collector = LoadBalancerCollector({"api": balancer("a")})
    assert collector.remove("cache") is False  # as LoadBalancer.unregister answers
    assert balancers_of(collector) == {"api"}
    assert collector.remove("api") is True
    assert balancers_of(collector) == set()


# -- removal, broken balancers, discovery -------------------------------------------------------


def test_removal_stops_its_series(
    scenario: metrics_scenario.Scenario, registry: CollectorRegistry
) -> None:
    collector = LoadBalancerCollector(scenario.balancers)
    registry.register(collector)
    metrics_scenario.run(scenario)
    assert collector.remove("cache") is True
    scrape = Scrape(registry)
    assert scrape.balancers() == {"api"}
    assert scrape.value("loadbalancer_membership_size", balancer="api") == 5
    assert not scrape.series("loadbalancer_membership_size", balancer="cache")
    # The name is free again, for the same balancer or another.
    collector.add("cache", scenario.balancers["cache"])
    assert Scrape(registry).value("loadbalancer_membership_size", balancer="cache") == 2


class Reporter:
    """A discovery runner double whose status can be broken, and which counts its readings."""

    def __init__(self) -> None:
        self.current: object = DiscoveryStatus(
            source="dns:api.internal",
            running=True,
            servers=2,
            updates=3,
            refused=1,
            failures=0,
            last_update_age=4.5,
            last_error=None,
        )
        self.reads = 0

    @property
    def status(self) -> DiscoveryStatus:
        self.reads += 1
        return self.current  # type: ignore[return-value]  # broken on purpose by some tests


def test_discovery_runners_are_exported_by_source(registry: CollectorRegistry) -> None:
    lb, reporter = balancer("a", "b"), Reporter()
    lb.attach_discovery(reporter)
    registry.register(LoadBalancerCollector({"api": lb}))
    scrape = Scrape(registry)
    source = "dns:api.internal"
    assert scrape.value("loadbalancer_discovery_running", balancer="api", source=source) == 1
    assert scrape.value("loadbalancer_discovery_updates_total", balancer="api", source=source) == 3
    assert scrape.value("loadbalancer_discovery_refused_total", balancer="api", source=source) == 1
    assert scrape.value("loadbalancer_discovery_failures", balancer="api", source=source) == 0
    age = "loadbalancer_discovery_last_update_age_seconds"
    assert scrape.value(age, balancer="api", source=source) == 4.5


def test_each_scrape_reads_each_balancer_once(registry: CollectorRegistry) -> None:
    lb, reporter = balancer("a"), Reporter()
    lb.attach_discovery(reporter)  # stats() reads each attached runner's status once
    registry.register(LoadBalancerCollector({"api": lb}))
    before = reporter.reads
    Scrape(registry)
    assert reporter.reads == before + 1
    Scrape(registry)
    assert reporter.reads == before + 2


def test_a_balancer_whose_stats_fail_is_left_out_and_logged(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, healthy = balancer("a"), balancer("x", "y")
    registry.register(LoadBalancerCollector({"broken": broken, "healthy": healthy}))
    assert Scrape(registry).balancers() == {"broken", "healthy"}
    metrics_scenario.break_stats(monkeypatch, broken)
    with pytest.raises(RuntimeError):
        broken.stats()
    with caplog.at_level(logging.ERROR, logger="loadbalancer.metrics"):
        scrape = Scrape(registry)
    assert scrape.balancers() == {"healthy"}  # left out whole, not from some families only
    assert scrape.value("loadbalancer_membership_size", balancer="healthy") == 2
    assert [m.name for m in METRICS] == [
        f"{f.name}_total" if f.type == "counter" else f.name for f in scrape.families.values()
    ]
    (record,) = caplog.records
    assert record.name == "loadbalancer.metrics"
    assert "'broken'" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    monkeypatch.undo()  # mended: back in the next scrape
    assert Scrape(registry).balancers() == {"broken", "healthy"}


def test_adding_and_removing_while_scraping(registry: CollectorRegistry) -> None:
    collector = LoadBalancerCollector(latency_buckets=None)
    registry.register(collector)
    pools = [[balancer(f"s{t}") for _ in range(25)] for t in range(4)]
    start = threading.Barrier(5)
    errors: list[BaseException] = []

    def churn(t: int) -> None:
        try:
            start.wait()
            for i, lb in enumerate(pools[t]):
                collector.add(f"t{t}-{i}", lb)
                if i % 2:
                    collector.remove(f"t{t}-{i}")
        except BaseException as error:  # reported below, with the thread's own traceback lost
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    while any(thread.is_alive() for thread in threads):
        Scrape(registry)  # must never fail, whatever the collector holds at that moment
    for thread in threads:
        thread.join()
    assert errors == []
    assert Scrape(registry).balancers() == {f"t{t}-{i}" for t in range(4) for i in range(0, 25, 2)}
