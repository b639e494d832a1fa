"""``lb.stats()``: the pool's figures beside each server's, and the latency histogram."""

from __future__ import annotations

import asyncio
import copy
import gc
import pickle
import threading
from collections.abc import AsyncIterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer import (
    DEFAULT_LATENCY_BUCKETS,
    EJECTION_REASONS,
    BalancerStats,
    LatencyHistogram,
    LoadBalancer,
    OutlierDetection,
    Picker,
    RetryBudgetStats,
    RoundRobinStrategy,
    ServerStats,
    Snapshot,
    Strategy,
)
from loadbalancer.discovery import AsyncDiscovery, Discovery, DiscoveryStatus, Membership, Source

from .fakes import FakeClock


def balancer(*servers: str, clock: FakeClock | None = None, **options: object) -> LoadBalancer:
    lb = LoadBalancer(
        max_servers=20,
        clock=clock or FakeClock(),
        rebuild_in_background=False,  # ejections at once, on the failing request's path
        **options,  # type: ignore[arg-type]
    )
    lb.replace(servers)
    return lb


def fail(lb: LoadBalancer, server: str, times: int) -> None:
    for _ in range(times):
        lb.done(server, ok=False)


# -- the mapping and the pool's figures -------------------------------------------------------


def test_stats_is_still_a_mapping_of_server_stats_in_registration_order() -> None:
    lb = balancer("c", "a", "b")
    stats = lb.stats()
    assert isinstance(stats, BalancerStats)
    assert isinstance(stats, Mapping)
    assert list(stats) == ["c", "a", "b"]
    assert len(stats) == 3
    assert all(isinstance(s, ServerStats) for s in stats.values())
    assert stats["a"].server == "a"
    assert "z" not in stats
    assert isinstance(stats, dict)  # as stats() always returned: copy, |, json all work
    assert stats.copy() == {name: stats[name] for name in ("c", "a", "b")}
    assert repr(stats) == repr(dict(stats))
    with pytest.raises(AttributeError, match="read-only"):
        stats.size = 4
    assert stats.size == 3


def test_stats_survive_pickle_and_copy_whole() -> None:
    lb = balancer("a", "b", outlier_detection=OutlierDetection())
    fail(lb, "a", 5)
    stats = lb.stats()
    for clone in (pickle.loads(pickle.dumps(stats)), copy.copy(stats), copy.deepcopy(stats)):
        assert clone == stats
        assert (clone.ejections_active, clone.ejections_total) == (1, stats.ejections_total)
        assert clone.retry_budget == stats.retry_budget


def test_an_empty_pool_has_zeros_and_no_ages() -> None:
    stats = LoadBalancer().stats()
    assert (stats.size, stats.healthy, stats.eligible, stats.ejections_active) == (0, 0, 0, 0)
    assert stats.ejections_total == dict.fromkeys(EJECTION_REASONS, 0)
    assert stats.health_changes == {"healthy": 0, "unhealthy": 0}
    assert (stats.panic, stats.panics) == (False, 0)
    assert (stats.membership_changes, stats.membership_change_age) == (0, None)
    assert stats.discovery == ()
    assert isinstance(stats.retry_budget, RetryBudgetStats)


def test_an_ejection_is_counted_by_reason_and_its_end_is_given_in_seconds() -> None:
    clock = FakeClock()
    lb = balancer("a", "b", "c", clock=clock, outlier_detection=OutlierDetection())
    fail(lb, "a", 5)
    stats = lb.stats()
    assert stats.ejections_active == 1
    assert stats.ejections_total == {"consecutive_failures": 1, "failure_percentage": 0}
    assert (stats.size, stats.healthy, stats.eligible) == (3, 2, 2)
    a = stats["a"]
    assert (a.ejected, a.ejection_ends_in, a.ejections_total) == (True, 30.0, 1)
    assert a.ejected_until == clock.now + 30.0  # the raw reading is still there
    clock.advance(20)
    assert lb.stats()["a"].ejection_ends_in == pytest.approx(10.0)
    assert stats["b"].ejection_ends_in is None
    # Back, and ejected again: the total keeps counting, the active count follows the pool.
    clock.advance(10)
    lb.refresh()
    assert lb.stats().ejections_active == 0
    fail(lb, "a", 5)
    stats = lb.stats()
    assert stats["a"].ejections_total == 2
    assert stats.ejections_total["consecutive_failures"] == 2


def test_a_failure_percentage_ejection_has_its_own_reason() -> None:
    clock = FakeClock()
    detection = OutlierDetection(
        consecutive_failures=1_000, failure_percentage=50, minimum_requests=10, interval=10
    )
    lb = balancer("a", "b", "c", clock=clock, outlier_detection=detection)
    for _ in range(10):
        lb.done("a", ok=False)
        lb.done("b", ok=True)
    clock.advance(10)
    lb.refresh()
    stats = lb.stats()
    assert stats.ejections_total == {"consecutive_failures": 0, "failure_percentage": 1}
    assert [s.server for s in stats.values() if s.ejected] == ["a"]


def test_panic_is_reported_now_and_counted_each_time_it_begins() -> None:
    lb = balancer("a", "b", "c", "d")
    lb.set_healthy("a", False)
    lb.set_healthy("b", False)
    assert (lb.stats().panic, lb.stats().panics) == (False, 0)  # 2 of 4: not below 50%
    lb.set_healthy("c", False)
    stats = lb.stats()
    assert (stats.panic, stats.panics, stats.healthy, stats.eligible) == (True, 1, 1, 4)
    lb.set_healthy("c", True)
    assert (lb.stats().panic, lb.stats().panics) == (False, 1)
    lb.set_healthy("c", False)
    assert lb.stats().panics == 2


def test_health_verdicts_are_counted_only_when_they_change_a_server() -> None:
    lb = balancer("a", "b")
    lb.set_healthy("a", True)  # already healthy: no change
    lb.set_healthy("a", False)
    lb.set_healthy("a", False)
    lb.set_healthy("a", True)
    lb.set_healthy("b", False)
    assert lb.stats().health_changes == {"healthy": 1, "unhealthy": 2}


def test_membership_changes_count_real_changes_and_their_age_follows_the_clock() -> None:
    clock = FakeClock()
    lb = LoadBalancer(clock=clock)
    lb.register("a")
    lb.register("a")  # already there: no change
    lb.register("b")
    lb.set_weight("b", 1)  # the same weight: no change
    lb.set_weight("b", 2)
    lb.replace({"a": 1, "b": 2})  # the same pool: no change
    lb.replace(["b", "a"])  # a new order alone: no change either
    lb.replace(["b", "a", "c", "d"])  # two servers at once: one change
    clock.advance(7)
    lb.unregister("a")
    lb.unregister("a")
    clock.advance(3)
    stats = lb.stats()
    assert stats.membership_changes == 5
    assert stats.membership_change_age == pytest.approx(3.0)


def test_the_retry_budget_s_counts_are_the_budget_s_own() -> None:
    lb = balancer("a", "b")

    def flaky(server: str) -> str:
        if server == "a":
            raise ConnectionError(server)
        return server

    for _ in range(3):
        lb.call(flaky)
    assert lb.stats().retry_budget == lb.retry_budget.stats()
    assert lb.stats().retry_budget.requests == 3


def test_stats_survive_a_clock_that_has_started_to_fail() -> None:
    readings = iter([1000.0, 1000.0])  # construction and register read it; stats() finds none
    calls = []

    def clock() -> float:
        calls.append(1)
        return next(readings)  # StopIteration: the clock has failed

    lb = LoadBalancer(clock=clock)
    lb.register("a")
    stats = lb.stats()
    assert len(calls) == 3  # stats() did ask the clock, and it failed
    assert stats["a"].server == "a"
    assert stats.membership_change_age == 0.0  # as of the latest publication


# -- discovery -----------------------------------------------------------------------------------


class _Quiet(Source):
    """A source that never yields: the runner is only attached, never started."""

    @property
    def name(self) -> str:
        return "quiet"

    async def watch(self) -> AsyncIterator[Membership]:  # pragma: no cover - never started
        yield Membership({})


def test_a_discovery_runner_reports_in_stats_while_it_lives() -> None:
    lb = LoadBalancer()
    runner = Discovery(lb, _Quiet())
    (status,) = lb.stats().discovery
    assert status == runner.status
    assert (status.source, status.running, status.updates) == ("quiet", False, 0)
    lb.attach_discovery(runner)  # twice: still one
    assert len(lb.stats().discovery) == 1
    del runner
    gc.collect()
    assert lb.stats().discovery == ()


def test_attach_discovery_refuses_what_has_no_status() -> None:
    lb = LoadBalancer()
    with pytest.raises(TypeError, match="runner must have a status property"):
        lb.attach_discovery(object())  # type: ignore[arg-type]
    assert lb.stats().discovery == ()


def test_a_reporter_whose_status_goes_bad_is_reported_not_raised() -> None:
    class Reporter:
        def __init__(self) -> None:
            self.state: object = DiscoveryStatus("x", True, 0, 0, 0, 0, None, None)

        @property
        def status(self) -> DiscoveryStatus:
            if isinstance(self.state, Exception):
                raise self.state
            return self.state  # type: ignore[return-value]

    lb = balancer("a", "b")
    reporter = Reporter()
    lb.attach_discovery(reporter)
    reporter.state = "nonsense"
    (status,) = lb.stats().discovery  # the balancer's figures are still there, and this says why
    assert (status.source, status.running, status.servers) == ("Reporter", False, 2)
    assert status.last_error == "status is str, not DiscoveryStatus (a bug)"
    reporter.state = OSError("clock is gone")
    (status,) = lb.stats().discovery
    assert status.last_error == "status raised OSError: clock is gone (a bug)"
    assert lb.stats().size == 2


def test_a_runner_must_allow_weak_references() -> None:
    class Slotted:
        __slots__ = ()

        @property
        def status(self) -> DiscoveryStatus:
            return DiscoveryStatus("x", True, 0, 0, 0, 0, None, None)

    with pytest.raises(TypeError, match="runner must allow weak references"):
        LoadBalancer().attach_discovery(Slotted())


class _OneMembership(Source):
    """Yields one membership, then waits for ever, as a registry with nothing new to say."""

    @property
    def name(self) -> str:
        return "one"

    async def watch(self) -> AsyncIterator[Membership]:
        yield Membership({"a:1": 1, "b:1": 1})
        await asyncio.Event().wait()


def test_an_async_runner_nobody_holds_still_reports_while_it_runs() -> None:
    lb = LoadBalancer()

    async def main() -> tuple[DiscoveryStatus, ...]:
        AsyncDiscovery(lb, _OneMembership()).start()  # no reference kept but the task's
        for _ in range(200):  # bounded: the first membership is applied within a few turns
            if lb.servers:
                break
            await asyncio.sleep(0)
        gc.collect()
        return lb.stats().discovery

    (status,) = asyncio.run(main())  # asyncio.run cancels the runner's task at the end
    assert lb.servers == ("a:1", "b:1")
    assert (status.source, status.running, status.updates) == ("one", True, 1)


def test_health_in_stats_is_the_published_picker_s_never_a_build_in_progress() -> None:
    class SlowThenBroken(Strategy):
        """Round-robin whose builds block while ``armed``, until released, and then raise."""

        armed = False
        entered = threading.Event()
        release = threading.Event()

        def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
            if self.armed:
                self.entered.set()
                assert self.release.wait(timeout=10)
                raise RuntimeError("the build failed")
            return RoundRobinStrategy().build(snapshot, previous)

    strategy = SlowThenBroken()
    lb = LoadBalancer(
        strategy,
        clock=FakeClock(),
        outlier_detection=OutlierDetection(consecutive_failures=1),
        rebuild_in_background=False,
    )
    lb.replace(["a", "b"])
    strategy.armed = True
    failing = threading.Thread(target=lb.done, args=("a",), kwargs={"ok": False})
    failing.start()
    try:
        assert strategy.entered.wait(timeout=10)  # the ejection's build is under way
        during = lb.stats()
    finally:
        strategy.release.set()
        failing.join(timeout=10)
    assert (during.ejections_active, during.healthy) == (0, 2)
    assert not during["a"].ejected
    assert during["a"].ejection_ends_in is None
    after = lb.stats()  # the build failed: the ejection was rolled back
    assert (after.ejections_active, after.ejections_total["consecutive_failures"]) == (0, 0)


# -- the latency histogram ---------------------------------------------------------------------


def test_no_histogram_until_it_is_enabled() -> None:
    lb = balancer("a")
    with lb.lease():
        pass
    assert lb.stats()["a"].latency_histogram is None
    assert lb.latency_buckets is None


def test_leases_land_in_the_bucket_at_or_above_their_latency() -> None:
    clock = FakeClock()
    lb = balancer("a", clock=clock)
    lb.enable_latency_histogram((0.125, 1.0))
    # Binary fractions, so that the clock's readings and their differences are exact.
    for seconds in (0.0625, 0.125, 0.5, 1.0, 3.0):
        with lb.lease():
            clock.advance(seconds)
    histogram = lb.stats()["a"].latency_histogram
    assert histogram == LatencyHistogram((0.125, 1.0), (2, 2, 1), 4.6875)
    assert histogram.count == 5
    assert histogram.cumulative() == [(0.125, 2), (1.0, 4), (float("inf"), 5)]


def test_failures_are_sampled_as_measured_and_no_outcome_is_not_sampled() -> None:
    clock = FakeClock()
    lb = balancer("a", clock=clock)
    lb.enable_latency_histogram((0.1, 1.0))
    lease = lb.acquire()
    clock.advance(0.01)  # a fast failure: the estimate counts it as slower, not the histogram
    lease.release(False)
    lease = lb.acquire()
    clock.advance(5)
    lease.release(None)
    lb.done("a", ok=True, latency=0.5)
    lb.done("a", ok=True)  # no latency given: nothing to sample
    histogram = lb.stats()["a"].latency_histogram
    assert histogram is not None
    assert histogram.counts == (1, 1, 0)
    assert histogram.sum == pytest.approx(0.51)
    assert lb.stats()["a"].latency_ewma is not None
    assert lb.stats()["a"].latency_ewma > 0.01  # type: ignore[operator]


def test_servers_that_join_later_are_counted_too() -> None:
    lb = balancer("a")
    lb.enable_latency_histogram()
    assert lb.latency_buckets == DEFAULT_LATENCY_BUCKETS
    lb.register("b")
    lb.replace(["a", "b", "c"])
    assert all(s.latency_histogram is not None for s in lb.stats().values())
    assert lb.stats()["c"].latency_histogram.bounds == DEFAULT_LATENCY_BUCKETS  # type: ignore[union-attr]


def test_enabling_again_with_the_same_buckets_is_harmless_and_other_buckets_are_refused() -> None:
    clock = FakeClock()
    lb = balancer("a", clock=clock)
    lb.enable_latency_histogram([0.5, 1])
    with lb.lease():
        clock.advance(0.2)
    lb.enable_latency_histogram((0.5, 1.0))
    with pytest.raises(ValueError, match=r"buckets: the latency histogram is already counted"):
        lb.enable_latency_histogram((0.5, 2.0))
    histogram = lb.stats()["a"].latency_histogram
    assert histogram is not None
    assert (histogram.bounds, histogram.counts) == ((0.5, 1.0), (1, 0, 0))


@pytest.mark.parametrize(
    ("buckets", "error", "message"),
    [
        ("0.1", TypeError, "buckets must be a sequence of numbers"),
        (5, TypeError, "buckets must be a sequence of numbers"),
        ((), ValueError, "buckets must hold at least one bound"),
        ((1.0, 0.5), ValueError, "buckets must be strictly increasing"),
        ((0.5, 0.5), ValueError, "buckets must be strictly increasing"),
        ((0.0, 1.0), ValueError, r"buckets\[\]"),
        ((float("inf"),), ValueError, r"buckets\[\]"),
        ((True,), TypeError, r"buckets\[\]"),
    ],
)
def test_bad_buckets_are_refused_by_name_and_change_nothing(
    buckets: object, error: type[Exception], message: str
) -> None:
    lb = balancer("a")
    with pytest.raises(error, match=message):
        lb.enable_latency_histogram(buckets)  # type: ignore[arg-type]
    assert lb.latency_buckets is None
    assert lb.stats()["a"].latency_histogram is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from([True, False, None]),
            # Sixty-fourths of a second: clock readings and their differences stay exact.
            st.integers(min_value=0, max_value=1_280).map(lambda n: n / 64),
        ),
        max_size=40,
    )
)
def test_the_histogram_counts_every_sampled_lease_once(
    leases: list[tuple[bool | None, float]],
) -> None:
    clock = FakeClock()
    lb = balancer("a", clock=clock)
    lb.enable_latency_histogram()
    for ok, seconds in leases:
        lease = lb.acquire()
        clock.advance(seconds)
        lease.release(ok)
    stats = lb.stats()["a"]
    histogram = stats.latency_histogram
    assert histogram is not None
    assert histogram.count == stats.successes + stats.failures
    assert histogram.sum == sum(s for ok, s in leases if ok is not None)
    assert [n for _, n in histogram.cumulative()] == sorted(n for _, n in histogram.cumulative())
    for (bound, at_most), seconds in zip(
        histogram.cumulative(), (*DEFAULT_LATENCY_BUCKETS, float("inf")), strict=True
    ):
        assert bound == seconds
        assert at_most == sum(1 for ok, s in leases if ok is not None and s <= bound)


def test_histogram_counts_are_exact_under_threads() -> None:
    lb = LoadBalancer(rebuild_in_background=False)
    lb.replace(["a", "b"])
    lb.enable_latency_histogram()
    threads, per_thread = 4, 2_000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            with lb.lease():
                pass

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stats = lb.stats()
    histograms = [s.latency_histogram for s in stats.values()]
    counted = sum(h.count for h in histograms if h is not None)
    assert None not in histograms
    assert counted == threads * per_thread == sum(s.successes for s in stats.values())
