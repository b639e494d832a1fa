"""AsyncHealthChecker: rounds with async and blocking probes, timeouts, the task lifecycle."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from loadbalancer import LoadBalancer
from loadbalancer.checks import (
    AsyncHealthChecker,
    AsyncHttpProbe,
    AsyncTcpProbe,
    HttpProbe,
    ProbeResult,
    TcpProbe,
)

from .fakes import FakeClock
from .health_servers import HANG, ClosedPort, FakeBalancer, HealthServer, health_threads

WAIT = 5.0  # seconds an Event may take before the test fails; only ever reached on failure

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` and check it left no task and no checker thread behind."""

    async def main() -> T:
        result = await coroutine
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return result

    result = asyncio.run(main())
    assert health_threads() == []
    return result


def checker_for(
    lb: FakeBalancer,
    probe: Callable[[str], Awaitable[bool | ProbeResult]] | Callable[[str], bool | ProbeResult],
    **kwargs: object,
) -> AsyncHealthChecker:
    options: dict[str, object] = {"clock": FakeClock(), "timeout": WAIT, **kwargs}
    return AsyncHealthChecker(lb, probe, **options)  # type: ignore[arg-type]


def verdict_event(lb: FakeBalancer, server: str, healthy: bool) -> asyncio.Event:
    """An asyncio.Event set when ``server`` gets ``healthy``; verdicts arrive on the loop."""
    event = asyncio.Event()
    previous = lb.on_verdict

    def on_verdict(name: str, value: bool) -> None:
        if previous is not None:
            previous(name, value)
        if (name, value) == (server, healthy):
            event.set()

    lb.on_verdict = on_verdict
    return event


def test_parameters_are_checked_like_the_threaded_checker() -> None:
    with pytest.raises(ValueError, match="interval"):
        AsyncHealthChecker(FakeBalancer(), AsyncTcpProbe(), interval=0)
    with pytest.raises(ValueError, match="fall"):
        AsyncHealthChecker(FakeBalancer(), AsyncTcpProbe(), fall=0)
    with pytest.raises(TypeError, match="lb must be"):
        AsyncHealthChecker(None, AsyncTcpProbe())  # type: ignore[arg-type]


@pytest.mark.parametrize("probe", [AsyncTcpProbe, AsyncHttpProbe, TcpProbe, HttpProbe])
def test_a_probe_class_is_refused_naming_the_instance_to_pass(probe: type[TcpProbe]) -> None:
    name = probe.__name__
    expected = f"probe must be a probe instance such as {name}\\(\\), not the class {name}$"
    with pytest.raises(TypeError, match=expected):
        AsyncHealthChecker(FakeBalancer(), probe)  # type: ignore[arg-type]


def test_real_probe_failures_name_their_cause() -> None:
    async def main(refused: str, missing: str) -> None:
        tcp = checker_for(FakeBalancer(refused), AsyncTcpProbe(timeout=1.0), fall=1)
        assert await tcp.check_now() == {refused: False}
        assert tcp.status()[refused].last_failure == "connection refused"
        http = checker_for(FakeBalancer(missing), AsyncHttpProbe(timeout=1.0), fall=1)
        assert await http.check_now() == {missing: False}
        assert http.status()[missing].last_failure == "status 404"

    with ClosedPort() as down, HealthServer(404) as server:
        run(main(down.address, server.address))


def test_rise_and_fall_with_an_async_probe() -> None:
    script = {"a": [False, False, True, False, False, False, True, True]}

    async def probe(server: str) -> bool:
        return script[server].pop(0)

    async def main() -> list[bool]:
        checker = checker_for(FakeBalancer("a"), probe, rise=2, fall=3)
        return [(await checker.check_now())["a"] for _ in range(8)]

    assert run(main()) == [True, True, True, True, True, False, False, True]


def test_initially_unhealthy_and_membership_changes() -> None:
    async def probe(server: str) -> bool:
        return True

    async def main() -> None:
        lb = FakeBalancer("a")
        checker = checker_for(lb, probe, rise=1, initially_healthy=False)
        assert await checker.check_now() == {"a": True}
        assert lb.calls == [("a", False), ("a", True)]
        lb.set_servers("b")
        assert await checker.check_now() == {"b": True}
        assert set(checker.status()) == {"b"}
        assert lb.refreshes == 2

    run(main())


def test_raising_and_non_bool_async_probes_fail() -> None:
    async def probe(server: str) -> bool:
        if server == "raises":
            raise OSError("no route")
        return None  # type: ignore[return-value]

    async def main() -> None:
        checker = checker_for(FakeBalancer("raises", "none"), probe, fall=1)
        assert await checker.check_now() == {"raises": False, "none": False}
        assert checker.status()["raises"].last_failure == "OSError: no route"

    run(main())


def test_blocking_probes_run_in_their_own_threads() -> None:
    names: list[str] = []

    def probe(server: str) -> bool:
        names.append(threading.current_thread().name)
        return server == "up"

    async def main() -> dict[str, bool]:
        checker = checker_for(FakeBalancer("up", "down"), probe, fall=1)
        verdicts = await checker.check_now()
        await checker.aclose()  # joins the probes' threads
        return verdicts

    assert run(main()) == {"up": True, "down": False}
    # Not asyncio's shared default executor, which hanging probes could starve.
    assert sorted(names) == ["loadbalancer-health-probe[down]", "loadbalancer-health-probe[up]"]


def test_a_late_async_probe_is_cancelled_and_fails() -> None:
    clock = FakeClock()

    async def main() -> None:
        cancelled = asyncio.Event()

        async def probe(server: str) -> bool:
            if server == "late":
                clock.advance(2.0)  # answers after the deadline by the clock
                return True
            try:
                await asyncio.Event().wait()  # never answers
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return True

        checker = checker_for(FakeBalancer("late", "hang"), probe, clock=clock, timeout=1.0)
        assert await checker.check_now() == {"late": True, "hang": True}
        status = checker.status()
        assert status["late"].last_failure == status["hang"].last_failure == "no answer within 1 s"
        await asyncio.wait_for(cancelled.wait(), WAIT)

    run(main())


def test_a_hanging_blocking_probe_is_not_run_again_until_it_returns() -> None:
    clock = FakeClock()
    release = threading.Event()
    calls: list[str] = []

    def probe(server: str) -> bool:
        calls.append(server)
        if server == "late":
            clock.advance(2.0)
            return True
        release.wait(WAIT)
        return True

    async def main() -> None:
        checker = checker_for(FakeBalancer("late", "slow"), probe, clock=clock, timeout=1.0, fall=2)
        assert await checker.check_now() == {"late": True, "slow": True}
        assert await checker.check_now() == {"late": False, "slow": False}
        assert checker.status()["slow"].last_failure == "the previous probe has not returned"
        assert calls.count("slow") == 1
        release.set()
        await checker.aclose()  # waits for the blocking probe's thread
        assert health_threads() == []
        await checker.check_now()
        assert calls.count("slow") == 2
        await checker.aclose()

    run(main())


def test_one_hanging_probe_does_not_delay_the_others() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def probe(server: str) -> bool:
            if server == "hang":
                await release.wait()
                return True
            return server == "up"

        lb = FakeBalancer("hang", "up", "down")
        down_marked = verdict_event(lb, "down", False)
        checker = checker_for(lb, probe, fall=1)
        round_task = asyncio.create_task(checker.check_now())
        await asyncio.wait_for(down_marked.wait(), WAIT)
        assert not round_task.done()  # the round still waits for the hanging probe
        assert checker.status()["up"].successes == 1
        release.set()
        assert await round_task == {"hang": True, "up": True, "down": False}

    run(main())


def test_background_checks_with_real_probes() -> None:
    async def main(server: HealthServer, down: str) -> None:
        lb = FakeBalancer(server.address, down)
        marked = verdict_event(lb, down, False)
        async with AsyncHealthChecker(lb, AsyncTcpProbe(timeout=1.0), interval=0.01, fall=2) as c:
            assert c.running
            await asyncio.wait_for(marked.wait(), WAIT)
        assert not c.running
        assert (server.address, False) not in lb.calls

    with HealthServer() as server, ClosedPort() as down:
        run(main(server, down.address))


def test_async_http_probe_marks_a_hanging_server_unhealthy() -> None:
    async def main(server: HealthServer) -> None:
        lb = FakeBalancer(server.url)
        marked = verdict_event(lb, server.url, False)
        probe = AsyncHttpProbe(timeout=0.05)
        async with AsyncHealthChecker(lb, probe, interval=0.01, timeout=1.0, fall=1):
            await asyncio.wait_for(marked.wait(), WAIT)

    with HealthServer(HANG) as server:
        run(main(server))


def test_blocking_http_probe_in_the_async_checker() -> None:
    async def main(server: HealthServer) -> None:
        lb = FakeBalancer(server.address)
        marked = verdict_event(lb, server.address, False)
        async with AsyncHealthChecker(lb, HttpProbe(timeout=1.0), interval=0.01, fall=1):
            await asyncio.wait_for(marked.wait(), WAIT)

    with HealthServer(503) as server:
        run(main(server))


def test_aclose_is_prompt_and_cancels_a_hanging_probe() -> None:
    async def main() -> None:
        entered = asyncio.Event()
        cancelled = asyncio.Event()

        async def probe(server: str) -> bool:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return True

        checker = AsyncHealthChecker(FakeBalancer("a"), probe, timeout=3600, interval=3600)
        await checker.start()
        await asyncio.wait_for(entered.wait(), WAIT)
        await asyncio.wait_for(checker.aclose(), WAIT)
        assert cancelled.is_set()
        assert checker.status()["a"].checked_at is None  # stopping is not a verdict

    run(main())


def test_aclose_waits_for_blocking_probes_to_return() -> None:
    release = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        entered = asyncio.Event()

        def probe(server: str) -> bool:
            loop.call_soon_threadsafe(entered.set)
            release.wait(WAIT)
            return True

        checker = AsyncHealthChecker(FakeBalancer("a"), probe, timeout=3600, interval=3600)
        await checker.start()
        await asyncio.wait_for(entered.wait(), WAIT)
        closing = asyncio.create_task(checker.aclose())
        await asyncio.sleep(0)
        assert not closing.done()
        release.set()
        await asyncio.wait_for(closing, WAIT)

    run(main())


def test_start_twice_raises_and_aclose_is_idempotent() -> None:
    async def probe(server: str) -> bool:
        return True

    async def main() -> None:
        checker = AsyncHealthChecker(FakeBalancer("a"), probe, interval=3600)
        await checker.aclose()  # never started
        await checker.start()
        with pytest.raises(RuntimeError, match="already started"):
            await checker.start()
        await checker.aclose()
        await checker.aclose()
        await checker.start()  # a closed checker may start again
        await checker.aclose()

    run(main())


def test_a_failing_round_does_not_end_checking(caplog: pytest.LogCaptureFixture) -> None:
    async def probe(server: str) -> bool:
        return True

    async def main() -> None:
        lb = FakeBalancer("a")
        second = asyncio.Event()
        refreshes: list[int] = []

        def refresh() -> None:
            refreshes.append(1)
            if len(refreshes) == 1:
                raise RuntimeError("balancer hiccup")
            second.set()

        lb.on_refresh = refresh
        async with AsyncHealthChecker(lb, probe, interval=0.01):
            await asyncio.wait_for(second.wait(), WAIT)

    with caplog.at_level(logging.ERROR, logger="loadbalancer.health"):
        run(main())
    assert "balancer hiccup" in caplog.text


def test_unhealthy_servers_are_not_picked_by_a_real_balancer() -> None:
    async def probe(server: str) -> bool:
        return server != "b"

    async def main() -> None:
        lb = LoadBalancer()
        for server in ("a", "b", "c"):
            lb.register(server)
        checker = AsyncHealthChecker(lb, probe, fall=1, rise=1)
        assert await checker.check_now() == {"a": True, "b": False, "c": True}
        assert "b" not in {lb.get() for _ in range(30)}

    run(main())
