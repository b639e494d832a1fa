"""The three outcomes of a request, and the core defects around them (each a regression test)."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Iterator, Mapping

import pytest

from loadbalancer import (
    LoadBalancer,
    OutlierDetection,
    PeakEWMAStrategy,
    Picker,
    RoundRobinStrategy,
    Snapshot,
    Strategy,
)
from loadbalancer.testing import run

from .fakes import FakeClock


def balancer(*servers: str, **options: object) -> LoadBalancer:
    # Ejections and their ends apply at once, on the request path: tests/test_rebuilds.py
    # covers the rebuild thread.
    lb = LoadBalancer(rebuild_in_background=False, **options)  # type: ignore[arg-type]
    lb.replace(servers)
    return lb


@pytest.mark.parametrize(
    "interruption", [asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit]
)
def test_base_exceptions_end_the_lease_with_no_outcome(
    interruption: type[BaseException],
) -> None:
    clock = FakeClock()
    lb = balancer("a", clock=clock, outlier_detection=OutlierDetection(consecutive_failures=5))

    # Nine quick cancellations against a healthy server once got it ejected for 30 s.
    def cancelled_request() -> None:
        with lb.lease():
            clock.advance(0.001)
            raise interruption

    for _ in range(9):
        with pytest.raises(interruption):
            cancelled_request()
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.successes, stats.failures, stats.cancelled) == (0, 0, 0, 9)
    assert stats.latency_ewma is None
    assert stats.consecutive_failures == 0
    assert not stats.ejected


def test_exceptions_are_failures_and_clean_exits_successes() -> None:
    lb = balancer("a")
    with lb.lease():
        pass
    with pytest.raises(ValueError, match="boom"), lb.lease():
        raise ValueError("boom")
    stats = lb.stats()["a"]
    assert (stats.successes, stats.failures, stats.cancelled) == (1, 1, 0)


@pytest.mark.parametrize(
    ("marked", "expected"), [(None, (0, 0, 1)), (True, (1, 0, 0)), (False, (0, 1, 0))]
)
def test_mark_overrides_whatever_the_block_raises(
    marked: bool | None, expected: tuple[int, int, int]
) -> None:
    lb = balancer("a")

    def marked_request() -> None:
        lease = lb.acquire()
        with lease:
            lease.mark(marked)
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        marked_request()
    stats = lb.stats()["a"]
    assert (stats.successes, stats.failures, stats.cancelled) == expected


def test_release_with_no_outcome_records_nothing_but_leaving_flight() -> None:
    lb = balancer("a")
    lease = lb.acquire()
    assert lb.stats()["a"].in_flight == 1
    assert lease.release(ok=None, latency=5.0) is True
    assert lease.release(ok=False) is False  # released once only
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.successes, stats.failures, stats.cancelled) == (0, 0, 0, 1)
    assert stats.latency_ewma is None


def test_mark_and_release_refuse_other_outcomes() -> None:
    lb = balancer("a")
    lease = lb.acquire()
    with pytest.raises(TypeError, match="ok must be True, False or None"):
        lease.mark(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ok"):
        lease.release(ok="no")  # type: ignore[arg-type]
    assert lb.stats()["a"].in_flight == 1  # a refused release leaves the lease open
    assert lease.release()


def test_async_with_lease_and_a_cancelled_task_is_no_outcome() -> None:
    lb = balancer("a", "b")

    async def main() -> None:
        async with lb.lease() as server:
            assert server == "a"
        entered = asyncio.Event()

        async def request() -> None:
            async with lb.lease():
                entered.set()
                await asyncio.get_running_loop().create_future()  # never answered

        task = asyncio.ensure_future(request())
        await entered.wait()
        assert lb.stats()["b"].in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    stats = lb.stats()
    assert stats["a"].successes == 1
    assert (stats["b"].in_flight, stats["b"].failures, stats["b"].cancelled) == (0, 0, 1)


def test_asyncio_wait_for_timeout_counts_against_no_server() -> None:
    lb = balancer("a", outlier_detection=OutlierDetection(consecutive_failures=1))

    async def slow() -> None:
        async with lb.lease():
            await asyncio.get_running_loop().create_future()

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(slow(), 0.5)

    run(main())  # virtual time: each timeout fires exactly, at once
    stats = lb.stats()["a"]
    assert (stats.failures, stats.cancelled, stats.ejected) == (0, 3, False)


def test_a_fast_failure_counts_as_at_least_the_failure_latency() -> None:
    clock = FakeClock()
    lb = balancer("a", "b", strategy=PeakEWMAStrategy(failure_latency=0.5), clock=clock)
    lease = lb.acquire()
    clock.advance(0.001)
    lease.release(ok=False)  # refused in a millisecond
    stats = lb.stats()
    assert stats[lease.server].latency_ewma == 0.5
    # A failure never lowers an estimate, however fast it came back.
    other = "a" if lease.server == "b" else "b"
    lb.done(other, ok=True, latency=2.0)
    lb.done(other, ok=False, latency=0.001)
    assert lb.stats()[other].latency_ewma == 2.0


def test_failures_make_peak_ewma_avoid_a_server_that_fails_fast() -> None:
    clock = FakeClock()
    lb = balancer("fast_fail", "healthy", strategy=PeakEWMAStrategy(), clock=clock)
    lb.done("healthy", ok=True, latency=0.05)
    lb.done("fast_fail", ok=False, latency=0.001)
    assert all(lb.get() == "healthy" for _ in range(50))


# -- the clock -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reading", "error"),
    [(None, TypeError), ("1", TypeError), (True, TypeError), (math.nan, ValueError)],
)
def test_a_clock_returning_nonsense_is_refused_naming_clock(
    reading: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="clock"):
        LoadBalancer(clock=lambda: reading)  # type: ignore[arg-type, return-value]


def test_a_clock_going_bad_later_changes_no_count() -> None:
    readings: list[object] = [1.0]
    lb = balancer("a", clock=lambda: readings[-1])
    readings.append(math.inf)
    with pytest.raises(ValueError, match="clock must return a finite number"):
        lb.acquire()
    with pytest.raises(ValueError, match="clock"):
        lb.register("b")
    readings.append(2)  # an int is a fine reading
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.picks) == (0, 0)
    assert lb.servers == ("a",)
    with lb.lease():
        pass
    assert lb.stats()["a"].successes == 1


def test_a_clock_raising_in_lease_exit_still_releases_and_keeps_the_callers_error() -> None:
    calls = {"n": 0}

    def clock() -> float:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("clock is gone")
        return float(calls["n"])

    lb = balancer("a", clock=clock)
    with pytest.raises(KeyError, match="the caller's"), lb.lease():
        raise KeyError("the caller's")
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.failures) == (0, 1)
    # With no error of the caller's, the clock's own is raised, after releasing.
    calls["n"] = 2
    with pytest.raises(OSError, match="clock is gone"), lb.lease():
        pass
    assert lb.stats()["a"].in_flight == 0
    calls["n"] = 2
    lease = lb.acquire()
    with pytest.raises(OSError, match="clock is gone"):
        lease.release()
    assert lease.released
    assert lb.stats()["a"].in_flight == 0


def ejected_until_1030() -> tuple[FakeClock, LoadBalancer]:
    """Servers a and b at t = 1000, a just ejected for 30 s."""
    clock = FakeClock(start=1000.0)
    lb = balancer(
        "a",
        "b",
        clock=clock,
        outlier_detection=OutlierDetection(consecutive_failures=1, max_ejection_percent=50),
        panic_threshold=0,
    )
    lb.done("a", ok=False)
    return clock, lb


def test_an_ejection_never_outlasts_its_length_after_the_clock_steps_back() -> None:
    clock, lb = ejected_until_1030()
    assert lb.stats()["a"].ejected
    clock.now = 10.0  # an NTP correction on a clock that is not monotonic
    with lb.lease():
        pass  # the lease notices the step back and caps the deadline at now + 30 s
    clock.advance(29.0)
    lb.refresh()
    assert lb.stats()["a"].ejected
    clock.advance(1.5)
    lb.refresh()
    assert not lb.stats()["a"].ejected
    assert "a" in {lb.get() for _ in range(4)}


def test_negative_zero_latency_is_reported_as_zero() -> None:
    lb = balancer("a")
    lb.done("a", latency=-0.0)
    latency = lb.stats()["a"].latency_ewma
    assert latency == 0.0
    assert math.copysign(1.0, latency) == 1.0


# -- publication and picking ---------------------------------------------------------------


class _Broken(Strategy):
    def __init__(self) -> None:
        self.fail = False

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        if self.fail:
            return "not a picker"  # type: ignore[return-value]
        return RoundRobinStrategy().build(snapshot, previous)


def test_a_build_that_returns_no_picker_raises_and_changes_nothing() -> None:
    strategy = _Broken()
    lb = balancer("a", strategy=strategy)
    strategy.fail = True
    with pytest.raises(TypeError, match="build must return a Picker, not str"):
        lb.register("b")
    assert lb.servers == ("a",)
    assert lb.get() == "a"
    with lb.lease() as server:
        assert server == "a"
    assert lb.stats()["a"].successes == 1


class _Counting(Strategy):
    def __init__(self) -> None:
        self.builds = 0

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        self.builds += 1
        return RoundRobinStrategy().build(snapshot, previous)


def test_health_bookkeeping_keeps_the_picker_when_nothing_changed() -> None:
    clock = FakeClock()
    strategy = _Counting()
    outlier = OutlierDetection(failure_percentage=50, interval=1.0)
    lb = balancer("a", "b", "c", strategy=strategy, clock=clock, outlier_detection=outlier)
    assert strategy.builds == 1
    picker = lb.picker
    for _ in range(60):  # a failure-percentage interval ends every second
        clock.advance(1.0)
        with lb.lease():
            pass
    assert strategy.builds == 1
    assert lb.picker is picker


def test_replace_reads_each_weight_once() -> None:
    class Shifty(Mapping[str, float]):
        """Gives a valid weight on the first read of each key, a negative one afterwards."""

        def __init__(self) -> None:
            self.reads: dict[str, int] = {}

        def __getitem__(self, server: str) -> float:
            self.reads[server] = self.reads.get(server, 0) + 1
            return 2.0 if self.reads[server] == 1 else -1.0

        def __iter__(self) -> Iterator[str]:
            return iter(["a", "b"])

        def __len__(self) -> int:
            return 2

    lb = LoadBalancer()
    lb.replace(Shifty())
    assert lb.weights == {"a": 2.0, "b": 2.0}


def test_get_is_a_method_that_says_what_it_does() -> None:
    parameters = inspect.signature(LoadBalancer.get).parameters
    assert list(parameters) == ["self", "key", "exclude"]
    assert "exclude" in (LoadBalancer.get.__doc__ or "")
    lb = balancer("a", "b")
    get = lb.get  # a saved reference follows the pool, unlike a saved picker
    picker = lb.picker
    lb.unregister("a")
    assert {get() for _ in range(10)} == {"b"}
    assert "a" in {picker.pick() for _ in range(10)}


def test_exclude_is_checked_and_never_slips_in_excluded_servers() -> None:
    lb = balancer("a", "b", "c")
    with pytest.raises(TypeError, match="exclude must be a collection of server names, not str"):
        lb.get(exclude="a")
    with pytest.raises(TypeError, match="exclude must hold server names"):
        lb.get(exclude=[1])  # type: ignore[list-item]
    assert {lb.get(exclude={"a", "b"}) for _ in range(10)} == {"c"}
    with lb.lease(exclude=("a", "c")) as server:
        assert server == "b"
    assert lb.get(exclude=frozenset({"a", "b", "c"})) in {"a", "b", "c"}  # all tried: any


def test_a_step_back_is_caught_by_a_mutation_before_any_lease() -> None:
    clock, lb = ejected_until_1030()
    clock.now = 10.0
    assert lb.set_weight("b", 2)  # the first thing to see the new time is a mutation
    clock.advance(31.0)
    lb.refresh()
    assert not lb.stats()["a"].ejected
