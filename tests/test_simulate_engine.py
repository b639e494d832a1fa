"""The simulation: what the default scenario must show, determinism, and the queueing model."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import OutlierDetection
from loadbalancer.cli.simulate import (
    Results,
    Scenario,
    StrategyResult,
    default_scenario,
    load_scenario,
    run_scenario,
)
from loadbalancer.cli.simulate.registry import STRATEGIES
from loadbalancer.cli.simulate.report import to_json
from loadbalancer.cli.simulate.scenario import (
    Arrivals,
    Behaviour,
    Change,
    Keys,
    Latency,
    ServerSpec,
    StrategySpec,
)
from loadbalancer.cli.simulate.tally import window_width

HASHING = ["ring_hash", "maglev"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scenarios"


@pytest.fixture(scope="module")
def default_results() -> Results:
    """The real default scenario, as `loadbalancer simulate` runs it (about two seconds)."""
    return run_scenario(default_scenario())


def failing_server(scenario: Scenario) -> ServerSpec:
    (server,) = [
        s for s in scenario.servers if any(c.behaviour.failure_rate > 0 for c in s.changes)
    ]
    return server


def specs(*names: str) -> tuple[StrategySpec, ...]:
    return tuple(StrategySpec(name, name) for name in names)


def one_server(
    latency: Latency, capacity: int, rate: float, duration: float, **changes: Any
) -> Scenario:
    scenario = Scenario(
        name="one",
        description="",
        duration=duration,
        arrivals=Arrivals(rate),
        servers=(ServerSpec("only", 1.0, Behaviour(latency, capacity)),),
        strategies=specs("round_robin"),
    )
    return dataclasses.replace(scenario, **changes)


# -- what the default scenario shows ----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["power_of_two_choices", "peak_ewma", "least_connections"])
def test_load_aware_strategies_have_a_lower_p99_than_round_robin(
    default_results: Results, strategy: str
) -> None:
    round_robin = default_results.strategy("round_robin").latency.p99
    assert default_results.strategy(strategy).latency.p99 < 0.5 * round_robin


def test_outlier_detection_ejects_the_failing_server(default_results: Results) -> None:
    scenario = default_scenario()
    failing = failing_server(scenario)
    index = default_results.servers.index(failing.name)
    failing_from = failing.changes[0].at
    for result in default_results.strategies:
        assert len(result.ejections) > 0, result.label
        ejected = [e for e in result.ejections if e.server == failing.name]
        assert ejected, result.label
        assert ejected[0].at >= failing_from  # not before it starts failing
        assert result.server(failing.name).ejections == len(ejected)
        before, during = result.phases[0], result.phases[1]
        assert before.end == during.start == failing_from
        assert during.shares[index] < 0.5 * before.shares[index], result.label


@pytest.mark.parametrize("strategy", HASHING)
def test_hashing_keeps_keys_on_their_servers(default_results: Results, strategy: str) -> None:
    sticky = default_results.strategy(strategy).stickiness
    rotating = default_results.strategy("round_robin").stickiness
    assert sticky is not None
    assert rotating is not None
    assert sticky > 0.85  # below 1.0 only because ejections move keys for a while
    assert rotating < 0.4


def test_hashing_is_perfectly_sticky_while_membership_is_stable() -> None:
    scenario = default_scenario().replace(
        duration=4.0, outlier_detection=None, strategies=specs(*HASHING, "random")
    )
    results = run_scenario(scenario)
    for name in HASHING:
        assert results.strategy(name).stickiness == 1.0
    random_stickiness = results.strategy("random").stickiness
    assert random_stickiness is not None
    assert random_stickiness < 0.6


def test_weights_matter_to_weighted_round_robin(default_results: Results) -> None:
    heavy = max(default_scenario().servers, key=lambda s: s.weight)
    weighted = default_results.strategy("weighted_round_robin").server(heavy.name).share
    plain = default_results.strategy("round_robin").server(heavy.name).share
    assert weighted > 1.5 * plain


def test_results_add_up(default_results: Results) -> None:
    for result in default_results.strategies:
        served = sum(s.requests for s in result.servers)
        assert served == result.requests - result.unavailable
        assert sum(p.requests for p in result.phases) == served
        assert math.isclose(sum(s.share for s in result.servers), 1.0)
        assert result.failures == sum(s.failures for s in result.servers) + result.unavailable
        latency = result.latency
        assert 0 < latency.p50 <= latency.p90 <= latency.p99 <= latency.max
        assert result.peak_in_flight == max(s.peak_in_flight for s in result.servers)
        assert result.strategy.endswith(")")
        assert " at 0x" not in result.strategy  # no object addresses: the same in every run
        assert_windows_add_up(result, default_results.duration)


def assert_windows_add_up(result: StrategyResult, duration: float) -> None:
    """The windows tile the run and count each request once, on the server it went to."""
    windows = result.windows
    assert windows[0].start == 0.0
    assert windows[-1].end == duration
    assert all(math.isclose(a.end, b.start) for a, b in itertools.pairwise(windows))
    sent = [sum(column) for column in zip(*(w.sent for w in windows), strict=True)]
    assert sent == [s.requests for s in result.servers]
    for window in windows:
        if window.requests:
            assert window.p50 is not None
            assert window.p99 is not None
            assert 0 < window.p50 <= window.p99 <= result.latency.max
            assert math.isclose(sum(window.shares), 1.0)
        else:
            assert window.p50 is window.p99 is None


@pytest.mark.parametrize(
    ("duration", "width"),
    [(30.0, 1.0), (40.0, 1.0), (41.0, 2.0), (20.0, 0.5), (2.0, 0.05), (7.3, 0.2), (600.0, 20.0)],
)
def test_windows_are_round_and_at_most_forty(duration: float, width: float) -> None:
    assert window_width(duration) == pytest.approx(width)


@given(st.floats(1e-3, 1e6))
def test_window_width_is_the_smallest_round_width_within_forty_windows(duration: float) -> None:
    width = window_width(duration)
    assert duration / width <= 40 * (1 + 1e-6)
    mantissa = width / 10 ** math.floor(math.log10(width) + 1e-9)
    assert round(mantissa, 6) in (1.0, 2.0, 5.0)
    smaller = {1.0: 0.5, 2.0: 1.0, 5.0: 2.0}[round(mantissa, 6)] * width / mantissa
    assert duration / smaller > 40 * (1 - 1e-6)


def test_windows_show_who_moves_off_a_server_that_slows_down() -> None:
    # slow_down.toml asks how fast each strategy reacts when db-3 slows down at 10 s: the
    # windows answer. Peak EWMA sends db-3 almost nothing from the first second of it on;
    # round-robin keeps sending it its sixth until outlier detection ejects it.
    scenario = load_scenario(EXAMPLES / "slow_down.toml").replace(duration=16.0)
    results = run_scenario(scenario.replace(strategies=specs("round_robin", "peak_ewma")))
    db3 = results.servers.index("db-3")

    def share(label: str, start: float, end: float) -> float:
        windows = [w for w in results.strategy(label).windows if start <= w.start < end]
        return sum(w.sent[db3] for w in windows) / sum(w.requests for w in windows)

    assert 0.13 < share("peak_ewma", 0.0, 10.0) < 0.2
    assert share("peak_ewma", 11.0, 16.0) < 0.03
    assert share("round_robin", 11.0, 16.0) == pytest.approx(1 / 6, abs=0.01)
    slow = [w.p99 for w in results.strategy("round_robin").windows if w.start >= 11.0]
    fast = [w.p99 for w in results.strategy("peak_ewma").windows if w.start >= 11.0]
    assert min(s for s in slow if s is not None) > 5 * max(f for f in fast if f is not None)


# -- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_results_and_another_seed_does_not() -> None:
    scenario = default_scenario().replace(duration=4.0)
    first = to_json(scenario, run_scenario(scenario, seed=11))
    again = to_json(scenario, run_scenario(scenario, seed=11))
    other = to_json(scenario, run_scenario(scenario, seed=12))
    assert first == again
    assert first["strategies"] != other["strategies"]


def test_seed_defaults_to_the_scenarios() -> None:
    scenario = default_scenario().replace(duration=2.0, seed=5, strategies=specs("random"))
    assert run_scenario(scenario) == run_scenario(scenario, seed=5)
    assert run_scenario(scenario).seed == 5


def test_a_strategys_result_does_not_depend_on_the_others() -> None:
    scenario = default_scenario().replace(duration=5.0)
    together = run_scenario(scenario, seed=3)
    alone = run_scenario(scenario.replace(strategies=specs("peak_ewma")), seed=3)
    assert alone.strategy("peak_ewma") == together.strategy("peak_ewma")


def test_progress_is_reported_up_to_the_end() -> None:
    reports: list[tuple[str, float]] = []
    scenario = default_scenario().replace(duration=10.0, strategies=specs("random", "peak_ewma"))
    run_scenario(scenario, progress=lambda label, done: reports.append((label, done)))
    fractions = [done for _, done in reports]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert {label for label, _ in reports} == {"random", "peak_ewma"}


# -- the model --------------------------------------------------------------------------------


def test_queueing_matches_the_m_d_1_formula() -> None:
    # One server, one request at a time, 0.1 s each, five arrivals a second: rho = 0.5 and
    # Pollaczek-Khinchine gives a mean time in system of S + rho * S / (2 * (1 - rho)).
    scenario = one_server(Latency(0.1, "constant"), 1, 5.0, 2000.0)
    mean = run_scenario(scenario).strategies[0].latency.mean
    assert mean == pytest.approx(0.1 + 0.5 * 0.1 / (2 * 0.5), rel=0.05)


@pytest.mark.parametrize("distribution", ["lognormal", "exponential", "constant"])
def test_latency_distributions_have_the_configured_mean(distribution: str) -> None:
    latency = Latency(0.02, distribution, 0.5)  # type: ignore[arg-type]
    scenario = one_server(latency, 10_000, 500.0, 20.0)  # no queueing: capacity to spare
    result = run_scenario(scenario).strategies[0]
    assert result.latency.mean == pytest.approx(0.02, rel=0.04)
    if distribution == "constant":
        assert result.latency.p50 == pytest.approx(0.02)
        assert result.latency.max == pytest.approx(0.02)


def test_timeouts_fail_requests_at_the_timeout() -> None:
    # Twice the load the server can take: the queue grows until clients give up.
    scenario = one_server(Latency(0.1, "constant"), 1, 20.0, 20.0, timeout=0.5)
    result = run_scenario(scenario).strategies[0]
    assert result.timeouts > 0
    assert result.failures == result.timeouts
    assert result.latency.max == 0.5


def test_no_timeout_no_keys_no_health() -> None:
    scenario = one_server(Latency(0.01), 2, 50.0, 5.0)
    result = run_scenario(scenario).strategies[0]
    assert result.timeouts == result.failures == result.unavailable == 0
    assert result.stickiness is None
    assert result.ejections == ()


def test_changes_apply_at_their_time() -> None:
    slow = Behaviour(Latency(0.5, "constant"), 100)
    scenario = one_server(Latency(0.01, "constant"), 100, 50.0, 10.0)
    server = dataclasses.replace(scenario.servers[0], changes=(Change(5.0, slow),))
    result = run_scenario(scenario.replace(servers=(server,))).strategies[0]
    assert [(p.start, p.end) for p in result.phases] == [(0.0, 5.0), (5.0, 10.0)]
    # Half the requests before the change, half after; capacity to spare, so no queueing.
    assert result.latency.mean == pytest.approx((0.01 + 0.5) / 2, rel=0.05)
    assert result.latency.max == pytest.approx(0.5)


def test_requests_fail_as_unavailable_when_every_server_is_ejected() -> None:
    failing = Behaviour(Latency(0.01), 10, failure_rate=1.0)
    scenario = one_server(
        Latency(0.01),
        10,
        100.0,
        5.0,
        outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=100),
        panic_threshold=0.0,
    )
    scenario = scenario.replace(
        servers=(dataclasses.replace(scenario.servers[0], behaviour=failing),)
    )
    result = run_scenario(scenario).strategies[0]
    assert result.unavailable > 0
    assert result.failures == result.requests
    assert result.ejections


# A small Maglev table: ejections rebuild it, and the default 65537 entries take a while.
options: dict[str, tuple[tuple[str, object], ...]] = {"maglev": (("table_size", 1009),)}


@settings(max_examples=15, deadline=None)
@given(
    capacities=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    rate=st.floats(5.0, 200.0),
    failure_rate=st.floats(0.0, 1.0),
    timeout=st.one_of(st.none(), st.floats(0.01, 1.0)),
    population=st.one_of(st.none(), st.integers(1, 50)),
    strategy=st.sampled_from(sorted(STRATEGIES)),
    seed=st.integers(0, 2**32),
)
def test_any_small_scenario_runs_deterministically_and_adds_up(
    capacities: list[int],
    rate: float,
    failure_rate: float,
    timeout: float | None,
    population: int | None,
    strategy: str,
    seed: int,
) -> None:
    servers = tuple(
        ServerSpec(f"s{i}", 1.0 + i, Behaviour(Latency(0.02), capacity, failure_rate))
        for i, capacity in enumerate(capacities)
    )
    scenario = Scenario(
        name="random",
        description="",
        duration=2.0,
        arrivals=Arrivals(rate),
        servers=servers,
        strategies=(StrategySpec(strategy, strategy, options.get(strategy, ())),),
        keys=None if population is None else Keys(population, "zipf", 1.0),
        timeout=timeout,
        outlier_detection=OutlierDetection(consecutive_failures=3, base_ejection_time=0.5),
    )
    result = run_scenario(scenario, seed=seed)
    assert result == run_scenario(scenario, seed=seed)
    (outcome,) = result.strategies
    assert sum(s.requests for s in outcome.servers) + outcome.unavailable == outcome.requests
    assert outcome.failures <= outcome.requests
    assert_windows_add_up(outcome, scenario.duration)
    if population is not None and outcome.requests > outcome.unavailable:
        assert outcome.stickiness is not None
        assert 0 < outcome.stickiness <= 1
