"""The rebuild thread: picker rebuilds that the request path calls for, run off that path.

A failing lease that ejects its server, or a lease that finds a slow-start step due, must not
wait for a picker build (a Maglev table, a ring), and neither must any other request. So the
request path only asks: it queues its balancer here, and one daemon thread per process
catches each queued balancer up (ejections, expiries, then one build and publication) under
that balancer's lock. Requests meanwhile pick from the previous picker.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from queue import SimpleQueue
from typing import Protocol

__all__ = ["CatchesUp", "schedule"]

_log = logging.getLogger("loadbalancer")


class CatchesUp(Protocol):
    """What the rebuild thread calls: apply everything due and publish a new picker."""

    def _catch_up(self) -> None: ...


_queue: SimpleQueue[weakref.ref[CatchesUp]] = SimpleQueue()
_thread: threading.Thread | None = None
_starting = threading.Lock()


def schedule(balancer: weakref.ref[CatchesUp]) -> None:
    """Queue ``balancer`` for a catch-up on the rebuild thread; never blocks for long.

    ``SimpleQueue.put`` is reentrant and never blocks, so this is safe from any thread, even
    a signal handler's. The thread holds balancers by weak reference: one that is garbage
    by the time its turn comes is skipped.
    """
    _queue.put(balancer)
    if _thread is None:
        _start()


def _start() -> None:
    global _thread
    with _starting:
        if _thread is None:
            thread = threading.Thread(target=_run, name="loadbalancer rebuilds", daemon=True)
            thread.start()
            _thread = thread


def _run() -> None:
    while True:
        balancer = _queue.get()()
        if balancer is not None:
            try:
                balancer._catch_up()
            except Exception:
                # _catch_up logs and retries its own failures; this is a last resort that
                # keeps the thread alive for every other balancer.
                _log.exception("a background rebuild failed")
            del balancer  # no reference kept while waiting: the balancer may be collected


def _forget_after_fork() -> None:
    """In a forked child the thread is gone: start afresh, with nothing queued."""
    global _queue, _thread, _starting
    _queue = SimpleQueue()
    _thread = None
    _starting = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX only: elsewhere nothing forks
    os.register_at_fork(after_in_child=_forget_after_fork)
