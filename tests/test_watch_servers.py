"""``LoadBalancer.watch_servers``: what is kept per server follows the pool, in order."""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer import LoadBalancer


def test_the_callback_gets_the_servers_now_and_after_each_change() -> None:
    lb = LoadBalancer()
    lb.register("a")
    seen: list[tuple[str, ...]] = []
    stop = lb.watch_servers(seen.append)
    lb.register("b")
    lb.set_weight("a", 3)  # a weight alone: no call
    lb.replace(["b", "a"])  # a new order alone: no call
    lb.replace(["c"])
    lb.unregister("c")
    lb.register("b")
    lb.register("b")  # already there: no change, no call
    stop()
    lb.register("z")
    assert seen == [("a",), ("a", "b"), ("c",), (), ("b",)]


def test_a_full_pool_refusing_a_server_calls_nothing() -> None:
    lb = LoadBalancer(max_servers=1)
    lb.register("a")
    seen: list[tuple[str, ...]] = []
    lb.watch_servers(seen.append)
    assert lb.register("b") is False
    assert seen == [("a",)]


def test_a_first_call_that_raises_propagates_and_watches_nothing() -> None:
    lb = LoadBalancer()
    calls: list[tuple[str, ...]] = []

    def broken(servers: tuple[str, ...]) -> None:
        calls.append(servers)
        raise RuntimeError("cannot open")

    with pytest.raises(RuntimeError, match="cannot open"):
        lb.watch_servers(broken)
    lb.register("a")
    assert calls == [()]


def test_a_later_call_that_raises_is_logged_and_the_change_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lb = LoadBalancer()
    seen: list[tuple[str, ...]] = []

    def flaky(servers: tuple[str, ...]) -> None:
        seen.append(servers)
        if servers:
            raise RuntimeError("boom")

    lb.watch_servers(flaky)
    with caplog.at_level(logging.ERROR, logger="loadbalancer"):
        assert lb.register("a") is True
    assert lb.servers == ("a",)
    assert seen == [(), ("a",)]
    assert "watch_servers callback failed" in caplog.text


def test_a_callback_may_use_the_balancer() -> None:
    lb = LoadBalancer()
    seen: list[tuple[str, ...]] = []

    def grow(servers: tuple[str, ...]) -> None:
        seen.append(servers)
        if servers == ("a",):
            lb.register("b")  # delivered after this call returns, on this thread

    lb.watch_servers(grow)
    lb.register("a")
    assert seen == [(), ("a",), ("a", "b")]


def test_stopping_one_of_two_watches_keeps_the_other() -> None:
    lb = LoadBalancer()
    first: list[tuple[str, ...]] = []
    second: list[tuple[str, ...]] = []
    stop_first = lb.watch_servers(first.append)
    lb.watch_servers(second.append)
    stop_first()
    stop_first()  # twice: harmless
    lb.register("a")
    assert first == [()]
    assert second == [(), ("a",)]


def test_bad_callback_is_refused() -> None:
    with pytest.raises(TypeError, match="callback"):
        LoadBalancer().watch_servers("not callable")  # type: ignore[arg-type]


def test_changes_from_many_threads_end_with_the_pool_as_it_is() -> None:
    lb = LoadBalancer(max_servers=64)
    last: list[tuple[str, ...]] = []
    lock = threading.Lock()

    def record(servers: tuple[str, ...]) -> None:
        with lock:
            last.append(servers)

    lb.watch_servers(record)
    start = threading.Barrier(4)

    def churn(worker: int) -> None:
        start.wait()
        for i in range(200):
            name = f"w{worker}-{i % 5}"
            if not lb.register(name):
                lb.unregister(name)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert last[-1] == lb.servers  # delivered in order: the last call is the pool now


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcde")), max_size=30))
def test_every_membership_change_is_seen_once_and_in_order(
    steps: list[tuple[bool, str]],
) -> None:
    lb = LoadBalancer()
    seen: list[tuple[str, ...]] = []
    lb.watch_servers(seen.append)
    expected: list[tuple[str, ...]] = [()]
    for add, server in steps:
        changed = lb.register(server) if add else lb.unregister(server)
        if changed:
            expected.append(lb.servers)
    assert seen == expected


def test_a_callback_that_changes_the_pool_leaves_no_later_callback_behind() -> None:
    lb = LoadBalancer()
    first: list[tuple[str, ...]] = []
    second: list[tuple[str, ...]] = []

    def grow(servers: tuple[str, ...]) -> None:
        first.append(servers)
        if servers == ("a",):
            lb.register("b")

    lb.watch_servers(grow)
    lb.watch_servers(second.append)
    lb.register("a")
    assert first[-1] == second[-1] == lb.servers == ("a", "b")
    assert second == sorted(second, key=len)  # never an older pool after a newer one


def test_stop_waits_for_a_call_under_way_on_another_thread() -> None:
    lb = LoadBalancer()
    inside = threading.Event()
    let_go = threading.Event()
    calls: list[tuple[str, ...]] = []

    def slow(servers: tuple[str, ...]) -> None:
        calls.append(servers)
        if servers:
            inside.set()
            let_go.wait(10)

    stop = lb.watch_servers(slow)
    changer = threading.Thread(target=lb.register, args=("a",))
    changer.start()
    assert inside.wait(10)
    stopped = threading.Event()

    def stop_it() -> None:
        stop()
        stopped.set()

    stopper = threading.Thread(target=stop_it)
    stopper.start()
    assert not stopped.wait(0.05)  # stop() waits for the call under way...
    let_go.set()
    assert stopped.wait(10)  # ... and returns once it is over
    changer.join()
    stopper.join()
    lb.register("b")
    assert calls == [(), ("a",)]  # and no call comes after
