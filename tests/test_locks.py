"""acquire_contended: a contended lock is taken once its holder lets go, by yielding or blocking."""

from __future__ import annotations

import threading

import pytest

from loadbalancer import _locks
from loadbalancer._locks import acquire_contended


def test_under_the_gil_a_waiter_yields_until_the_holder_lets_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock = threading.Lock()
    lock.acquire()
    yields: list[float] = []

    def yielding(seconds: float) -> None:
        yields.append(seconds)
        if len(yields) == 3:
            lock.release()  # the holder finishes while the waiter has yielded

    monkeypatch.setattr(_locks, "_sleep", yielding)
    monkeypatch.setattr(_locks, "_gil_enabled", lambda: True)
    acquire_contended(lock)
    assert yields == [0, 0, 0]  # three yields of the GIL, not a blocking wait
    assert lock.locked()  # and then the waiter holds it
    lock.release()


def test_without_a_gil_a_waiter_blocks_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    yields: list[float] = []
    monkeypatch.setattr(_locks, "_sleep", yields.append)
    monkeypatch.setattr(_locks, "_gil_enabled", lambda: False)
    lock = threading.Lock()
    lock.acquire()
    releaser = threading.Timer(0.05, lock.release)
    releaser.start()
    acquire_contended(lock)  # blocks until the timer releases it
    releaser.join()
    assert yields == []
    assert lock.locked()
    lock.release()


def test_a_waiter_blocks_after_its_yields_when_the_lock_is_held_long() -> None:
    lock = threading.Lock()
    lock.acquire()
    waiting = threading.Event()
    acquired = threading.Event()

    def waiter() -> None:
        waiting.set()
        acquire_contended(lock)
        acquired.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(5)
    # Held far longer than the waiter's yields last: it must fall back to blocking, not fail.
    assert not acquired.wait(0.2)
    lock.release()
    assert acquired.wait(5)
    thread.join(5)
    assert lock.locked()  # the waiter holds it now
    lock.release()


def test_counts_stay_exact_when_many_threads_contend_for_one_lock() -> None:
    lock = threading.Lock()
    total = [0]
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            if not lock.acquire(False):
                acquire_contended(lock)
            value = total[0]
            total[0] = value + 1  # read and write apart: only the lock keeps this exact
            lock.release()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert total[0] == 80_000
