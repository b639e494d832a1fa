"""HealthChecker: the rise/fall state machine, rounds driven by check_now, the thread lifecycle."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from loadbalancer import HealthEvent, HealthEventKind, LoadBalancer
from loadbalancer.checks import (
    AsyncHttpProbe,
    AsyncTcpProbe,
    HealthChecker,
    HealthCheckStatus,
    HttpProbe,
    ProbeResult,
    TcpProbe,
)
from loadbalancer.checks._state import RiseFall

from .fakes import FakeClock
from .health_servers import ClosedPort, FakeBalancer, TcpListener, TrickleServer, health_threads

WAIT = 5.0  # seconds an Event may take before the test fails; only ever reached on failure

# -- the state machine, against a model -------------------------------------------------------


def model_verdict(results: list[bool], initial: bool, rise: int, fall: int) -> bool:
    """The verdict is that of the latest complete run: ``fall`` failures or ``rise`` passes."""
    for end in range(len(results), 0, -1):
        if end >= fall and not any(results[end - fall : end]):
            return False
        if end >= rise and all(results[end - rise : end]):
            return True
    return initial


def trailing_run(results: list[bool], value: bool) -> int:
    count = 0
    for result in reversed(results):
        if result is not value:
            break
        count += 1
    return count


@given(
    results=st.lists(st.booleans(), max_size=40),
    initial=st.booleans(),
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
)
def test_status_follows_the_model(results: list[bool], initial: bool, rise: int, fall: int) -> None:
    status = HealthCheckStatus(initial)
    for i, ok in enumerate(results):
        before = status
        status = status.after(ok, float(i), rise, fall, None if ok else f"failure {i}")
        assert status.healthy == model_verdict(results[: i + 1], initial, rise, fall)
        assert status.changed_at == (
            float(i) if status.healthy != before.healthy else before.changed_at
        )
    assert status.successes == trailing_run(results, True)
    assert status.failures == trailing_run(results, False)
    assert status.checked_at == (float(len(results) - 1) if results else None)
    failures = [i for i, ok in enumerate(results) if not ok]
    assert status.last_failure == (f"failure {failures[-1]}" if failures else None)


POOL = ("a", "b", "c", "d")


class RiseFallMachine(RuleBasedStateMachine):
    """RiseFall over a changing pool matches per-server histories fed to the model."""

    def __init__(self) -> None:
        super().__init__()
        self.rise = 2
        self.fall = 3
        self.initial = True
        self.tracker = RiseFall(self.rise, self.fall, self.initial)
        self.history: dict[str, list[bool]] = {}
        self.now = 0.0

    @rule(rise=st.integers(1, 4), fall=st.integers(1, 4), initial=st.booleans())
    @precondition(lambda self: not self.history)
    def configure(self, rise: int, fall: int, initial: bool) -> None:
        self.rise, self.fall, self.initial = rise, fall, initial
        self.tracker = RiseFall(rise, fall, initial)

    @rule(servers=st.lists(st.sampled_from(POOL), unique=True))
    def track(self, servers: list[str]) -> None:
        new = self.tracker.track(servers)
        assert new == tuple(s for s in servers if s not in self.history)
        self.history = {s: self.history.get(s, []) for s in servers}

    @rule(server=st.sampled_from(POOL), ok=st.booleans())
    def record(self, server: str, ok: bool) -> None:
        self.now += 1.0
        change = self.tracker.record(server, ok, self.now)
        if server not in self.history:
            assert change is None
            return
        assert change is not None
        self.history[server].append(ok)

    @invariant()
    def verdicts_match_the_model(self) -> None:
        statuses = self.tracker.statuses
        assert list(statuses) == list(self.history)
        for server, results in self.history.items():
            expected = model_verdict(results, self.initial, self.rise, self.fall)
            assert statuses[server].healthy == expected
            assert statuses[server].successes == trailing_run(results, True)
            assert statuses[server].failures == trailing_run(results, False)


TestRiseFallMachine = RiseFallMachine.TestCase
TestRiseFallMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


# -- construction -----------------------------------------------------------------------------


def ok_probe(server: str) -> bool:
    return True


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"interval": 0}, ValueError, "interval"),
        ({"interval": -1.0}, ValueError, "interval"),
        ({"interval": float("nan")}, ValueError, "interval"),
        ({"interval": float("inf")}, ValueError, "interval"),
        ({"interval": "2"}, TypeError, "interval"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"rise": 0}, ValueError, "rise"),
        ({"rise": 1.5}, TypeError, "rise"),
        ({"fall": 0}, ValueError, "fall"),
        ({"fall": True}, TypeError, "fall"),
        ({"jitter": -0.1}, ValueError, "jitter"),
        ({"initially_healthy": 1}, TypeError, "initially_healthy"),
        ({"clock": 3.0}, TypeError, "clock"),
        ({"rng": 42}, TypeError, "rng"),
    ],
)
def test_bad_parameters_are_named(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        HealthChecker(FakeBalancer(), ok_probe, **kwargs)  # type: ignore[arg-type]


def test_lb_and_probe_are_checked() -> None:
    with pytest.raises(TypeError, match="lb must be a LoadBalancer"):
        HealthChecker(object(), ok_probe)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="probe must be callable"):
        HealthChecker(FakeBalancer(), "tcp")  # type: ignore[arg-type]


@pytest.mark.parametrize("probe", [TcpProbe, HttpProbe, AsyncTcpProbe, AsyncHttpProbe])
def test_a_probe_class_is_refused_naming_the_instance_to_pass(probe: type[TcpProbe]) -> None:
    name = probe.__name__
    expected = f"probe must be a probe instance such as {name}\\(\\), not the class {name}$"
    with pytest.raises(TypeError, match=expected):
        HealthChecker(FakeBalancer(), probe)  # type: ignore[arg-type]


def test_async_probes_are_refused() -> None:
    async def probe(server: str) -> bool:
        return True

    with pytest.raises(TypeError, match="AsyncHealthChecker"):
        HealthChecker(FakeBalancer(), probe)  # type: ignore[arg-type]


# -- rounds with check_now --------------------------------------------------------------------


class Scripted:
    """A probe answering from a per-server script of results (True/False/exception)."""

    def __init__(self, **script: list[object]) -> None:
        self.script = script
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, server: str) -> bool:
        with self._lock:
            self.calls.append(server)
            result = self.script[server].pop(0)
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[return-value]  # scripts may return non-bools on purpose


CheckerFactory = Callable[..., HealthChecker]


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    yield
    assert health_threads() == []


@pytest.fixture
def checker_for() -> Iterator[CheckerFactory]:
    """Checkers on a fake clock with a generous timeout, stopped (probes joined) at teardown."""
    made: list[HealthChecker] = []

    def make(lb: FakeBalancer, probe: Callable[[str], bool], **kwargs: object) -> HealthChecker:
        options: dict[str, object] = {"clock": FakeClock(), "timeout": WAIT, **kwargs}
        checker = HealthChecker(lb, probe, **options)  # type: ignore[arg-type]
        made.append(checker)
        return checker

    yield make
    for checker in made:
        checker.stop()


def test_fall_after_consecutive_failures_and_rise_after_consecutive_passes(
    checker_for: CheckerFactory,
) -> None:
    lb = FakeBalancer("a")
    probe = Scripted(a=[False, False, True, False, False, False, True, True])
    checker = checker_for(lb, probe, rise=2, fall=3)
    verdicts = [checker.check_now()["a"] for _ in range(8)]
    assert verdicts == [True, True, True, True, True, False, False, True]
    assert lb.refreshes == 8
    assert [healthy for _, healthy in lb.calls] == [True, *verdicts]  # first sight, then each


def test_initially_unhealthy_servers_are_marked_before_their_first_probe(
    checker_for: CheckerFactory,
) -> None:
    lb = FakeBalancer("a")
    seen_by_probe: list[list[tuple[str, bool]]] = []

    def probe(server: str) -> bool:
        seen_by_probe.append(list(lb.calls))
        return True

    checker = checker_for(lb, probe, rise=2, initially_healthy=False)
    assert checker.check_now() == {"a": False}
    assert seen_by_probe == [[("a", False)]]  # marked before the first probe ran
    assert checker.check_now() == {"a": True}
    assert checker.status()["a"].successes == 2


def test_initially_healthy_servers_are_published_healthy_at_first_sight(
    checker_for: CheckerFactory,
) -> None:
    lb = FakeBalancer("a")
    lb.verdicts["a"] = False  # left behind by an earlier checker
    checker = checker_for(lb, Scripted(a=[True]))
    assert checker.check_now() == {"a": True}
    assert lb.calls[0] == ("a", True)


def test_new_servers_are_probed_and_removed_ones_forgotten(checker_for: CheckerFactory) -> None:
    lb = FakeBalancer("a", "b")
    probe = Scripted(a=[False] * 3, b=[False], c=[False, False])
    checker = checker_for(lb, probe, fall=2)
    assert checker.check_now() == {"a": True, "b": True}
    lb.set_servers("a", "c")
    assert checker.check_now() == {"a": False, "c": True}
    assert set(checker.status()) == {"a", "c"}
    lb.set_servers("c", "a")
    assert checker.check_now() == {"c": False, "a": False}
    assert sorted(probe.calls) == ["a", "a", "a", "b", "c", "c"]
    assert ("b", False) not in lb.calls


def test_raising_and_non_bool_probes_fail(checker_for: CheckerFactory) -> None:
    lb = FakeBalancer("a", "b", "c")
    probe = Scripted(a=[ConnectionError("refused")], b=[None], c=[1])
    checker = checker_for(lb, probe, fall=1)
    assert checker.check_now() == {"a": False, "b": False, "c": False}
    status = checker.status()
    assert status["a"].last_failure == "ConnectionError: refused"
    assert status["b"].last_failure == "probe returned NoneType, not True or a ProbeResult"
    assert status["c"].last_failure == "probe returned int, not True or a ProbeResult"


def test_probe_results_bring_their_reason(checker_for: CheckerFactory) -> None:
    lb = FakeBalancer("up", "down", "mute")
    probe = Scripted(
        up=[ProbeResult(True)], down=[ProbeResult(False, "status 503")], mute=[ProbeResult(False)]
    )
    checker = checker_for(lb, probe, fall=1)
    assert checker.check_now() == {"up": True, "down": False, "mute": False}
    status = checker.status()
    assert (status["up"].successes, status["up"].last_failure) == (1, None)
    assert status["down"].last_failure == "status 503"
    assert status["mute"].last_failure == "probe returned an unhealthy ProbeResult without a reason"


def test_a_real_probe_failure_names_its_cause(
    caplog: pytest.LogCaptureFixture, checker_for: CheckerFactory
) -> None:
    with ClosedPort() as down, caplog.at_level(logging.WARNING, logger="loadbalancer.health"):
        checker = checker_for(FakeBalancer(down.address), TcpProbe(timeout=1.0), fall=1)
        assert checker.check_now() == {down.address: False}
    assert checker.status()[down.address].last_failure == "connection refused"
    assert caplog.messages == [
        f"{down.address} is unhealthy: 1 probe(s) failed in a row (last: connection refused)"
    ]


def test_a_probe_returning_a_coroutine_fails_cleanly(checker_for: CheckerFactory) -> None:
    async def check(server: str) -> bool:
        return True

    lb = FakeBalancer("a")
    checker = checker_for(lb, lambda server: check(server), fall=1)
    assert checker.check_now() == {"a": False}  # and no "never awaited" warning (an error here)
    assert "AsyncHealthChecker" in (checker.status()["a"].last_failure or "")


def test_status_records_times_from_the_clock(checker_for: CheckerFactory) -> None:
    clock = FakeClock(100.0)
    lb = FakeBalancer("a")
    checker = checker_for(lb, Scripted(a=[False, True]), clock=clock, fall=1, rise=1)
    checker.check_now()
    clock.advance(5)
    checker.check_now()
    assert checker.status()["a"] == HealthCheckStatus(
        healthy=True,
        successes=1,
        failures=0,
        checked_at=105.0,
        changed_at=105.0,
        last_failure="probe returned False",
        checked_ago=0.0,
        changed_ago=0.0,
    )
    clock.advance(3)
    status = checker.status()["a"]
    assert (status.checked_ago, status.changed_ago) == (3.0, 3.0)  # seconds, ready to read


def test_a_probe_past_its_timeout_fails_and_is_not_run_again_while_it_hangs(
    checker_for: CheckerFactory,
) -> None:
    clock = FakeClock()
    release = threading.Event()
    calls: list[str] = []

    def probe(server: str) -> bool:
        calls.append(server)
        if server == "late":
            clock.advance(2.0)  # answers, but after the round's deadline by the clock
            return True
        release.wait(WAIT)
        return True

    lb = FakeBalancer("late", "slow")
    # The round must end as soon as "late" answers past the deadline: a real wait of WAIT
    # seconds for "slow" would show in the elapsed time.
    checker = checker_for(lb, probe, clock=clock, timeout=1.0, fall=2)
    started = time.monotonic()
    assert checker.check_now() == {"late": True, "slow": True}
    status = checker.status()
    assert status["late"].last_failure == status["slow"].last_failure == "no answer within 1 s"
    assert checker.check_now() == {"late": False, "slow": False}
    assert time.monotonic() - started < WAIT
    assert checker.status()["slow"].last_failure == "the previous probe has not returned"
    assert (calls.count("late"), calls.count("slow")) == (2, 1)
    release.set()
    checker.stop()  # never started, but it joins the probes check_now() left running
    checker.check_now()
    assert calls.count("slow") == 2


def test_one_hanging_probe_does_not_delay_the_others(checker_for: CheckerFactory) -> None:
    release = threading.Event()
    entered = threading.Event()

    def probe(server: str) -> bool:
        if server == "hang":
            entered.set()
            release.wait(WAIT)
            return True
        return server == "up"

    lb = FakeBalancer("hang", "up", "down")
    down_marked = lb.when("down", False)
    checker = checker_for(lb, probe, fall=1)
    verdicts: list[dict[str, bool]] = []
    round_thread = threading.Thread(target=lambda: verdicts.append(checker.check_now()))
    round_thread.start()
    try:
        assert down_marked.wait(WAIT)
        assert entered.is_set()
        assert not release.is_set()  # the hanging probe is still blocked...
        assert round_thread.is_alive()  # ...and its round still waits for it
        assert checker.status()["up"].successes == 1
    finally:
        release.set()
        round_thread.join(WAIT)
    assert verdicts == [{"hang": True, "up": True, "down": False}]


# -- the background thread --------------------------------------------------------------------


def test_background_checks_mark_a_dead_server_unhealthy() -> None:
    before = set(threading.enumerate())
    with TcpListener() as up, ClosedPort() as down:
        lb = FakeBalancer(up.address, down.address)
        marked = lb.when(down.address, False)
        probe = TcpProbe(timeout=1.0)
        with HealthChecker(lb, probe, interval=0.01, timeout=1.0, fall=2) as checker:
            assert checker.running
            assert marked.wait(WAIT)
        assert not checker.running
        assert (up.address, False) not in lb.calls
        assert checker.status()[down.address].failures >= 2
    assert set(threading.enumerate()) == before


def test_background_checks_bring_a_server_back() -> None:
    answers = {"a": False}
    lb = FakeBalancer("a")
    down = lb.when("a", False)
    checker = HealthChecker(lb, lambda s: answers[s], interval=0.01, rise=2, fall=1)
    checker.start()
    try:
        assert down.wait(WAIT)
        back = lb.when("a", True)
        answers["a"] = True
        assert back.wait(WAIT)
    finally:
        checker.stop()
    assert health_threads() == []


def test_stop_is_prompt_between_rounds() -> None:
    lb = FakeBalancer("a")
    first_round = threading.Event()
    lb.on_refresh = first_round.set
    checker = HealthChecker(lb, ok_probe, interval=3600)
    checker.start()
    assert first_round.wait(WAIT)
    started = time.monotonic()
    checker.stop()
    assert time.monotonic() - started < WAIT  # not the hour of the interval
    assert health_threads() == []


def test_stop_wakes_a_round_that_waits_for_a_hanging_probe() -> None:
    entered = threading.Event()
    release = threading.Event()

    def probe(server: str) -> bool:
        entered.set()
        release.wait(WAIT)
        return True

    checker = HealthChecker(FakeBalancer("a"), probe, timeout=3600)
    checker.start()
    assert entered.wait(WAIT)
    (scheduler,) = [t for t in health_threads() if t.name == "loadbalancer-health"]
    stopper = threading.Thread(target=checker.stop)
    stopper.start()
    scheduler.join(WAIT)
    assert not scheduler.is_alive()  # the round ended while the probe was still blocked
    assert not release.is_set()
    assert stopper.is_alive()  # stop() now waits for the probe to return...
    release.set()
    stopper.join(WAIT)
    assert health_threads() == []  # ...and leaves nothing behind
    assert checker.status()["a"].checked_at is None  # stopping is not a verdict


def test_stop_is_prompt_while_an_http_probe_reads_a_trickle() -> None:
    # The built-in probe's timeout is a deadline, so stop() waits at most about that long for
    # it, not for as long as the server keeps sending a byte now and then.
    with TrickleServer(every=0.2) as server:
        checker = HealthChecker(FakeBalancer(server.address), HttpProbe(timeout=0.5), timeout=5)
        checker.start()
        assert server.trickling.wait(WAIT)
        started = time.monotonic()
        checker.stop()
        assert time.monotonic() - started < 0.75  # 1.5 x the probe's timeout
    assert health_threads() == []


def test_start_twice_raises_stop_is_idempotent_and_restart_works() -> None:
    lb = FakeBalancer("a")
    checker = HealthChecker(lb, ok_probe, interval=3600)
    checker.stop()  # never started: nothing to do
    checker.start()
    with pytest.raises(RuntimeError, match="already started"):
        checker.start()
    checker.stop()
    checker.stop()
    rounds = threading.Semaphore(0)
    lb.on_refresh = rounds.release
    with checker:
        assert rounds.acquire(timeout=WAIT)
    assert health_threads() == []


def test_a_failing_round_does_not_end_checking(caplog: pytest.LogCaptureFixture) -> None:
    lb = FakeBalancer("a")
    second_round = threading.Event()
    refreshes: list[int] = []

    def refresh() -> None:
        refreshes.append(1)
        if len(refreshes) == 1:
            raise RuntimeError("balancer hiccup")
        second_round.set()

    lb.on_refresh = refresh
    with (
        caplog.at_level(logging.ERROR, logger="loadbalancer.health"),
        HealthChecker(lb, ok_probe, interval=0.01),
    ):
        assert second_round.wait(WAIT)
    assert "health check round failed" in caplog.text
    assert "balancer hiccup" in caplog.text


def test_state_changes_are_logged(
    caplog: pytest.LogCaptureFixture, checker_for: CheckerFactory
) -> None:
    lb = FakeBalancer("a", "b")
    probe = Scripted(a=[False, True], b=[True, True])
    checker = checker_for(lb, probe, fall=1, rise=1, initially_healthy=False)
    with caplog.at_level(logging.DEBUG, logger="loadbalancer.health"):
        checker.check_now()
        checker.check_now()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "a is unhealthy until it passes 1 probe(s) in a row") in messages
    assert ("INFO", "b is healthy: 1 probe(s) passed in a row") in messages
    assert ("INFO", "a is healthy: 1 probe(s) passed in a row") in messages
    assert all(r.name == "loadbalancer.health" for r in caplog.records)

    caplog.clear()
    lb2 = FakeBalancer("c")
    with caplog.at_level(logging.WARNING, logger="loadbalancer.health"):
        checker_for(lb2, Scripted(c=[False]), fall=1).check_now()
    assert caplog.messages == [
        "c is unhealthy: 1 probe(s) failed in a row (last: probe returned False)"
    ]


# -- jitter -----------------------------------------------------------------------------------


def test_jitter_adds_up_to_its_share_of_the_interval() -> None:
    checker = HealthChecker(
        FakeBalancer(), ok_probe, interval=2.0, jitter=0.5, rng=random.Random(7)
    )
    delays = [checker._core.delay() for _ in range(500)]
    assert all(2.0 <= d <= 3.0 for d in delays)
    assert max(delays) - min(delays) > 0.9  # spread over the whole range
    again = HealthChecker(FakeBalancer(), ok_probe, interval=2.0, jitter=0.5, rng=random.Random(7))
    assert [again._core.delay() for _ in range(500)] == delays


def test_no_jitter_means_the_exact_interval() -> None:
    checker = HealthChecker(FakeBalancer(), ok_probe, interval=0.25, jitter=0)
    assert {checker._core.delay() for _ in range(10)} == {0.25}


# -- with the real balancer -------------------------------------------------------------------


def test_unhealthy_servers_are_not_picked_by_a_real_balancer() -> None:
    lb = LoadBalancer()
    for server in ("a", "b", "c"):
        lb.register(server)
    checker = HealthChecker(lb, lambda server: server != "b", fall=1, rise=1)
    assert checker.check_now() == {"a": True, "b": False, "c": True}
    assert "b" not in {lb.get() for _ in range(30)}
    assert not lb.stats()["b"].healthy
    checker.stop()


def test_real_probes_and_a_real_balancer_round_by_round() -> None:
    with TcpListener() as up, ClosedPort() as down:
        lb = LoadBalancer()
        lb.register(up.address)
        lb.register(down.address)
        checker = HealthChecker(lb, TcpProbe(timeout=1.0), fall=2, rise=2)
        checker.check_now()
        assert lb.stats()[down.address].healthy  # one failure is not enough
        checker.check_now()
        assert not lb.stats()[down.address].healthy
        assert {lb.get() for _ in range(10)} == {up.address}
        checker.stop()


def test_background_checks_on_a_real_balancer() -> None:
    unhealthy = threading.Event()

    def on_event(event: HealthEvent) -> None:
        if event.kind is HealthEventKind.UNHEALTHY:
            unhealthy.set()

    with TcpListener() as up, ClosedPort() as down:
        lb = LoadBalancer(on_event=on_event)
        lb.register(up.address)
        lb.register(down.address)
        with HealthChecker(lb, TcpProbe(timeout=1.0), interval=0.01, fall=2):
            assert unhealthy.wait(WAIT)
        assert not lb.stats()[down.address].healthy
        assert lb.stats()[up.address].healthy


def test_status_without_a_working_clock_still_gives_the_verdicts(
    checker_for: CheckerFactory,
) -> None:
    clock = FakeClock(100.0)
    checker = checker_for(FakeBalancer("a"), Scripted(a=[False]), clock=clock, fall=1)
    checker.check_now()
    broken = mock.Mock(side_effect=OSError("the clock is gone"))
    with mock.patch.object(checker._core, "clock", broken):
        status = checker.status()["a"]
    assert (status.healthy, status.checked_at, status.checked_ago) == (False, 100.0, None)
