"""Least connections, power of two choices and peak EWMA: load- and latency-aware picks."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest

from loadbalancer import (
    Lease,
    LeastConnectionsStrategy,
    LoadBalancer,
    PeakEWMAStrategy,
    PowerOfTwoChoicesStrategy,
    Snapshot,
    Strategy,
)

from .fakes import FakeClock


def pool(strategy: Strategy, clock: FakeClock | None = None, **weights: float) -> LoadBalancer:
    lb = LoadBalancer(
        strategy=strategy, max_servers=max(10, len(weights)), clock=clock or FakeClock()
    )
    lb.replace(weights)
    return lb


class Held:
    """Requests in flight on one server, started directly on its endpoint (white-box)."""

    def __init__(self, lb: LoadBalancer, server: str, count: int) -> None:
        self.endpoint = lb._view.endpoints[server]
        self.count = count
        for _ in range(count):
            self.endpoint.begin()

    def release_one(self) -> None:
        with self.endpoint._lock:  # as a release with no outcome: load follows in_flight
            self.endpoint.in_flight -= 1
            self.endpoint.load -= 1
        if self.endpoint.listener is not None:  # as the endpoint itself tells an index
            self.endpoint.listener(self.endpoint)


def hold(lb: LoadBalancer, server: str, count: int) -> Held:
    """Put ``count`` requests in flight on ``server``."""
    return Held(lb, server, count)


def leases_with_a_stuck_server(
    lb: LoadBalancer, stuck: str, threads: int, each: int
) -> Counter[str]:
    """Threads lease concurrently; leases on ``stuck`` are never released until the end."""
    start = threading.Barrier(threads)
    picks: list[Counter[str]] = []
    held: list[Lease] = []

    def worker() -> None:
        mine: Counter[str] = Counter()
        start.wait()
        for _ in range(each):
            lease = lb.acquire()
            mine[lease.server] += 1
            if lease.server == stuck:
                held.append(lease)  # a request that never finishes
            else:
                lease.release()
        picks.append(mine)

    pool_ = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool_:
        t.start()
    for t in pool_:
        t.join()
    for lease in held:
        lease.release()
    assert all(s.in_flight == 0 for s in lb.stats().values())
    return sum(picks, Counter())


# -- least connections ------------------------------------------------------------------------


def test_least_connections_picks_the_idle_server() -> None:
    lb = pool(LeastConnectionsStrategy(rng=random.Random(1)), a=1, b=1, c=1)
    hold(lb, "a", 1)
    hold(lb, "b", 1)
    assert {lb.get() for _ in range(50)} == {"c"}


def test_least_connections_divides_by_weight() -> None:
    lb = pool(LeastConnectionsStrategy(rng=random.Random(1)), a=3, b=1)
    assert {lb.get() for _ in range(20)} == {"a"}  # idle: 1/3 beats 1/1
    hold(lb, "a", 2)  # (2 + 1) / 3 = 1 per unit of weight, below b's (1 + 1) / 1
    hold(lb, "b", 1)
    assert {lb.get() for _ in range(50)} == {"a"}
    hold(lb, "a", 4)  # (6 + 1) / 3 > 2
    assert {lb.get() for _ in range(50)} == {"b"}


def test_least_connections_breaks_ties_fairly() -> None:
    lb = pool(LeastConnectionsStrategy(rng=random.Random(1)), a=1, b=1, c=1, d=1)
    counts = Counter(lb.get() for _ in range(8000))
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(1700 < n < 2300 for n in counts.values())


def test_least_connections_avoids_a_stuck_server_under_threads() -> None:
    lb = pool(LeastConnectionsStrategy(rng=random.Random(1)), fast1=1, fast2=1, stuck=1)
    picks = leases_with_a_stuck_server(lb, "stuck", threads=8, each=500)
    # Round-robin would send it a third (1333); once it holds more than the 8 threads can
    # have on the others, it is never the least loaded again.
    assert picks["stuck"] <= 9


def test_least_connections_counts_failures_in_a_row_as_load() -> None:
    lb = pool(LeastConnectionsStrategy(rng=random.Random(1)), a=1, b=1)
    assert {lb.get() for _ in range(50)} == {"a", "b"}  # a tie
    lb.done("a", ok=False)  # fails fast: nothing in flight, but it must not look idle
    assert {lb.get() for _ in range(50)} == {"b"}
    lb.done("a", ok=True)  # a success ends the run of failures
    assert {lb.get() for _ in range(50)} == {"a", "b"}


# -- power of two choices ---------------------------------------------------------------------


def test_p2c_samples_without_replacement() -> None:
    lb = pool(PowerOfTwoChoicesStrategy(rng=random.Random(1)), a=1, b=1)
    hold(lb, "a", 1)
    # With replacement, a quarter of the picks would compare a with itself and return it.
    assert {lb.get() for _ in range(1000)} == {"b"}


@pytest.mark.parametrize("weights", [{"a": 1, "b": 1}, {"a": 2, "b": 1}])
def test_p2c_counts_failures_in_a_row_as_load(weights: dict[str, float]) -> None:
    lb = pool(PowerOfTwoChoicesStrategy(rng=random.Random(1)), None, **weights)
    equal = weights["a"] == weights["b"]
    assert {lb.get() for _ in range(100)} == ({"a", "b"} if equal else {"a"})
    # Equal weights: load 1 loses to 0. Weights 2:1: 2 / (2 + 1) loses to 1 / (0 + 1).
    for _ in range(1 if equal else 2):
        lb.done("a", ok=False)
    assert {lb.get() for _ in range(100)} == {"b"}


def test_p2c_pairs_are_uniform_when_idle() -> None:
    lb = pool(PowerOfTwoChoicesStrategy(rng=random.Random(1)), a=1, b=1, c=1)
    counts = Counter(lb.get() for _ in range(9000))
    assert all(2700 < n < 3300 for n in counts.values())


def test_p2c_avoids_a_stuck_server_under_threads() -> None:
    lb = pool(PowerOfTwoChoicesStrategy(rng=random.Random(1)), fast1=1, fast2=1, stuck=1)
    picks = leases_with_a_stuck_server(lb, "stuck", threads=8, each=500)
    assert picks["stuck"] <= 9


def test_p2c_with_weights_uses_envoys_formula() -> None:
    lb = pool(PowerOfTwoChoicesStrategy(rng=random.Random(1)), a=3, b=1)
    assert {lb.get() for _ in range(100)} == {"a"}  # 3/1 beats 1/1
    held = hold(lb, "a", 3)  # 3/4 loses to 1/1
    assert {lb.get() for _ in range(100)} == {"b"}
    held.release_one()  # 3/3 ties 1/1: the first drawn wins, so both appear
    assert {lb.get() for _ in range(200)} == {"a", "b"}


# Pools above 64 servers draw their pairs arithmetically (no pair table), inlined in pick.


def loads_by_rank(lb: LoadBalancer) -> list[str]:
    """Give the i-th server i requests in flight; the servers in that order."""
    servers = list(lb.servers)
    for rank, server in enumerate(servers):
        hold(lb, server, rank)
    return servers


def chi_square_of(counts: Counter[str], expected: dict[str, float]) -> float:
    return sum((counts[s] - e) ** 2 / e for s, e in expected.items())


# The 99.9th percentile of chi-square with 98 degrees of freedom (Wilson-Hilferty).
CHI2_98 = 147.1


@pytest.mark.parametrize(
    ("strategy", "weighted"),
    [
        (PowerOfTwoChoicesStrategy(rng=random.Random(3)), False),
        (PowerOfTwoChoicesStrategy(rng=random.Random(3)), True),
        (PowerOfTwoChoicesStrategy(active_request_bias=0.5, rng=random.Random(3)), True),
        (PeakEWMAStrategy(rng=random.Random(3)), False),
        (PeakEWMAStrategy(rng=random.Random(3)), True),
    ],
)
def test_two_choices_pairs_are_uniform_above_the_pair_table(
    strategy: Strategy, weighted: bool
) -> None:
    size, picks = 100, 200_000
    clock = FakeClock()
    # Weights unequal by a hair take the weighted comparison without changing any outcome.
    lb = pool(strategy, clock, **{f"s{i}": 1 + weighted * i * 1e-9 for i in range(size)})
    if isinstance(strategy, PeakEWMAStrategy):
        for server in lb.servers:
            lb.done(server, latency=0.1)  # all measured at once: cost follows load
    servers = loads_by_rank(lb)
    counts = Counter(lb.get() for _ in range(picks))
    # The less loaded of a uniform ordered pair without replacement: rank i wins when paired
    # with any of the size - 1 - i above it, so never the last (with replacement it would).
    pairs = size * (size - 1)
    expected = {s: picks * 2 * (size - 1 - i) / pairs for i, s in enumerate(servers[:-1])}
    assert counts[servers[-1]] == 0
    assert chi_square_of(counts, expected) < CHI2_98


def random_loads(lb: LoadBalancer, clock: FakeClock, seed: int) -> None:
    """Loads of 0-3 and, for most servers, a latency sampled at a moment of its own."""
    rng = random.Random(seed)
    for server in lb.servers:
        if rng.random() < 0.8:
            lb.done(server, latency=rng.random())
        clock.advance(rng.random())
        hold(lb, server, rng.randrange(4))


@pytest.mark.parametrize("size", [2, 10, 64, 65, 300, 5000])  # pair table up to 64
@pytest.mark.parametrize(
    ("strategy", "weighted", "pickers"),
    [
        (PowerOfTwoChoicesStrategy(rng=random.Random(5)), False, ("_PairTable", "_TwoDraw")),
        (
            PowerOfTwoChoicesStrategy(rng=random.Random(5)),
            True,
            ("_WeightedPairTable", "_WeightedTwoDraw"),
        ),
        (
            PowerOfTwoChoicesStrategy(active_request_bias=0.5, rng=random.Random(5)),
            True,
            ("_WeightedPairTable", "_WeightedTwoDraw"),
        ),
        (
            PeakEWMAStrategy(rng=random.Random(5)),
            False,
            ("_PeakEWMAPairTable", "_PeakEWMATwoDraw"),
        ),
        (
            PeakEWMAStrategy(rng=random.Random(5)),
            True,
            ("_WeightedPeakEWMAPairTable", "_WeightedPeakEWMATwoDraw"),
        ),
    ],
)
def test_two_choices_inlined_picks_match_the_retry_draw_and_comparison(
    size: int, strategy: Strategy, weighted: bool, pickers: tuple[str, str]
) -> None:
    clock = FakeClock()
    lb = pool(strategy, clock, **{f"s{i}": 1 + weighted * (i % 3) for i in range(size)})
    random_loads(lb, clock, 6)
    built = lb.picker
    assert type(built).__name__ == pickers[size > 64] + "Picker"
    twin: Any = strategy.build(Snapshot.of(tuple(lb._view.endpoints.values()), clock))
    # Same seed for both: the twin draws its pairs with pair() and compares them with the
    # retries' comparison, which pick inlines; ties (equal loads, unmeasured) included.
    if isinstance(strategy, PeakEWMAStrategy):
        compare = twin._cheaper
    else:
        compare = lambda first, second: twin._best((first, second))  # noqa: E731
    rng: random.Random = strategy._rng  # type: ignore[attr-defined]
    rng.seed(11)
    picks = [built.pick() for _ in range(2000)]
    rng.seed(11)
    assert picks == [compare(*twin._draw.pair()) for _ in range(2000)]


@pytest.mark.parametrize("size", [3, 64, 65, 90])
def test_pair_draws_are_uniform_over_ordered_pairs(size: int) -> None:
    weights = {f"s{i}": 1 for i in range(size)}
    lb = pool(PowerOfTwoChoicesStrategy(rng=random.Random(8)), None, **weights)
    draw: Any = lb.picker._draw  # type: ignore[attr-defined]
    assert type(draw).__name__ == ("_PairTableDraw" if size <= 64 else "_TwoDraws")
    pairs, each = size * (size - 1), 40
    counts = Counter((a.server, b.server) for a, b in (draw.pair() for _ in range(each * pairs)))
    assert all(a != b for a, b in counts)
    assert len(counts) == pairs
    chi2 = sum((n - each) ** 2 / each for n in counts.values())
    # Wilson-Hilferty: the 99.9th percentile of chi-square with pairs - 1 degrees of freedom.
    k = pairs - 1
    assert chi2 < k * (1 - 2 / (9 * k) + 3.09 * (2 / (9 * k)) ** 0.5) ** 3


@pytest.mark.parametrize("factory", [PowerOfTwoChoicesStrategy, PeakEWMAStrategy])
@pytest.mark.parametrize("size", [10, 300])
def test_two_choices_ties_go_to_the_first_drawn(factory: type[Strategy], size: int) -> None:
    rng = random.Random(4)
    lb = pool(factory(rng=rng), None, **{f"s{i}": 1 for i in range(size)})  # type: ignore[call-arg]
    draw: Any = lb.picker._draw  # type: ignore[attr-defined]
    rng.seed(2)
    picks = [lb.get() for _ in range(500)]
    rng.seed(2)
    assert picks == [draw.pair()[0].server for _ in range(500)]  # all idle: all tied


@pytest.mark.parametrize("size", [10, 300])
@pytest.mark.parametrize(("bias", "s0"), [(1.0, "ties"), (0.0, "wins"), (2.0, "loses")])
def test_two_choices_weights_and_bias_decide_the_pair(size: int, bias: float, s0: str) -> None:
    strategy = PowerOfTwoChoicesStrategy(active_request_bias=bias, rng=random.Random(1))
    lb = pool(strategy, None, **{f"s{i}": 4 if i == 0 else 1 for i in range(size)})
    hold(lb, "s0", 3)  # 4 / 4**bias against 1 / 1 for every other server
    picks = 200 * size
    won = Counter(lb.get() for _ in range(picks))["s0"]
    # s0 is drawn in 2 / size of the pairs, first in half of those: the first drawn wins ties.
    expected = {"ties": picks / size, "wins": 2 * picks / size, "loses": 0}[s0]
    assert abs(won - expected) <= 5 * expected**0.5


def test_a_single_server_picker_returns_it() -> None:
    for strategy in (PowerOfTwoChoicesStrategy(rng=random.Random(1)), PeakEWMAStrategy()):
        lb = pool(strategy, None, only=1)
        assert type(lb.picker).__name__ == "_OneServerPicker"
        assert lb.get() == lb.get("key") == lb.get(exclude=["only"]) == "only"
        with pytest.raises(TypeError, match="key"):
            lb.get(3)  # type: ignore[arg-type]


def test_p2c_bias_zero_ignores_load() -> None:
    lb = pool(PowerOfTwoChoicesStrategy(active_request_bias=0, rng=random.Random(1)), a=3, b=1)
    hold(lb, "a", 5)
    assert {lb.get() for _ in range(100)} == {"a"}


def test_p2c_with_more_choices_compares_them_all() -> None:
    lb = pool(PowerOfTwoChoicesStrategy(3, rng=random.Random(1)), a=1, b=1, c=1)
    hold(lb, "a", 1)
    hold(lb, "c", 1)
    assert {lb.get() for _ in range(100)} == {"b"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"choices": 1}, ValueError, "choices"),
        ({"choices": True}, TypeError, "choices"),
        ({"active_request_bias": -1}, ValueError, "active_request_bias"),
        ({"active_request_bias": "1"}, TypeError, "active_request_bias"),
        ({"rng": 3}, TypeError, "rng"),
    ],
)
def test_p2c_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PowerOfTwoChoicesStrategy(**kwargs)  # type: ignore[arg-type]


# -- peak EWMA --------------------------------------------------------------------------------


def share(
    lb: LoadBalancer, clock: FakeClock, latencies: dict[str, float], picks: int
) -> Counter[str]:
    """Serve ``picks`` sequential requests, each taking its server's latency."""
    counts: Counter[str] = Counter()
    for _ in range(picks):
        lease = lb.acquire()
        counts[lease.server] += 1
        clock.advance(latencies[lease.server])
        lease.release()
    return counts


def test_peak_ewma_moves_traffic_off_a_slow_server_and_back_after_it_recovers() -> None:
    clock = FakeClock()
    lb = pool(PeakEWMAStrategy(rng=random.Random(1)), clock, a=1, b=1, c=1)
    healthy = {"a": 0.01, "b": 0.01, "c": 0.01}
    share(lb, clock, healthy, 3000)  # untried servers' default latency decays: all get tried
    balanced = share(lb, clock, healthy, 900)
    assert all(balanced[s] > 200 for s in healthy)

    slow = {**healthy, "c": 1.0}
    share(lb, clock, slow, 50)  # c turns slow: a sample or two is enough to avoid it
    assert share(lb, clock, slow, 1000)["c"] <= 10

    # c recovers; idle time decays its estimate until it is tried again, then it is back.
    recovering = share(lb, clock, healthy, 6000)
    assert recovering["c"] > 0
    assert share(lb, clock, healthy, 900)["c"] > 200


def test_peak_ewma_prefers_an_unsampled_server_with_the_default_latency() -> None:
    clock = FakeClock()
    lb = pool(PeakEWMAStrategy(default_latency=0.03, rng=random.Random(1)), clock, a=1, b=1)
    lb.done("a", latency=0.5)
    assert {lb.get() for _ in range(50)} == {"b"}


def test_peak_ewma_cost_grows_with_requests_in_flight() -> None:
    clock = FakeClock()
    lb = pool(PeakEWMAStrategy(rng=random.Random(1)), clock, a=1, b=1)
    lb.done("a", latency=0.1)
    lb.done("b", latency=0.25)
    assert {lb.get() for _ in range(20)} == {"a"}
    hold(lb, "a", 2)  # 0.1 x 3 > 0.25 x 1
    assert {lb.get() for _ in range(20)} == {"b"}


def test_peak_ewma_counts_failures_in_a_row_as_load() -> None:
    clock = FakeClock()
    lb = pool(PeakEWMAStrategy(rng=random.Random(1)), clock, a=1, b=1)
    lb.done("a", latency=0.1)
    lb.done("b", latency=0.1)
    assert {lb.get() for _ in range(50)} == {"a", "b"}  # equal costs: a tie
    # A failure in a row, set directly: a real one also raises the latency to at least
    # failure_latency, which would decide this alone.
    endpoint = lb._view.endpoints["a"]
    with endpoint._lock:
        endpoint.consecutive_failures += 1
        endpoint.load += 1
    assert {lb.get() for _ in range(50)} == {"b"}  # 0.1 x (1 + 1) > 0.1 x (0 + 1)


def test_peak_ewma_failure_latency_is_the_floor_for_a_failed_request() -> None:
    strategy = PeakEWMAStrategy(failure_latency=2.5, rng=random.Random(1))
    assert strategy.failure_latency == 2.5
    assert PeakEWMAStrategy().failure_latency == 1.0
    clock = FakeClock()
    lb = pool(strategy, clock, a=1, b=1)
    lb.done("a", ok=False, latency=0.001)  # a refused connection answers at once
    assert lb.stats()["a"].latency_ewma == 2.5
    lb.done("a", ok=False, latency=4.0)  # a slower failure counts as it was
    assert lb.stats()["a"].latency_ewma == 4.0
    assert {lb.get() for _ in range(20)} == {"b"}


def test_peak_ewma_failure_latency_applies_on_the_lease_path_too() -> None:
    clock = FakeClock()
    lb = pool(PeakEWMAStrategy(failure_latency=2.5, rng=random.Random(1)), clock, a=1)
    lb.acquire().release(ok=False)  # timed by the clock: it failed at once
    assert lb.stats()["a"].latency_ewma == 2.5
    lease = lb.acquire()
    clock.advance(0.01)  # a fast failure, 10 ms: counted as 2.5 s, and never lowering it
    lease.release(ok=False)
    assert lb.stats()["a"].latency_ewma == 2.5


def test_peak_ewma_decay_governs_the_balancers_latency_estimate() -> None:
    clock = FakeClock()
    lb = pool(PeakEWMAStrategy(decay=1.0, rng=random.Random(1)), clock, a=1)
    lb.done("a", latency=1.0)
    clock.advance(1.0)
    lb.done("a", latency=0.0)
    assert lb.stats()["a"].latency_ewma == pytest.approx(0.36787944117144233)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 0}, "decay"),
        ({"default_latency": -1}, "default_latency"),
        ({"decay": "1"}, "decay"),
        ({"failure_latency": 0}, "failure_latency"),
        ({"failure_latency": -1.0}, "failure_latency"),
        ({"failure_latency": float("nan")}, "failure_latency"),
        ({"failure_latency": "1"}, "failure_latency"),
        ({"failure_latency": True}, "failure_latency"),
    ],
)
def test_peak_ewma_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        PeakEWMAStrategy(**kwargs)  # type: ignore[arg-type]


def test_reprs() -> None:
    assert repr(PowerOfTwoChoicesStrategy()) == "PowerOfTwoChoicesStrategy()"
    assert repr(PowerOfTwoChoicesStrategy(3, active_request_bias=0.5)) == (
        "PowerOfTwoChoicesStrategy(choices=3, active_request_bias=0.5)"
    )
    assert repr(PeakEWMAStrategy(decay=5)) == "PeakEWMAStrategy(decay=5.0)"
    assert repr(PeakEWMAStrategy(failure_latency=1)) == "PeakEWMAStrategy()"
    assert repr(PeakEWMAStrategy(failure_latency=0.5)) == "PeakEWMAStrategy(failure_latency=0.5)"
    assert repr(LeastConnectionsStrategy()) == "LeastConnectionsStrategy()"
