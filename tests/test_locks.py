"""acquire_contended: a contended lock is taken once its holder lets go, by yielding or blocking."""

from __future__ import annotations

import threading

from loadbalancer._locks import acquire_contended


def test_a_waiter_takes_the_lock_once_the_holder_releases_it() -> None:
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
