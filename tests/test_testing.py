"""loadbalancer.testing: FakeClock, the virtual-time event loop, and their promises."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import math
import socket
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import pytest

from loadbalancer import Attempt, LoadBalancer, RetryPolicy, Verdict, testing
from loadbalancer.testing import FakeClock, VirtualTimeLoop, local_replicas, run

from . import fakes

# -- FakeClock ----------------------------------------------------------------------------------


def test_fake_clock_reads_its_start_until_moved() -> None:
    assert FakeClock()() == 0.0
    clock = FakeClock(12.5)
    assert [clock(), clock()] == [12.5, 12.5]
    assert clock.now == 12.5


def test_advance_moves_forward_and_returns_the_new_reading() -> None:
    clock = FakeClock(10)
    assert clock.advance(2.5) == 12.5
    assert clock.advance(0) == 12.5
    assert clock() == 12.5


def test_sleep_advances_instead_of_waiting() -> None:
    clock = FakeClock()
    started = time.perf_counter()
    clock.sleep(86_400.0)
    assert clock() == 86_400.0
    assert time.perf_counter() - started < 1.0  # a real sleep would take a day


@pytest.mark.parametrize("method", ["advance", "sleep"])
def test_moving_backwards_is_refused(method: str) -> None:
    clock = FakeClock(5.0)
    with pytest.raises(ValueError, match="seconds must be finite and >= 0, got -1"):
        getattr(clock, method)(-1)
    assert clock() == 5.0


@pytest.mark.parametrize("bad", ["1", None, True])
def test_non_numbers_are_refused(bad: object) -> None:
    clock = FakeClock()
    with pytest.raises(TypeError, match="seconds must be a number"):
        clock.advance(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="start must be a number"):
        FakeClock(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="now must be a number"):
        clock.set(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_readings_stay_finite(bad: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="now must be finite"):
        clock.set(bad)
    with pytest.raises(ValueError, match="seconds must be finite"):
        clock.advance(bad)
    assert clock() == 0.0


def test_set_may_step_back_like_a_corrected_wall_clock() -> None:
    clock = FakeClock(100.0)
    clock.set(40.0)
    assert clock() == 40.0
    clock.set(140.0)
    assert clock() == 140.0


def test_advances_from_many_threads_all_count() -> None:
    clock = FakeClock()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(2000):
            clock.advance(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock() == 16_000


def test_fake_clock_drives_a_balancer() -> None:
    clock = FakeClock()
    lb = LoadBalancer(clock=clock)
    lb.register("a")
    lease = lb.acquire()
    clock.advance(0.25)
    lease.release()
    assert lb.stats()["a"].latency_ewma == 0.25


def test_fake_clock_sleep_is_a_balancers_sleep() -> None:
    clock = FakeClock()
    lb = LoadBalancer(clock=clock, sleep=clock.sleep)
    lb.replace(["a", "b"])
    tries: list[tuple[str, float]] = []

    def attempt(server: str) -> int:
        tries.append((server, clock()))
        return 503 if len(tries) == 1 else 200

    def classify(attempt: Attempt[int]) -> Verdict:
        if attempt.result == 503:  # the server asks for half a second of patience
            return Verdict(ok=False, retry=True, retry_after=0.5)
        return Verdict(ok=True)

    assert lb.call(attempt, classify=classify, retry=RetryPolicy(attempts=2)) == 200
    assert tries == [("a", 0.0), ("b", 0.5)]


def test_repr_shows_the_reading() -> None:
    assert repr(FakeClock(3)) == "FakeClock(now=3.0)"


def test_the_tests_fake_clock_is_the_shipped_one_starting_at_1000() -> None:
    clock = fakes.FakeClock()
    assert isinstance(clock, FakeClock)
    assert clock() == 1000.0
    assert fakes.FakeClock(5)() == 5.0


# -- VirtualTimeLoop and run ----------------------------------------------------------------


def test_an_hour_of_sleep_takes_no_time_and_exactly_an_hour() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        before = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - before

    started = time.perf_counter()
    assert run(main()) == 3600.0
    assert time.perf_counter() - started < 1.0


def test_time_starts_at_start() -> None:
    async def now() -> float:
        return asyncio.get_running_loop().time()

    assert run(now()) == 0.0
    assert run(now(), start=1e6) == 1e6
    loop = VirtualTimeLoop(start=42.0)
    try:
        assert loop.time() == 42.0
    finally:
        loop.close()


def test_wait_for_times_out_at_its_exact_deadline() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen = []
        for timeout in (2.5, 0.1, 0.2, 7.0):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.sleep(100), timeout=timeout)
            seen.append(loop.time())
        return seen

    # Each deadline is computed as time() + timeout, as asyncio does; it fires at exactly that.
    expected = [10.0 + 2.5]
    for timeout in (0.1, 0.2, 7.0):
        expected.append(expected[-1] + timeout)
    assert run(main(), start=10.0) == expected


def test_wait_for_returns_the_result_when_it_comes_first() -> None:
    async def main() -> tuple[str, float]:
        async def answer() -> str:
            await asyncio.sleep(1.5)
            return "done"

        result = await asyncio.wait_for(answer(), timeout=3)
        return result, asyncio.get_running_loop().time()

    assert run(main()) == ("done", 1.5)


def test_wait_with_timeout_returns_at_the_timeout() -> None:
    async def main() -> tuple[int, int, float]:
        fast = asyncio.ensure_future(asyncio.sleep(1))
        slow = asyncio.ensure_future(asyncio.sleep(50))
        done, pending = await asyncio.wait({fast, slow}, timeout=4)
        slow.cancel()
        return len(done), len(pending), asyncio.get_running_loop().time()

    assert run(main()) == (1, 1, 4.0)


def test_sleepers_wake_in_order_at_their_times() -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        woke.append((name, asyncio.get_running_loop().time()))

    async def main() -> None:
        await asyncio.gather(sleeper("late", 2.0), sleeper("early", 1.0), sleeper("mid", 1.5))

    run(main())
    assert woke == [("early", 1.0), ("mid", 1.5), ("late", 2.0)]


def test_sleeps_longer_than_the_loops_longest_wait_are_exact() -> None:
    # asyncio waits at most a day per select: a week takes several jumps, ending exactly.
    async def main() -> float:
        await asyncio.sleep(7 * 86_400)
        return asyncio.get_running_loop().time()

    assert run(main()) == 7 * 86_400


def test_cancelled_timers_do_not_stop_time_reaching_later_ones() -> None:
    async def main() -> float:
        for _ in range(200):  # each leaves a cancelled timeout at +60 behind
            await asyncio.wait_for(asyncio.sleep(0.5), timeout=60)
        await asyncio.sleep(1000)
        return asyncio.get_running_loop().time()

    assert run(main()) == 200 * 0.5 + 1000


def test_advance_moves_time_and_due_timers_run() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        fired: list[float] = []
        loop.call_later(3, lambda: fired.append(loop.time()))
        loop.advance(5)
        await asyncio.sleep(0)
        return loop.time(), fired

    assert run(main()) == (5.0, [5.0])


def test_advance_refuses_to_go_back() -> None:
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(ValueError, match="seconds must be finite and >= 0"):
            loop.advance(-1)
        assert loop.time() == 0.0
    finally:
        loop.close()


def test_the_loop_clock_can_drive_a_balancer() -> None:
    async def main() -> float | None:
        loop = asyncio.get_running_loop()
        lb = LoadBalancer(clock=loop.time)
        lb.register("a")
        with lb.lease():
            await asyncio.sleep(0.125)
        return lb.stats()["a"].latency_ewma

    assert run(main(), start=50.0) == 0.125


def test_work_on_threads_still_wakes_the_loop() -> None:
    # No timer is pending, so the loop blocks on its real selector until the self-pipe wakes it.
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, sum, range(10))
        return result, loop.time()

    assert run(main()) == (45, 0.0)


def test_real_socket_io_still_works() -> None:
    async def main() -> bytes:
        left, right = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=left)
        try:
            right.sendall(b"ping\n")
            return await reader.readline()
        finally:
            writer.close()
            right.close()

    assert run(main()) == b"ping\n"


def test_run_returns_closes_the_loop_and_cancels_leftover_tasks() -> None:
    seen: dict[str, object] = {}

    async def forever() -> None:
        try:
            await asyncio.sleep(math.inf)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    async def main() -> int:
        seen["loop"] = asyncio.get_running_loop()
        seen["task"] = asyncio.ensure_future(forever())
        await asyncio.sleep(0)
        return 7

    assert run(main()) == 7
    loop = seen["loop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert loop.is_closed()
    assert seen["cancelled"] is True


def test_run_raises_what_the_coroutine_raises() -> None:
    async def main() -> None:
        await asyncio.sleep(1)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run(main())


def test_bad_start_is_refused() -> None:
    with pytest.raises(TypeError, match="start must be a number"):
        VirtualTimeLoop("0")  # type: ignore[arg-type]


def test_loop_class_looks_public() -> None:
    assert VirtualTimeLoop.__name__ == "VirtualTimeLoop"
    assert VirtualTimeLoop.__module__ == "loadbalancer.testing"
    assert issubclass(VirtualTimeLoop, asyncio.SelectorEventLoop)
    assert list(inspect.signature(VirtualTimeLoop).parameters) == ["start"]


def test_the_loops_docstring_matches_its_typing_stub() -> None:
    # The class is defined on first use (to import asyncio late); mypy and IDEs read a stub.
    tree = ast.parse(Path(testing.__file__).read_text(encoding="utf-8"))
    (stub,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == "VirtualTimeLoop"
    ]
    assert " ".join((ast.get_docstring(stub) or "").split()) == " ".join(
        (VirtualTimeLoop.__doc__ or "").split()
    )


# -- the module itself ------------------------------------------------------------------------


def test_importing_testing_loads_no_networking_module() -> None:
    code = (
        "import json, sys\n"
        "import loadbalancer.testing as t\n"
        "names = ['asyncio', 'selectors', 'socket', 'ssl']\n"
        "before = [n for n in names if n in sys.modules]\n"
        "t.VirtualTimeLoop\n"
        "print(json.dumps([before, [n for n in names if n in sys.modules]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout)
    assert before == []
    assert {"asyncio", "selectors"} <= set(after)


def test_every_public_name_has_a_docstring() -> None:
    assert list(testing.__all__) == sorted(testing.__all__, key=lambda n: (not n.isupper(), n))
    for name in testing.__all__:
        value = getattr(testing, name)
        if typing.get_origin(value) is not None:
            continue  # a type alias: documented by the string after it, not introspectable
        if inspect.isclass(value) or inspect.isfunction(value):
            assert (value.__doc__ or "").strip(), name


def test_unknown_attributes_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        testing.Nothing  # noqa: B018


# -- local_replicas ------------------------------------------------------------------------------


def test_local_replicas_answer_name_themselves_and_stop() -> None:
    import httpx

    with local_replicas(2) as replicas, httpx.Client() as client:
        first, second = replicas.addresses
        document = client.post(f"http://{first}/items/7?x=1", content=b"abc").json()
        assert document == {
            "served_by": first,
            "method": "POST",
            "path": "/items/7?x=1",
            "host": first,
            "body_length": 3,
        }
        assert client.get(f"http://{second}/status/503").status_code == 503
        events = client.get(f"http://{second}/events?count=4").text
        assert events == "".join(f"data: {i}\n\n" for i in range(4))
        replicas.stop(second)
        assert replicas.addresses == [first]
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://{second}/")


@pytest.mark.parametrize("n", [0, 101, 2.0, True])
def test_local_replicas_refuse_a_bad_count_naming_it(n: object) -> None:
    with pytest.raises(ValueError, match=r"n must be an int in 1\.\.100"):
        local_replicas(n)  # type: ignore[arg-type]
