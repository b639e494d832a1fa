"""Test doubles for code that uses ``loadbalancer``: a fake clock and virtual-time asyncio.

* ``FakeClock``: a clock that moves only when told; inject it as a balancer's ``clock=`` and,
  through ``FakeClock.sleep``, wherever code takes a ``sleep=``.
* ``VirtualTimeLoop`` and ``run``: an asyncio event loop on virtual time, so code that sleeps
  or times out (``asyncio.sleep``, ``asyncio.wait_for``, ``asyncio.wait(timeout=)``) runs at
  once and at exactly the times it asked for.

Importing this module loads no networking module: asyncio is imported on first use of
``VirtualTimeLoop`` or ``run``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._validation import check_number

if TYPE_CHECKING:
    import asyncio

    from _typeshed import FileDescriptorLike

__all__ = [
    "FakeClock",
    "VirtualTimeLoop",
    "run",
]

_T = TypeVar("_T")


# -- a clock that moves only when told ---------------------------------------------------------


class FakeClock:
    """A clock for tests: call it to read the time, ``advance`` or ``sleep`` to move it.

    ``now`` is the reading, in seconds from an arbitrary origin (``start``). It never moves on
    its own, so tests of timeouts, ejections and slow start are exact and take no real time.
    ``set`` may also step it back, as a wall clock does when NTP corrects it: use that to test
    code that must survive a clock that is not monotonic.
    """

    __slots__ = ("_lock", "now")

    def __init__(self, start: float = 0.0) -> None:
        self.now = check_number(start, "start")
        self._lock = threading.Lock()  # advance is read-modify-write; tests share clocks

    def __call__(self) -> float:
        """The current reading."""
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new reading."""
        step = check_number(seconds, "seconds", at_least=0)
        with self._lock:
            self.now += step
            return self.now

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` instead of waiting: a drop-in for ``time.sleep``."""
        self.advance(seconds)

    def set(self, now: float) -> None:
        """Set the reading to ``now``, even an earlier one (a wall clock stepped back)."""
        reading = check_number(now, "now")
        with self._lock:
            self.now = reading

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"


# -- an event loop on virtual time ---------------------------------------------------------------

if TYPE_CHECKING:

    class VirtualTimeLoop(asyncio.SelectorEventLoop):
        """An asyncio event loop whose clock is virtual: it jumps to the next timer when idle.

        When no callback is ready and no I/O is pending, a real loop sleeps until its next
        timer; this one sets its clock to that timer's deadline instead, exactly, and goes on.
        ``asyncio.sleep(3600)`` therefore returns at once with ``loop.time()`` 3600 later, and
        ``wait_for`` timeouts fire at precisely their deadlines. Real I/O still works (the
        selector is polled without waiting), with one consequence of time being virtual:
        while a timer is scheduled, I/O that is not ready yet waits for nobody, so a timeout
        around a real socket or thread fires before it answers. With no timer at all the loop
        blocks on real I/O as usual (the self-pipe of ``call_soon_threadsafe`` included).

        ``time()`` starts at ``start``; pass ``loop.time`` as a balancer's or health checker's
        ``clock=`` to share the virtual clock.
        """

        def __init__(self, start: float = 0.0) -> None: ...

        def time(self) -> float:
            """The virtual time, in seconds."""
            ...

        def advance(self, seconds: float) -> None:
            """Move virtual time forward by ``seconds`` (>= 0); timers now due run next."""
            ...


def _define_virtual_time_loop() -> type[VirtualTimeLoop]:
    """Create the ``VirtualTimeLoop`` class: asyncio is imported here, on first use."""
    import asyncio
    import selectors

    class _VirtualSelector(selectors.BaseSelector):
        """A real selector, polled without waiting; an idle wait advances virtual time instead."""

        def __init__(self, advance: Callable[[float], None]) -> None:
            self._real = selectors.DefaultSelector()
            self._advance = advance

        def register(
            self, fileobj: FileDescriptorLike, events: int, data: Any = None
        ) -> selectors.SelectorKey:
            return self._real.register(fileobj, events, data)

        def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
            return self._real.unregister(fileobj)

        def modify(
            self, fileobj: FileDescriptorLike, events: int, data: Any = None
        ) -> selectors.SelectorKey:
            return self._real.modify(fileobj, events, data)

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if timeout is None:  # no timer to jump to: only real I/O can wake the loop
                return self._real.select(None)
            ready = self._real.select(0)
            if not ready and timeout > 0:
                self._advance(timeout)
            return ready

        def close(self) -> None:
            self._real.close()

        def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
            return self._real.get_key(fileobj)

        def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
            return self._real.get_map()

    class _VirtualTimeLoop(asyncio.SelectorEventLoop):
        __doc__ = _LOOP_DOC

        def __init__(self, start: float = 0.0) -> None:
            self._virtual_now = 0.0
            super().__init__(_VirtualSelector(self.advance))
            try:  # checked only now: a loop half made would complain when collected
                self._virtual_now = check_number(start, "start")
            except BaseException:
                self.close()
                raise

        def time(self) -> float:
            """The virtual time, in seconds."""
            return self._virtual_now

        def advance(self, seconds: float) -> None:
            """Move virtual time forward by ``seconds`` (>= 0); timers now due run next."""
            # The loop waits (deadline - now) for its next timer, and in binary floating point
            # now + (deadline - now) is the deadline again (barring a rounding tie, possible
            # only for a deadline some 2**52 times now): timers fire at exactly their time.
            self._virtual_now += check_number(seconds, "seconds", at_least=0)

    _VirtualTimeLoop.__name__ = _VirtualTimeLoop.__qualname__ = "VirtualTimeLoop"
    _VirtualTimeLoop.__module__ = __name__
    return _VirtualTimeLoop  # type: ignore[return-value]  # the stub above describes it


_LOOP_DOC = """An asyncio event loop whose clock is virtual: it jumps to the next timer when idle.

When no callback is ready and no I/O is pending, a real loop sleeps until its next timer; this
one sets its clock to that timer's deadline instead, exactly, and goes on.
``asyncio.sleep(3600)`` therefore returns at once with ``loop.time()`` 3600 later, and
``wait_for`` timeouts fire at precisely their deadlines. Real I/O still works (the selector is
polled without waiting), with one consequence of time being virtual: while a timer is
scheduled, I/O that is not ready yet waits for nobody, so a timeout around a real socket or
thread fires before it answers. With no timer at all the loop blocks on real I/O as usual (the
self-pipe of ``call_soon_threadsafe`` included).

``time()`` starts at ``start``; pass ``loop.time`` as a balancer's or health checker's
``clock=`` to share the virtual clock.
"""


def _loop_class() -> type[VirtualTimeLoop]:
    """``VirtualTimeLoop``, defined on the first call."""
    cls: type[VirtualTimeLoop] | None = globals().get("VirtualTimeLoop")
    if cls is None:
        cls = _define_virtual_time_loop()
        globals()["VirtualTimeLoop"] = cls  # later lookups find it without __getattr__
    return cls


def __getattr__(name: str) -> object:
    """Define ``VirtualTimeLoop`` on first access, importing asyncio only then (PEP 562)."""
    if name == "VirtualTimeLoop":
        return _loop_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(coro: Coroutine[Any, Any, _T], *, start: float = 0.0) -> _T:
    """Run ``coro`` on a fresh ``VirtualTimeLoop`` starting at ``start``, close it, return.

    The counterpart of ``asyncio.run``: tasks still running at the end are cancelled, async
    generators and the default executor are shut down, and the loop is closed.
    """
    loop = _loop_class()(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            # No timeout: in virtual time a join timeout would expire at once.
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left on ``loop`` and let them finish, as ``asyncio.run`` does."""
    import asyncio

    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during loadbalancer.testing.run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
