"""A server that fails fast must not attract traffic: examples/scenarios/fast_failures.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadbalancer.cli.simulate import Results, run_scenario
from loadbalancer.cli.simulate.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIO = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "fast_failures.toml"


@pytest.fixture(scope="module")
def results() -> Results:
    return run_scenario(load_scenario(SCENARIO))


def share(results: Results, strategy: str, server: str) -> float:
    result = results.strategy(strategy)
    return result.server(server).requests / result.requests


@pytest.mark.parametrize("strategy", ["peak_ewma", "least_connections", "power_of_two_choices"])
def test_aware_strategies_send_the_fast_failing_server_less_and_fail_less(
    results: Results, strategy: str
) -> None:
    assert share(results, strategy, "api-4") < 0.6 * share(results, "round_robin", "api-4")
    assert results.strategy(strategy).error_rate < 0.6 * results.strategy("round_robin").error_rate


def test_peak_ewma_all_but_stops_sending_to_it(results: Results) -> None:
    assert share(results, "peak_ewma", "api-4") < 0.01
    assert results.strategy("peak_ewma").error_rate < 0.005


def test_failures_take_their_own_latency() -> None:
    base = {
        "duration": 1.0,
        "arrivals": {"rate": 10.0},
        "defaults": {"capacity": 1, "latency": {"mean": 0.5}},
    }
    fast = parse_scenario(
        base | {"servers": [{"name": "a", "failure_rate": 1.0, "failure_latency": 0.001}]}
    )
    outcome = run_scenario(fast).strategies[0]
    assert outcome.error_rate == 1.0
    assert outcome.latency.p99 < 0.01  # failures answered in a millisecond, not 500 ms
    with pytest.raises(ScenarioError, match="failure_latency"):
        parse_scenario(base | {"servers": [{"name": "a", "failure_latency": -1}]})
