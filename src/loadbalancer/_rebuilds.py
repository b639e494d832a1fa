"""The rebuild thread: picker rebuilds that the request path calls for, run off that path.

A failing lease that ejects its server, or a lease that finds a slow-start step due, must not
wait for a picker build (a Maglev table, a ring), and neither must any other request. So the
request path only asks: it queues its balancer here, and one daemon thread per process
catches each queued balancer up (ejections, expiries, then one build and publication) under
that balancer's lock, in the order they were queued. Requests meanwhile pick from the
previous picker.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from queue import SimpleQueue
from typing import Protocol

__all__ = ["CatchesUp", "generation", "schedule"]

_log = logging.getLogger("loadbalancer")


class CatchesUp(Protocol):
    """What the rebuild thread calls: apply everything due and publish a new picker."""

    def _catch_up(self) -> None: ...


_queue: SimpleQueue[weakref.ref[CatchesUp]] = SimpleQueue()
_thread: threading.Thread | None = None
_starting = threading.Lock()
# Held while a catch-up runs, and by fork() (see _hold_for_fork), so that no child is born
# with a balancer's lock held by a thread it does not have. Reentrant: a callback on the
# rebuild thread may fork.
_building = threading.RLock()
_generation = 0


def generation() -> int:
    """Which process's queue this is: it changes in a forked child, whose queue starts empty.

    A balancer that notes the generation it was queued in knows, after a fork, that it is not
    queued any more.
    """
    return _generation


def schedule(balancer: weakref.ref[CatchesUp]) -> None:
    """Queue ``balancer`` for a catch-up on the rebuild thread, starting the thread if need be.

    Never blocks for long: ``SimpleQueue.put`` never blocks. The thread holds balancers by
    weak reference: one that is garbage by the time its turn comes is skipped. Raises
    ``RuntimeError`` if the thread cannot be started (at interpreter shutdown, or when the
    process is out of threads): the caller must then do the work itself.
    """
    _queue.put(balancer)
    thread = _thread
    if thread is None or not thread.is_alive():
        _start()


def _start() -> None:
    global _thread
    with _starting:
        if _thread is None or not _thread.is_alive():
            thread = threading.Thread(target=_run, name="loadbalancer rebuilds", daemon=True)
            thread.start()
            _thread = thread


def _run() -> None:
    while True:
        balancer = _queue.get()()
        if balancer is not None:
            try:
                with _building:
                    balancer._catch_up()
            except BaseException:
                # _catch_up logs and retries its own failures; this is the last resort that
                # keeps the thread alive for every other balancer, even after a SystemExit
                # raised by a strategy or an event callback.
                _log.exception("a background rebuild failed")
            del balancer  # no reference kept while waiting: the balancer may be collected


def _forget_after_fork() -> None:
    """In a forked child the thread is gone: start afresh, with nothing queued."""
    global _queue, _thread, _starting, _building, _generation
    _queue = SimpleQueue()
    _thread = None
    _starting = threading.Lock()
    _building = threading.RLock()
    _generation += 1


def _hold_for_fork() -> None:
    _building.acquire()


def _release_after_fork() -> None:
    _building.release()


if hasattr(os, "register_at_fork"):  # POSIX only: elsewhere nothing forks
    os.register_at_fork(
        before=_hold_for_fork,
        after_in_parent=_release_after_fork,
        after_in_child=_forget_after_fork,
    )
