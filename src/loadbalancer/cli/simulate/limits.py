"""Bounded work: the most a scenario may ask of the simulator, and the checks against it.

A file that asks for work that cannot finish (a run of 1e12 s, a million arrivals a second,
a trillion keys) or that would end in a traceback mid-run (a draw that overflows to infinity,
a strategy the library refuses for this pool) is refused when it is checked, in one line
naming the field.
"""

from __future__ import annotations

import math
import random

from ... import LoadBalancer
from ..._validation import MAX_WEIGHT, check_weight
from .fields import ScenarioError, as_positive, join, library_error
from .registry import build_strategy, strategy_options

__all__ = [
    "CAPS",
    "MAX_CYCLE",
    "MAX_KEYS",
    "MAX_KEY_COUNTS",
    "MAX_REQUESTS",
    "MAX_SECONDS",
    "MAX_SIGMA",
    "MAX_WEIGHT",
    "as_seconds",
    "as_weight",
    "check_cycle",
    "check_draws",
    "check_key_counts",
    "check_keys",
    "check_pool",
    "check_requests",
    "check_zipf",
    "largest_draw",
]

MAX_REQUESTS = 5_000_000
"""Most requests one run replays (arrival rate x duration, or a trace's rows): about a minute
per strategy, and every latency is kept for the percentiles."""

MAX_KEYS = 1_000_000
"""Most distinct keys (``keys.population``, or a trace's distinct keys)."""

MAX_KEY_COUNTS = 10_000_000
"""Most (key, server) counters kept for stickiness: keys x servers."""

MAX_SECONDS = 1e9
"""Longest time one request may take (a service-time draw, a failure latency, a timeout): about
32 years. Sums of millions of such latencies stay finite, so every summary is a number."""

MAX_CYCLE = 4096
"""Largest ``max_cycle`` of ``weighted_round_robin`` (the library's default): the cycle is built
again on every ejection and return and every slow-start step, and building 4,096 turns takes a
few ms (2.6 ms for weights 1 and 4095, 4.9 ms for 8 distinct weights), where 1,048,576 took
over a second, so a run with ejections could take minutes per simulated second."""

MAX_SIGMA = math.sqrt(math.log(MAX_REQUESTS))
"""Largest lognormal ``sigma`` (about 3.93). The mean of n lognormal draws has a relative standard
error of sqrt((exp(sigma**2) - 1) / n); above this sigma it is more than 100% even for the longest
run (``MAX_REQUESTS`` draws): the mass of the mean sits in draws too rare to be made, so a run
reports a mean and percentiles far below the configured mean (sigma 22 with mean 10 ms gave
0.0 ms). Below it, the longest draw grows with sigma, so the check of draws is monotone too."""

CAPS: tuple[tuple[str, float, str], ...] = (
    ("requests in one run", MAX_REQUESTS, "arrivals.rate x duration, or a trace's rows"),
    ("keys", MAX_KEYS, "keys.population, or a trace's distinct keys"),
    ("(key, server) counters", MAX_KEY_COUNTS, "keys x servers, for stickiness"),
    ("seconds one request may take", MAX_SECONDS, "latency draws, failure_latency, timeout"),
    ("weight", MAX_WEIGHT, "the library's largest weight"),
    ("max_cycle", MAX_CYCLE, "of weighted_round_robin"),
    ("sigma", MAX_SIGMA, "of a lognormal latency"),
)
"""Every cap, for the reference: what it limits, its value, and where it applies."""

# The most standard deviations random.normalvariate goes from its mean: its Kinderman-Monahan
# test accepts z only while z * z / 4 <= -log(u), and u > 0 is at least 2**-53.
_MAX_Z = math.sqrt(4 * 53 * math.log(2))
# The most exponential means random.expovariate draws: -log(1 - random()), and 1 - random()
# is at least 2**-53.
_MAX_EXPONENTIALS = 53 * math.log(2)


def _count(value: float) -> str:
    return f"{value:,.0f}" if value < 1e15 else f"{value:.3g}"


def check_requests(rate: float, duration: float, duration_path: str) -> None:
    """Refuse a run of more than ``MAX_REQUESTS`` expected arrivals.

    The rate is at fault when a single second is already too many, else the duration.
    """
    expected = rate * duration
    if expected <= MAX_REQUESTS:
        return
    where = "arrivals.rate" if rate > MAX_REQUESTS else duration_path
    raise ScenarioError(
        where,
        f"{rate:g} requests/s for {duration:g} s is {_count(expected)} requests; a simulation "
        f"runs at most {MAX_REQUESTS:,} (lower the rate or the duration)",
    )


def check_keys(count: int, path: str, what: str = "keys") -> None:
    """Refuse more than ``MAX_KEYS`` distinct keys."""
    if count > MAX_KEYS:
        raise ScenarioError(
            path, f"{_count(count)} {what}; a simulation takes at most {MAX_KEYS:,}"
        )


def check_key_counts(keys: int, servers: int, path: str) -> None:
    """Refuse more than ``MAX_KEY_COUNTS`` (key, server) counters."""
    if keys * servers > MAX_KEY_COUNTS:
        raise ScenarioError(
            path,
            f"{keys:,} keys on {servers} servers is {_count(keys * servers)} (key, server) "
            f"counters; a simulation keeps at most {MAX_KEY_COUNTS:,} (fewer keys or servers)",
        )


def as_seconds(value: object, path: str) -> float:
    """A time one request may take: a number above zero, at most ``MAX_SECONDS``."""
    seconds = as_positive(value, path)
    if seconds > MAX_SECONDS:
        raise ScenarioError(path, f"must be at most {MAX_SECONDS:g} s, got {value!r}")
    return seconds


def as_weight(value: object, path: str) -> float:
    """A weight: a number above zero that the library accepts (it has the limit)."""
    weight = as_positive(value, path)
    try:
        check_weight(weight, "weight")
    except ValueError as error:
        raise library_error(error, path.rpartition(".")[0], ("weight",)) from None
    return weight


def largest_draw(distribution: str, mean: float, sigma: float) -> float:
    """The longest service time a latency distribution can draw (inf if it overflows)."""
    if distribution == "constant":
        return mean
    if distribution == "exponential":
        return mean * _MAX_EXPONENTIALS
    try:  # lognormal: exp(mu + sigma * z), with mu chosen to give this mean
        return math.exp(math.log(mean) - sigma**2 / 2 + sigma * _MAX_Z)
    except OverflowError:
        return math.inf


def check_draws(distribution: str, mean: float, sigma: float, path: str) -> None:
    """Refuse a latency whose draws may exceed ``MAX_SECONDS`` (or overflow to infinity).

    The mean is at fault when it is itself too long, else the lognormal's sigma (its tail);
    a sigma above ``MAX_SIGMA`` is refused first, whatever the mean.
    """
    if distribution == "lognormal" and sigma > MAX_SIGMA:
        raise ScenarioError(
            join(path, "sigma"),
            f"must be at most {MAX_SIGMA:.3g} in a simulation, got {sigma:g} (above it, even "
            f"{MAX_REQUESTS:,} draws average far below the mean)",
        )
    largest = largest_draw(distribution, mean, sigma)
    if largest <= MAX_SECONDS:
        return
    at_fault = "sigma" if distribution == "lognormal" and mean <= MAX_SECONDS else "mean"
    drawn = "overflow to infinity" if math.isinf(largest) else f"reach {largest:.3g} s"
    shape = f"mean {mean:g} s" + (f", sigma {sigma:g}" if distribution == "lognormal" else "")
    raise ScenarioError(
        join(path, at_fault),
        f"{distribution} service times of {shape} {drawn}; the simulator takes at most "
        f"{MAX_SECONDS:g} s",
    )


def check_zipf(population: int, exponent: float, path: str) -> None:
    """Refuse a Zipf exponent for which ``population ** exponent`` overflows a float."""
    try:
        population**exponent  # the largest term the key weights compute
    except OverflowError:
        most = math.log(2.0**1023) / math.log(population)
        raise ScenarioError(
            path,
            f"{exponent:g} overflows: {population:,} ** {exponent:g} is beyond a float "
            f"(at most about {most:.4g} for {population:,} keys)",
        ) from None


def check_cycle(options: dict[str, object], path: str) -> None:
    """Refuse a ``max_cycle`` option above ``MAX_CYCLE``."""
    cycle = options.get("max_cycle")
    if isinstance(cycle, int) and not isinstance(cycle, bool) and cycle > MAX_CYCLE:
        raise ScenarioError(
            join(path, "max_cycle"),
            f"must be at most {MAX_CYCLE:,} in a simulation, got {cycle:,}",
        )


def check_pool(name: str, options: dict[str, object], weights: dict[str, float], path: str) -> None:
    """Build strategy ``name`` on the scenario's whole pool, as the run will, so that what the
    library refuses for this pool (a Maglev table smaller than it, a ketama ring too large for
    it) is reported now, not mid-run."""
    strategy = build_strategy(name, options, random.Random(0))
    balancer = LoadBalancer(strategy, max_servers=len(weights), rebuild_in_background=False)
    try:
        balancer.replace(weights)
    except (TypeError, ValueError) as error:
        raise library_error(error, path, strategy_options(name)) from None
