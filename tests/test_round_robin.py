"""Round-robin: exact order, continuity across pool changes, exact fairness under threads."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import threading
from collections import Counter

import pytest

from loadbalancer import LoadBalancer, RoundRobinStrategy
from loadbalancer.strategies import round_robin


def rr(*servers: str) -> LoadBalancer:
    lb = LoadBalancer(strategy=RoundRobinStrategy())
    for server in servers:
        lb.register(server)
    return lb


def test_order_is_registration_order() -> None:
    lb = rr("c", "a", "b")
    assert [lb.get() for _ in range(6)] == ["c", "a", "b", "c", "a", "b"]


def test_registering_continues_the_rotation() -> None:
    lb = rr("a", "b", "c")
    assert [lb.get(), lb.get()] == ["a", "b"]
    lb.register("d")
    assert [lb.get() for _ in range(5)] == ["c", "d", "a", "b", "c"]


def test_unregistering_the_next_server_moves_on_to_its_successor() -> None:
    lb = rr("a", "b", "c")
    assert lb.get() == "a"
    lb.unregister("b")
    assert [lb.get() for _ in range(3)] == ["c", "a", "c"]


def test_unregistering_the_rest_still_continues() -> None:
    lb = rr("a", "b", "c", "d")
    assert [lb.get(), lb.get()] == ["a", "b"]
    lb.replace(["a", "b"])
    assert [lb.get() for _ in range(3)] == ["a", "b", "a"]


@pytest.mark.parametrize("threads", [2, 8])
def test_concurrent_picks_are_exactly_fair(threads: int) -> None:
    servers = ["a", "b", "c", "d", "e"]
    lb = rr(*servers)
    rounds = 1000
    start = threading.Barrier(threads)
    counts: list[Counter[str]] = []

    def worker() -> None:
        start.wait()
        counts.append(Counter(lb.get() for _ in range(rounds * len(servers))))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = sum(counts, Counter())
    # Every pick takes the next position exactly once, so the shares are exact, not approximate.
    assert total == Counter(dict.fromkeys(servers, rounds * threads))


_FREE_THREADED_SCRIPT = """
import sys, sysconfig
real = sysconfig.get_config_var
sysconfig.get_config_var = lambda name: 1 if name == "Py_GIL_DISABLED" else real(name)
sys.version_info = (3, 14, 0, "final", 0)  # where itertools.cycle was thought thread-safe
from loadbalancer import Endpoint, Snapshot
from loadbalancer.strategies import round_robin
picker = round_robin.RoundRobinStrategy().build(
    Snapshot.of(tuple(map(Endpoint, "abc")), lambda: 0.0)
)
print(round_robin._CYCLE_IS_THREAD_SAFE, "".join(picker.pick() for _ in range(5)))
"""


def test_free_threaded_builds_use_the_counter_rotation_whatever_the_version() -> None:
    # itertools.cycle may skip, repeat or raise StopIteration under concurrent next() on any
    # free-threaded build (python/cpython#124397, #135639).
    result = subprocess.run(
        [sys.executable, "-c", _FREE_THREADED_SCRIPT], capture_output=True, check=True, text=True
    )
    assert result.stdout.split() == ["False", "abcab"]
    assert round_robin._CYCLE_IS_THREAD_SAFE is not bool(
        sysconfig.get_config_var("Py_GIL_DISABLED")
    )


def test_the_counter_rotation_for_free_threaded_builds_gives_the_same_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(round_robin, "_CYCLE_IS_THREAD_SAFE", False)
    lb = rr("a", "b", "c")
    assert [lb.get() for _ in range(5)] == ["a", "b", "c", "a", "b"]
    lb.register("d")
    assert [lb.get() for _ in range(4)] == ["c", "d", "a", "b"]
    positions = round_robin.positions(4, 2)
    assert [next(positions) for _ in range(6)] == [2, 3, 0, 1, 2, 3]
