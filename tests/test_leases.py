"""Leases: in-flight counting, outcomes, latency with a fake clock, and exactness under threads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer import LoadBalancer, NoServersAvailableError, ServerStats

from .fakes import FakeClock


def balancer(*servers: str, clock: FakeClock | None = None) -> LoadBalancer:
    lb = LoadBalancer(clock=clock or FakeClock())
    for server in servers:
        lb.register(server)
    return lb


def test_lease_counts_in_flight_and_records_success_and_latency() -> None:
    clock = FakeClock()
    lb = balancer("a", clock=clock)
    with lb.lease() as server:
        assert server == "a"
        assert lb.stats()["a"].in_flight == 1
        clock.advance(0.25)
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.picks, stats.successes, stats.failures) == (0, 1, 1, 0)
    assert stats.latency_ewma == pytest.approx(0.25)


def test_an_escaping_exception_is_a_failure_and_propagates() -> None:
    lb = balancer("a")
    with pytest.raises(ZeroDivisionError), lb.lease():
        1 / 0  # noqa: B018
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.successes, stats.failures) == (0, 0, 1)


def test_mark_overrides_the_exception_rule() -> None:
    lb = balancer("a")

    def not_found() -> None:
        lease = lb.lease()
        with lease:
            lease.mark(ok=True)  # e.g. a 404 is the backend working as intended
            raise KeyError("not found")

    with pytest.raises(KeyError):
        not_found()
    lease = lb.lease()
    with lease:
        lease.mark(ok=False)  # e.g. a 503 that the caller handled
    stats = lb.stats()["a"]
    assert (stats.successes, stats.failures) == (1, 1)


def test_manual_release_is_counted_once() -> None:
    lb = balancer("a")
    lease = lb.acquire()
    assert lease.server == "a"
    assert lease.release(ok=False) is True
    assert lease.release(ok=True) is False
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.successes, stats.failures) == (0, 0, 1)
    assert lease.released


def test_release_with_explicit_latency() -> None:
    lb = balancer("a")
    lb.acquire().release(latency=0.5)
    assert lb.stats()["a"].latency_ewma == 0.5


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ok": 1}, TypeError),
        ({"ok": "yes"}, TypeError),
        ({"latency": -1}, ValueError),
        ({"latency": float("nan")}, ValueError),
        ({"latency": "1"}, TypeError),
    ],
)
def test_bad_release_arguments_leave_the_lease_open(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    lb = balancer("a")
    lease = lb.acquire()
    with pytest.raises(error):
        lease.release(**kwargs)  # type: ignore[arg-type]
    assert lb.stats()["a"].in_flight == 1
    assert lease.release() is True


def test_releasing_after_unregister_is_safe_and_does_not_touch_a_new_registration() -> None:
    lb = balancer("a")
    lease = lb.acquire()
    assert lb.unregister("a")
    assert lb.register("a")
    assert lease.release() is True
    assert lb.stats()["a"].in_flight == 0
    assert lb.stats()["a"].successes == 0


def test_acquire_on_an_empty_pool_raises_and_counts_nothing() -> None:
    lb = balancer()
    with pytest.raises(NoServersAvailableError):
        lb.acquire()


def test_done_records_outcomes_for_get_style_callers() -> None:
    lb = balancer("a")
    server = lb.get()
    assert lb.done(server, ok=False, latency=0.1) is True
    assert lb.done("gone") is False
    stats = lb.stats()["a"]
    assert (stats.in_flight, stats.picks, stats.failures) == (0, 0, 1)
    assert stats.latency_ewma == 1.0  # a failure counts as at least failure_latency
    with pytest.raises(TypeError, match="ok"):
        lb.done("a", ok="yes")  # type: ignore[arg-type]


def test_peak_ewma_takes_peaks_at_once_and_decays_towards_faster_samples() -> None:
    clock = FakeClock()
    lb = balancer("a", clock=clock)
    lb.done("a", latency=0.1)
    lb.done("a", latency=1.0)
    assert lb.stats()["a"].latency_ewma == 1.0  # a peak is taken at once
    clock.advance(10.0)  # one decay time: the old estimate keeps weight 1/e
    lb.done("a", latency=0.1)
    expected = 1.0 * 0.36787944117144233 + 0.1 * (1 - 0.36787944117144233)
    assert lb.stats()["a"].latency_ewma == pytest.approx(expected)


def test_stats_are_frozen_and_in_registration_order() -> None:
    lb = balancer("b", "a")
    stats = lb.stats()
    assert list(stats) == ["b", "a"]
    assert stats["a"] == ServerStats(
        server="a",
        weight=1,
        in_flight=0,
        picks=0,
        successes=0,
        failures=0,
        cancelled=0,
        latency_ewma=None,
        consecutive_failures=0,
        healthy=True,
        ejected_until=None,
        ejections=0,
        eligible=True,
        effective_weight=1,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats["a"].in_flight = 3  # type: ignore[misc]


def test_in_flight_counts_are_exact_under_threads() -> None:
    lb = LoadBalancer()
    for server in ("a", "b", "c"):
        lb.register(server)
    threads, leases_each = 8, 2000
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        for i in range(leases_each):
            if i % 2:
                with lb.lease():
                    pass
            else:
                lease = lb.acquire()
                lease.release(ok=False)
                lease.release()  # a second release must not count

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    stats = lb.stats().values()
    assert [s.in_flight for s in stats] == [0, 0, 0]
    assert sum(s.picks for s in stats) == threads * leases_each
    assert sum(s.successes for s in stats) == threads * leases_each // 2
    assert sum(s.failures for s in stats) == threads * leases_each // 2


def test_lease_repr() -> None:
    lb = balancer("a")
    lease = lb.acquire()
    assert repr(lease) == "<Lease 'a' in flight>"
    lease.release()
    assert repr(lease) == "<Lease 'a' released>"


_ENDPOINT_STATE = (
    "in_flight",
    "load",
    "picks",
    "successes",
    "failures",
    "cancelled",
    "consecutive_failures",
    "window_from",
    "latency",
    "latency_at",
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([True, False, None]),
            st.floats(min_value=0.0, max_value=30.0),
            st.floats(min_value=0.0, max_value=5.0),
        ),
        max_size=25,
    )
)
def test_a_with_block_records_what_release_records(
    steps: list[tuple[bool | None, float, float]],
) -> None:
    """Lease.__exit__ inlines Endpoint._complete for a success: both must leave the same state."""
    clocks = FakeClock(), FakeClock()
    via_with, via_release = (LoadBalancer(clock=clock) for clock in clocks)
    for lb in via_with, via_release:
        lb.register("a")
        lb.enable_latency_histogram((0.5, 1.0, 5.0))  # the inlined exit records it too
    for ok, duration, pause in steps:
        lease = via_release.acquire()
        with contextlib.suppress(ValueError, asyncio.CancelledError), via_with.lease() as server:
            assert server == lease.server
            for clock in clocks:
                clock.advance(duration)
            if ok is False:
                raise ValueError("the request failed")
            if ok is None:
                raise asyncio.CancelledError  # no outcome
        lease.release(ok)
        for clock in clocks:
            clock.advance(pause)
    ours, theirs = (lb._view.endpoints["a"] for lb in (via_with, via_release))
    assert {name: getattr(ours, name) for name in _ENDPOINT_STATE} == {
        name: getattr(theirs, name) for name in _ENDPOINT_STATE
    }
    assert ours.histogram is not None
    assert theirs.histogram is not None
    assert (ours.histogram.counts, ours.histogram.sum) == (
        theirs.histogram.counts,
        theirs.histogram.sum,
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 640).map(lambda n: n / 64), min_size=1, max_size=20))
def test_a_plain_release_records_what_a_timed_one_records(durations: list[float]) -> None:
    """release() (a success timed by the clock) skips the general path's checks: it must
    record what release(True, latency=the time the lease took) records (durations in 64ths
    of a second, which the fake clock adds up exactly)."""
    clocks = FakeClock(), FakeClock()
    plain, timed = (LoadBalancer(clock=clock) for clock in clocks)
    for lb in plain, timed:
        lb.register("a")
    for duration in durations:
        leases = plain.acquire(), timed.acquire()
        for clock in clocks:
            clock.advance(duration)
        assert leases[0].release() is True
        assert leases[1].release(True, latency=duration) is True
        assert leases[0].release() is False  # once only
    ours, theirs = (lb._view.endpoints["a"] for lb in (plain, timed))
    assert {name: getattr(ours, name) for name in _ENDPOINT_STATE} == {
        name: getattr(theirs, name) for name in _ENDPOINT_STATE
    }
