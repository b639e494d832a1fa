"""The simulator against closed-form queueing results: M/M/1, M/M/c and the supermarket model.

Each model runs long enough that its mean response time lands within a few percent of the
formula (measured over seeds: M/M/1 within 1.5%, M/M/c within 2%), and each band is tight
enough that a service time 5% too long or too short, or a LIFO queue, falls outside it: the
tests below show that too, so a broken queue or a mis-scaled service time cannot pass.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from typing import Any

import pytest

from loadbalancer.cli.simulate import Scenario, engine, run_scenario
from loadbalancer.cli.simulate.results import LatencySummary
from loadbalancer.cli.simulate.scenario import (
    Arrivals,
    Behaviour,
    Latency,
    ServerSpec,
    StrategySpec,
)

SERVICE = 0.1  # seconds, exponential: mu = 10 requests/s per server slot


def erlang_c(servers: int, offered: float) -> float:
    """The probability that an arrival waits in an M/M/c queue (``offered`` = lambda / mu)."""
    waiting = offered**servers / math.factorial(servers) * servers / (servers - offered)
    idle = sum(offered**k / math.factorial(k) for k in range(servers))
    return waiting / (idle + waiting)


def supermarket_mean(load: float, choices: int = 2) -> float:
    """Mean time in system, in service times, of the supermarket model as servers -> infinity.

    Each arrival joins the shortest of ``choices`` queues drawn at random: the share of queues
    holding at least i requests is load ** ((d**i - 1) / (d - 1)) (Mitzenmacher), and
    Little's law turns their sum into a time.
    """
    shares = (float(load ** ((choices**i - 1) / (choices - 1))) for i in range(1, 40))
    return sum(shares) / load


def scenario(
    servers: int, capacity: int, rate: float, duration: float, strategy: str, mean: float
) -> Scenario:
    latency = Latency(mean, "exponential")
    return Scenario(
        name="queue",
        description="",
        duration=duration,
        arrivals=Arrivals(rate),
        servers=tuple(
            ServerSpec(f"s{i}", 1.0, Behaviour(latency, capacity)) for i in range(servers)
        ),
        strategies=(StrategySpec(strategy, strategy),),
    )


# name: (servers, capacity, arrival rate, duration, strategy), theory, (low, high) band.
MODELS: dict[str, tuple[tuple[int, int, float, float, str], float, tuple[float, float]]] = {
    # One server, one at a time, rho = 0.5: E[T] = 1 / (mu - lambda).
    "M/M/1": ((1, 1, 5.0, 20_000.0, "round_robin"), 1 / (10 - 5), (0.97, 1.03)),
    # One server taking four at once from one FIFO queue, rho = 0.75: Erlang C.
    "M/M/4": (
        (1, 4, 30.0, 5_000.0, "round_robin"),
        SERVICE + erlang_c(4, 3.0) / (4 * 10 - 30),
        (0.97, 1.03),
    ),
    # 100 servers at load 0.9, each request to the less loaded of two: the limit for infinitely
    # many servers is 2.61 service times; 100 come 1-3% above it.
    "supermarket, d = 2": (
        (100, 1, 100 * 0.9 / SERVICE, 200.0, "power_of_two_choices"),
        SERVICE * supermarket_mean(0.9),
        (0.99, 1.05),
    ),
}


@functools.cache
def measured(model: str, scale: float = 1.0) -> LatencySummary:
    """The model's response times, with every service time ``scale`` times the right one."""
    (servers, capacity, rate, duration, strategy), _, _ = MODELS[model]
    built = scenario(servers, capacity, rate, duration, strategy, SERVICE * scale)
    return run_scenario(built, seed=1).strategies[0].latency


def within(value: float, theory: float, band: tuple[float, float]) -> bool:
    return band[0] * theory <= value <= band[1] * theory


def test_the_formulas() -> None:
    # Erlang C with one server is M/M/1's rho, and with two is 2 rho**2 / (1 + rho); the
    # supermarket's terms at load 0.9 are 0.9 ** (2**i - 2): 1 + 0.81 + 0.531 + 0.229 + ...
    assert erlang_c(1, 0.5) == pytest.approx(0.5)
    assert erlang_c(2, 1.0) == pytest.approx(2 * 0.5**2 / 1.5)
    assert supermarket_mean(0.9) == pytest.approx(1 + 0.81 + 0.9**6 + 0.9**14 + 0.9**30, rel=1e-3)


@pytest.mark.parametrize("model", MODELS)
def test_the_mean_response_time_matches_the_formula(model: str) -> None:
    _, theory, band = MODELS[model]
    mean = measured(model).mean
    assert within(mean, theory, band), f"{model}: {mean:.4f} s, theory {theory:.4f} s"


@pytest.mark.parametrize("scale", [0.95, 1.05])
@pytest.mark.parametrize("model", MODELS)
def test_a_mis_scaled_service_time_falls_outside_the_band(model: str, scale: float) -> None:
    _, theory, band = MODELS[model]
    mean = measured(model, scale).mean
    assert not within(mean, theory, band), f"{model} x{scale}: {mean:.4f} s passes"


def test_m_m_1_response_times_are_exponential() -> None:
    # FIFO M/M/1: the time in system is exponential with rate mu - lambda, so its
    # percentiles are known too, not only its mean.
    latency = measured("M/M/1")
    rate = 10 - 5
    for q, value in ((50, latency.p50), (90, latency.p90), (99, latency.p99)):
        theory = -math.log(1 - q / 100) / rate
        assert value == pytest.approx(theory, rel=0.06), q


class _LastInFirstOut(deque[Any]):
    """A server queue serving the newest request first: a broken discipline."""

    def popleft(self) -> Any:
        return self.pop()


def test_a_lifo_queue_fails_the_percentiles(monkeypatch: pytest.MonkeyPatch) -> None:
    # LIFO has the same mean (Little's law does not care about order) but a far longer tail.
    monkeypatch.setattr(engine, "deque", _LastInFirstOut)
    (servers, capacity, rate, duration, strategy), theory, band = MODELS["M/M/1"]
    built = scenario(servers, capacity, rate, duration, strategy, SERVICE)
    latency = run_scenario(built, seed=1).strategies[0].latency
    assert within(latency.mean, theory, band)
    assert latency.p99 > 1.3 * -math.log(0.01) / (10 - 5)
