"""Passive outlier detection: ejection, its length, probation, limits and failure percentage."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from loadbalancer import (
    HealthEvent,
    HealthEventKind,
    LoadBalancer,
    OutlierDetection,
    Picker,
    RandomStrategy,
    RoundRobinStrategy,
    Snapshot,
    Strategy,
)

from .fakes import FakeClock


def pool(
    servers: int = 3, clock: FakeClock | None = None, **settings: float | int | None
) -> tuple[LoadBalancer, FakeClock, list[HealthEvent]]:
    clock = clock or FakeClock()
    events: list[HealthEvent] = []
    lb = LoadBalancer(
        max_servers=100,
        clock=clock,
        outlier_detection=OutlierDetection(**settings),  # type: ignore[arg-type]
        on_event=events.append,
        # These tests pin the policy down: ejections apply at once, on the failing request's
        # path. tests/test_rebuilds.py covers the same changes made on the rebuild thread.
        rebuild_in_background=False,
    )
    lb.replace([f"s{i}" for i in range(servers)])
    return lb, clock, events


def fail(lb: LoadBalancer, server: str, times: int) -> None:
    for _ in range(times):
        assert lb.done(server, ok=False)


def kinds(events: list[HealthEvent]) -> list[tuple[HealthEventKind, str | None]]:
    return [(e.kind, e.server) for e in events]


def test_five_consecutive_failures_eject() -> None:
    lb, clock, events = pool()
    fail(lb, "s1", 4)
    assert not lb.stats()["s1"].ejected
    fail(lb, "s1", 1)
    stats = lb.stats()["s1"]
    assert stats.ejected_until == clock.now + 30
    assert (stats.ejected, stats.eligible, stats.ejections) == (True, False, 1)
    assert kinds(events) == [(HealthEventKind.EJECTED, "s1")]
    assert "5 consecutive failures" in events[0].detail
    assert "s1" not in {lb.get() for _ in range(60)}


def test_a_success_resets_the_count() -> None:
    lb, _, _ = pool()
    fail(lb, "s1", 4)
    lb.done("s1", ok=True)
    fail(lb, "s1", 4)
    assert not lb.stats()["s1"].ejected


def test_failing_leases_eject_too() -> None:
    lb, _, events = pool(consecutive_failures=2)
    while len(events) == 0:
        with pytest.raises(RuntimeError), lb.lease():
            raise RuntimeError("backend error")
    assert events[0].kind is HealthEventKind.EJECTED


def test_the_server_returns_when_the_ejection_ends_and_is_ejected_longer_on_a_relapse() -> None:
    lb, clock, events = pool()
    fail(lb, "s1", 5)
    clock.advance(29.9)
    lb.refresh()
    assert lb.stats()["s1"].ejected
    clock.advance(0.1)
    lb.refresh()  # a lease or done() would do the same
    assert not lb.stats()["s1"].ejected
    assert "s1" in {lb.get() for _ in range(30)}
    fail(lb, "s1", 5)  # relapse on probation: twice the base time
    assert lb.stats()["s1"].ejected_until == clock.now + 60
    assert kinds(events) == [
        (HealthEventKind.EJECTED, "s1"),
        (HealthEventKind.RETURNED, "s1"),
        (HealthEventKind.EJECTED, "s1"),
    ]


def test_an_ejection_ends_on_the_next_lease_without_refresh() -> None:
    lb, clock, _ = pool()
    fail(lb, "s1", 5)
    clock.advance(30)
    lb.acquire().release()
    assert not lb.stats()["s1"].ejected


def test_ejection_time_is_capped() -> None:
    lb, clock, _ = pool(base_ejection_time=10, max_ejection_time=25)
    for expected in (10, 20, 25, 25):
        fail(lb, "s1", 5)
        assert lb.stats()["s1"].ejected_until == clock.now + expected
        clock.advance(expected)
        lb.refresh()


def test_probation_forgives_one_ejection_per_base_time_spent_back_in() -> None:
    lb, clock, _ = pool()
    fail(lb, "s1", 5)
    clock.advance(30)
    lb.refresh()
    fail(lb, "s1", 5)  # second ejection: 60 s
    clock.advance(60)
    lb.refresh()
    clock.advance(60)  # two base times back in: both earlier ejections forgiven
    fail(lb, "s1", 5)
    assert lb.stats()["s1"].ejected_until == clock.now + 30
    assert lb.stats()["s1"].ejections == 1


@pytest.mark.parametrize(("servers", "limit"), [(3, 1), (10, 1), (20, 2), (100, 10)])
def test_at_most_max_ejection_percent_but_at_least_one(servers: int, limit: int) -> None:
    lb, _, _ = pool(servers)
    for i in range(servers):
        fail(lb, f"s{i}", 5)
    assert sum(s.ejected for s in lb.stats().values()) == limit


def test_failure_percentage_ejects_over_an_interval() -> None:
    lb, clock, events = pool(
        failure_percentage=50, minimum_requests=10, interval=10, consecutive_failures=1000
    )
    for i in range(20):
        lb.done("s0", ok=i % 3 == 0)  # two thirds fail, never five in a row
        lb.done("s1", ok=True)
        lb.done("s2", ok=i % 5 != 0)  # a fifth fail
    lb.done("s1", ok=False)  # s1: 1 failure in 21, far below the threshold
    clock.advance(10)
    lb.refresh()
    assert [(s, st.ejected) for s, st in lb.stats().items()] == [
        ("s0", True),
        ("s1", False),
        ("s2", False),
    ]
    assert "13 of 20 requests failed" in events[0].detail


def test_failure_percentage_needs_the_minimum_volume() -> None:
    lb, clock, _ = pool(failure_percentage=50, minimum_requests=10, interval=10)
    fail(lb, "s0", 4)
    clock.advance(10)
    lb.refresh()
    assert not lb.stats()["s0"].ejected


def test_an_ejected_server_is_never_picked_while_others_are_eligible_under_threads() -> None:
    clock = FakeClock()
    ejected = threading.Event()
    returned = threading.Event()

    def on_event(event: HealthEvent) -> None:
        if event.kind is HealthEventKind.EJECTED:
            ejected.set()
        elif event.kind is HealthEventKind.RETURNED:
            returned.set()

    lb = LoadBalancer(
        strategy=RandomStrategy(),
        clock=clock,
        outlier_detection=OutlierDetection(consecutive_failures=3, max_ejection_percent=50),
        on_event=on_event,
    )
    lb.replace(["good1", "good2", "bad"])
    violations: list[str] = []
    counts: Counter[str] = Counter()
    start = threading.Barrier(6)

    def worker() -> None:
        start.wait()
        for _ in range(3000):
            # Flags read before acquire starts: picks that began inside the ejection.
            inside = ejected.is_set() and not returned.is_set()
            lease = lb.acquire()
            counts[lease.server] += 1
            if inside and lease.server == "bad" and not returned.is_set():
                violations.append(lease.server)
            lease.release(ok=lease.server != "bad")

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    start.wait()
    assert ejected.wait(timeout=10)
    clock.advance(30)  # the ejection ends; the next lease brings it back
    for t in threads:
        t.join()
    assert violations == []
    assert all(s.in_flight == 0 for s in lb.stats().values())
    assert counts["bad"] > 0


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"base_ejection_time": 0}, "base_ejection_time"),
        ({"base_ejection_time": 60, "max_ejection_time": 30}, "max_ejection_time"),
        ({"max_ejection_percent": 101}, "max_ejection_percent"),
        ({"failure_percentage": 0}, "failure_percentage"),
        ({"minimum_requests": 2.5}, "minimum_requests"),
        ({"interval": -1}, "interval"),
        ({"consecutive_failures": True}, "consecutive_failures"),
    ],
)
def test_bad_settings(settings: dict[str, object], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        OutlierDetection(**settings)  # type: ignore[arg-type]


def test_outlier_detection_must_be_the_settings_object() -> None:
    with pytest.raises(TypeError, match="outlier_detection"):
        LoadBalancer(outlier_detection=5)  # type: ignore[arg-type]


def test_a_failing_event_callback_does_not_break_the_balancer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: HealthEvent) -> None:
        raise RuntimeError("callback bug")

    lb = LoadBalancer(
        outlier_detection=OutlierDetection(), on_event=broken, rebuild_in_background=False
    )
    lb.replace(["a", "b"])
    fail(lb, "a", 5)
    assert lb.stats()["a"].ejected
    assert "on_event callback failed" in caplog.text


class Breakable(Strategy):
    """Round-robin that can be told to fail its next builds."""

    broken = False

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        if self.broken:
            raise RuntimeError("build failed")
        return RoundRobinStrategy().build(snapshot, previous)


def test_a_failed_rebuild_on_the_request_path_changes_nothing_and_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    events: list[HealthEvent] = []
    strategy = Breakable()
    lb = LoadBalancer(
        strategy,
        clock=clock,
        outlier_detection=OutlierDetection(),
        on_event=events.append,
        rebuild_in_background=False,
    )
    lb.replace(["a", "b", "c"])
    fail(lb, "a", 5)
    strategy.broken = True
    clock.advance(30)  # the ejection is over, but the picker cannot be rebuilt
    lease = lb.acquire()  # the request still goes through, on the current picker
    lease.release()
    assert "rebuilding the picker failed" in caplog.text
    assert lb.stats()["a"].ejected  # rolled back: still ejected, consistently
    assert [e.kind for e in events] == [HealthEventKind.EJECTED]
    strategy.broken = False
    clock.advance(0.5)
    lb.acquire().release()  # within the retry delay: nothing yet
    assert lb.stats()["a"].ejected
    clock.advance(0.5)
    lb.acquire().release()
    assert not lb.stats()["a"].ejected
    assert [e.kind for e in events] == [HealthEventKind.EJECTED, HealthEventKind.RETURNED]


def test_a_failed_rebuild_leaves_set_healthy_without_effect() -> None:
    strategy = Breakable()
    lb = LoadBalancer(strategy)
    lb.replace(["a", "b", "c"])
    strategy.broken = True
    with pytest.raises(RuntimeError):
        lb.set_healthy("a", False)
    assert lb.stats()["a"].healthy
    strategy.broken = False
    assert "a" in {lb.get() for _ in range(3)}


def test_a_lease_never_waits_for_maintenance() -> None:
    clock = FakeClock()
    lb, clock, _ = pool(clock=clock)
    fail(lb, "s1", 5)
    clock.advance(30)
    with lb._lock:  # another thread mid-mutation: the lease must not block on it
        lb.acquire().release()
        assert lb.stats()["s1"].ejected
    lb.acquire().release()
    assert not lb.stats()["s1"].ejected


def test_a_clock_stepping_back_does_not_lengthen_ejections() -> None:
    lb, clock, _ = pool()
    fail(lb, "s1", 5)
    clock.advance(30)
    lb.refresh()
    clock.now -= 60  # the clock steps back
    fail(lb, "s1", 5)
    assert lb.stats()["s1"].ejections == 2


def test_a_rolled_back_ejection_still_keeps_its_server_out_of_later_pools() -> None:
    clock = FakeClock()
    strategy = Breakable()
    lb = LoadBalancer(
        strategy, clock=clock, outlier_detection=OutlierDetection(), rebuild_in_background=False
    )
    lb.replace(["a", "b", "c"])
    fail(lb, "a", 5)
    strategy.broken = True
    clock.advance(30)  # the ejection is over, but the build that returns "a" fails
    with pytest.raises(RuntimeError):
        lb.refresh()
    strategy.broken = False
    lb.register("d")  # a later pool change, within the retry delay: "a" is still ejected
    assert lb.stats()["a"].ejected
    assert "a" not in {lb.get() for _ in range(6)}


def test_a_server_ejected_then_unregistered_leaves_no_trace_in_later_pools() -> None:
    lb, _, _ = pool(servers=3)
    fail(lb, "s0", 5)
    assert lb.stats()["s0"].ejected
    lb.unregister("s0")
    lb.register("s0")  # a new registration: healthy, and picked again
    assert "s0" in {lb.get() for _ in range(3)}
