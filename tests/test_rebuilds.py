"""The rebuild thread: what the request path calls for is built off it, promptly, losing nothing."""

from __future__ import annotations

import threading

import pytest

from loadbalancer import (
    HealthEvent,
    HealthEventKind,
    LoadBalancer,
    OutlierDetection,
    Picker,
    RoundRobinStrategy,
    Snapshot,
    Strategy,
)

from .fakes import FakeClock

WAIT = 10.0  # seconds: a bound on waiting for the rebuild thread, never a pause


class Gated(Strategy):
    """Round-robin whose builds wait at a gate, and can be told to fail; it notes each build."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.broken = False
        self.failed = threading.Event()
        self.threads: list[str] = []

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        self.threads.append(threading.current_thread().name)
        assert self.gate.wait(WAIT)
        if self.broken:
            self.failed.set()
            raise RuntimeError("build failed")
        return RoundRobinStrategy().build(snapshot, previous)


class Events:
    """Health events as they come, with a way to wait for one kind on another thread."""

    def __init__(self) -> None:
        self.seen: list[HealthEvent] = []
        self._arrived = threading.Condition()

    def __call__(self, event: HealthEvent) -> None:
        with self._arrived:
            self.seen.append(event)
            self._arrived.notify_all()

    def wait_for(self, kind: HealthEventKind) -> HealthEvent:
        with self._arrived:
            assert self._arrived.wait_for(lambda: any(e.kind is kind for e in self.seen), WAIT)
            return next(e for e in self.seen if e.kind is kind)


def balancer(strategy: Strategy, clock: FakeClock, events: Events) -> LoadBalancer:
    lb = LoadBalancer(
        strategy,
        clock=clock,
        outlier_detection=OutlierDetection(consecutive_failures=2),
        on_event=events,
    )
    lb.replace(["a", "b", "c"])
    return lb


def test_a_failing_request_never_waits_for_the_build_its_ejection_needs() -> None:
    strategy, clock, events = Gated(), FakeClock(), Events()
    lb = balancer(strategy, clock, events)
    strategy.gate.clear()  # every build from here on blocks until the test opens the gate
    finished = threading.Event()

    def failing_requests() -> None:
        for _ in range(2):
            lb.done("a", ok=False)  # the second one calls for the ejection
        with pytest.raises(ValueError, match="failing lease"), lb.lease():
            raise ValueError("and a failing lease")
        finished.set()

    thread = threading.Thread(target=failing_requests)
    thread.start()
    assert finished.wait(WAIT)  # it returned while the build was still held at the gate
    thread.join(WAIT)
    # Meanwhile, picks come from the previous picker: the failing server is still in it.
    assert "a" in {lb.get() for _ in range(3)}
    strategy.gate.set()
    ejected = events.wait_for(HealthEventKind.EJECTED)
    assert ejected.server == "a"
    assert "a" not in {lb.get() for _ in range(6)}
    assert strategy.threads[-1] == "loadbalancer rebuilds"


def test_refresh_applies_what_requests_queued_as_of_the_failures() -> None:
    strategy, clock, events = Gated(), FakeClock(), Events()
    lb = balancer(strategy, clock, events)
    lb.done("a", ok=False)
    lb.done("a", ok=False)
    failed_at = clock.now
    clock.advance(5)
    lb.refresh()
    assert lb.stats()["a"].ejected
    assert "a" not in {lb.get() for _ in range(6)}
    ejected = events.wait_for(HealthEventKind.EJECTED)
    assert ejected.at == failed_at  # the ejection counts from the failure, not from the build
    clock.advance(25)  # OutlierDetection's 30 s base ejection, counted from the failure
    lb.refresh()
    assert not lb.stats()["a"].ejected


def test_a_lease_that_finds_an_ejection_over_queues_its_end() -> None:
    strategy, clock, events = Gated(), FakeClock(), Events()
    lb = balancer(strategy, clock, events)
    lb.done("a", ok=False)
    lb.done("a", ok=False)
    lb.refresh()
    clock.advance(30)
    lb.acquire().release()  # finds the end due, and leaves it to the rebuild thread
    returned = events.wait_for(HealthEventKind.RETURNED)
    assert returned.server == "a"
    assert "a" in {lb.get() for _ in range(3)}


def test_a_failed_background_build_changes_nothing_and_loses_no_ejection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy, clock, events = Gated(), FakeClock(), Events()
    lb = balancer(strategy, clock, events)
    strategy.broken = True
    lb.done("a", ok=False)
    lb.done("a", ok=False)
    assert strategy.failed.wait(WAIT)  # the rebuild thread tried, and the build raised
    with pytest.raises(RuntimeError, match="build failed"):
        lb.refresh()  # not the request path: the error is the caller's to see
    assert not lb.stats()["a"].ejected  # rolled back, consistently with the picker
    assert "a" in {lb.get() for _ in range(3)}
    strategy.broken = False
    lb.refresh()  # the failures were queued again, not lost
    assert lb.stats()["a"].ejected
    assert [e.kind for e in events.seen] == [HealthEventKind.EJECTED]
    assert "rebuilding the picker failed" in caplog.text  # logged by the rebuild thread


def test_rebuild_in_background_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="rebuild_in_background"):
        LoadBalancer(rebuild_in_background="yes")  # type: ignore[arg-type]
