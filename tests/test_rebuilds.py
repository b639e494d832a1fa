"""The rebuild thread: what the request path calls for is built off it, promptly, losing nothing."""

from __future__ import annotations

import os
import threading
import time
import warnings

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
from loadbalancer import _balancer as balancer_module

from .fakes import FakeClock

WAIT = 10.0  # seconds: a bound on waiting for the rebuild thread, never a pause


class Gated(Strategy):
    """Round-robin whose builds wait at a gate, and can be told to fail; it notes each build."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.broken: type[BaseException] | None = None
        self.failed = threading.Event()
        self.threads: list[str] = []

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        self.threads.append(threading.current_thread().name)
        assert self.gate.wait(WAIT)
        if self.broken is not None:
            self.failed.set()
            raise self.broken("build failed")
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


def no_rebuild_thread(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Keep the rebuild thread out of it: return the list of balancers queued for it."""
    queued: list[object] = []
    monkeypatch.setattr(balancer_module, "schedule", queued.append)
    return queued


def test_refresh_applies_what_requests_queued_as_of_the_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queued = no_rebuild_thread(monkeypatch)
    strategy, clock, events = Gated(), FakeClock(), Events()
    lb = balancer(strategy, clock, events)
    for _ in range(50):
        lb.done("a", ok=False)
    assert len(queued) == 1  # queued once, however many failures: one entry per server
    assert not lb.stats()["a"].ejected  # nothing applied on the request path
    failed_at = clock.now
    clock.advance(5)
    lb.refresh()
    assert lb.stats()["a"].ejected
    assert "a" not in {lb.get() for _ in range(6)}
    [ejected] = events.seen
    assert ejected.at == failed_at - 0.0  # the ejection counts from the failure, not the build
    assert "2 consecutive failures" in ejected.detail  # as counted when it called for it
    clock.advance(25)  # OutlierDetection's 30 s base ejection, counted from the failure
    lb.refresh()
    assert not lb.stats()["a"].ejected


def test_a_success_before_the_judgement_does_not_cancel_the_ejection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_rebuild_thread(monkeypatch)
    lb = balancer(Gated(), FakeClock(), Events())
    lb.done("a", ok=False)
    lb.done("a", ok=False)  # the policy calls for the ejection here
    lb.done("a", ok=True)  # a request that was already under way succeeds
    lb.refresh()
    assert lb.stats()["a"].ejected


def test_without_a_rebuild_thread_the_failing_request_ejects_and_keeps_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cannot_start(_: object) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(balancer_module, "schedule", cannot_start)
    clock, events = FakeClock(), Events()
    lb = balancer(Gated(), clock, events)
    lb.done("a", ok=False)
    lease = lb.acquire()
    while lease.server != "a":
        lease.release()
        lease = lb.acquire()
    with pytest.raises(ValueError, match="the caller's own"), lease:
        raise ValueError("the caller's own error")
    assert lb.stats()["a"].ejected  # judged on the request path instead
    monkeypatch.undo()
    clock.advance(30)
    lb.acquire().release()  # not stuck: the ejection's end is queued for the thread again
    assert events.wait_for(HealthEventKind.RETURNED).server == "a"


def test_a_build_raising_system_exit_leaves_the_thread_serving_every_balancer() -> None:
    broken, clock, events = Gated(), FakeClock(), Events()
    first = balancer(broken, clock, events)
    broken.broken = SystemExit
    first.done("a", ok=False)
    first.done("a", ok=False)
    assert broken.failed.wait(WAIT)
    other_events = Events()
    other = balancer(Gated(), FakeClock(), other_events)
    other.done("b", ok=False)
    other.done("b", ok=False)
    assert other_events.wait_for(HealthEventKind.EJECTED).server == "b"


def test_a_failed_pool_change_forgets_no_ejected_or_unhealthy_server() -> None:
    strategy, clock, events = Gated(), FakeClock(), Events()
    lb = balancer(strategy, clock, events)
    lb.done("a", ok=False)
    lb.done("a", ok=False)
    lb.refresh()
    lb.set_healthy("b", False)
    strategy.broken = RuntimeError
    with pytest.raises(RuntimeError):
        lb.replace(["b", "c"])  # the plan without "a" is never adopted
    strategy.broken = None
    lb.register("d")
    assert not {"a", "b"} & {lb.get() for _ in range(8)}


def test_each_call_returns_with_its_events_delivered_in_the_order_they_happened() -> None:
    for _ in range(30):
        seen: list[str] = []

        def slow(event: HealthEvent, seen: list[str] = seen) -> None:
            time.sleep(0.001)  # a callback doing I/O: the other thread runs meanwhile
            seen.append(event.kind.value)

        lb = LoadBalancer(outlier_detection=OutlierDetection(consecutive_failures=2), on_event=slow)
        lb.replace(["a", "b", "c"])
        lb.done("a", ok=False)
        lb.done("a", ok=False)  # the rebuild thread ejects "a" and reports it
        lb.refresh()
        lb.set_healthy("b", False)
        assert seen == ["ejected", "unhealthy", "panic"]


def test_a_forked_child_catches_up_a_balancer_queued_before_the_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_rebuild_thread(monkeypatch)
    events = Events()
    lb = balancer(Gated(), FakeClock(), events)
    lb.done("a", ok=False)
    lb.done("a", ok=False)  # queued for a thread that will never serve it, in this process
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads
        pid = os.fork()
    if pid == 0:  # the child: its own rebuild thread must catch the balancer up
        code = 1
        try:
            lb.done("a", ok=False)
            ejected = events.wait_for(HealthEventKind.EJECTED)  # told by the child's thread
            code = 0 if ejected.server == "a" and lb.stats()["a"].ejected else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


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
    strategy.broken = RuntimeError
    lb.done("a", ok=False)
    lb.done("a", ok=False)
    assert strategy.failed.wait(WAIT)  # the rebuild thread tried, and the build raised
    with pytest.raises(RuntimeError, match="build failed"):
        lb.refresh()  # not the request path: the error is the caller's to see
    assert not lb.stats()["a"].ejected  # rolled back, consistently with the picker
    assert "a" in {lb.get() for _ in range(3)}
    strategy.broken = None
    lb.refresh()  # the failures were queued again, not lost
    assert lb.stats()["a"].ejected
    assert [e.kind for e in events.seen] == [HealthEventKind.EJECTED]
    assert "rebuilding the picker failed" in caplog.text  # logged by the rebuild thread


def test_rebuild_in_background_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="rebuild_in_background"):
        LoadBalancer(rebuild_in_background="yes")  # type: ignore[arg-type]
