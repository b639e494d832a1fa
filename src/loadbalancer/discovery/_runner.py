"""The runners: apply a source's memberships to a balancer, in a task or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from .._balancer import LoadBalancer
from .._stats import DiscoveryStatus
from .._validation import check_callable, check_number
from ._apply import Applier, Backoff, MembershipChange, log
from ._source import Source

__all__ = ["AsyncDiscovery", "Discovery", "cancel_and_wait", "wait_set"]

# Every AsyncDiscovery task that has not finished, held strongly (see AsyncDiscovery.start).
_RUNNING: set[asyncio.Task[None]] = set()


class _SourceEndedError(Exception):
    """A source's watch() returned: it must run until cancelled, so it is restarted."""


async def _follow(applier: Applier, backoff: Backoff, ready: Callable[[], None]) -> None:
    """Apply every membership the source yields; on a failure, back off and watch again.

    The backoff grows with each failure in a row, and a watch counts as healthy again only
    once it has run for ``backoff.cap`` seconds: a registry whose read works but whose watch
    then breaks at once is retried ever more slowly, not ten times a second.
    """
    source = applier.source
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        started = loop.time()
        try:
            async for membership in source.watch():
                try:
                    applied = applier.apply(membership)
                except Exception:  # a bad item is the source's bug, not the registry's
                    log.exception("%s: could not apply %r", applier.name, membership)
                    continue
                if applied:
                    ready()
            raise _SourceEndedError("watch() ended")
        except Exception as error:  # CancelledError is not one: cancelling stops the runner
            if loop.time() - started >= backoff.cap:
                failures = 0  # it ran long enough to count as healthy before this failure
            failures += 1
            delay = backoff(failures)
            applier.failed(error, delay, failures)
            await asyncio.sleep(delay)


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait for its end (not its CancelledError: the caller's still raises)."""
    task.cancel()
    await asyncio.wait({task})


async def wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set; False if ``timeout`` passed first."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


def _check(
    lb: object, source: object, on_change: object, backoff_base: object, backoff_max: object
) -> None:
    if not isinstance(lb, LoadBalancer):
        raise TypeError(f"lb must be a LoadBalancer, not {type(lb).__name__}")
    if not isinstance(source, Source):
        raise TypeError(f"source must be a Source, not {type(source).__name__}")
    if on_change is not None:
        check_callable(on_change, "on_change")
        if inspect.iscoroutinefunction(on_change):  # it would be called and never awaited
            raise TypeError("on_change must be a plain function, not a coroutine function")
    check_number(backoff_base, "backoff_base", above=0)
    check_number(backoff_max, "backoff_max", at_least=backoff_base)  # type: ignore[arg-type]


class AsyncDiscovery:
    """Keeps ``lb``'s membership that of ``source``, in a task on the running event loop.

    ``async with AsyncDiscovery(lb, source):`` (or ``start()`` / ``await stop()``). Each
    membership the source yields is applied whole with ``lb.replace()``, so servers that stay
    keep their live state; entries that are not usable are skipped with a warning; one larger
    than ``lb.max_servers`` (fixed when the balancer was made) is refused with an error, and
    the last good membership stays. When the source fails (the registry is down), the
    balancer keeps serving the last membership, and the source is watched again after a
    jittered backoff from ``backoff_base`` doubling up to ``backoff_max`` seconds.
    ``on_change`` receives a ``MembershipChange`` for each change, also logged on the
    ``loadbalancer.discovery`` logger. ``rng`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        lb: LoadBalancer,
        source: Source,
        *,
        on_change: Callable[[MembershipChange], object] | None = None,
        backoff_base: float = 0.1,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check(lb, source, on_change, backoff_base, backoff_max)
        self._applier = Applier(lb, source, on_change, clock)
        self._backoff = Backoff(backoff_base, backoff_max, rng)
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        lb.attach_discovery(self)  # its status shows in lb.stats().discovery

    def start(self) -> None:
        """Start following the source (in the running loop); a second start does nothing."""
        if self._task is not None and not self._task.done():
            return
        ready = self._ready = asyncio.Event()
        task = self._task = asyncio.get_running_loop().create_task(
            self._follow(ready.set),
            name=f"loadbalancer discovery {self._applier.source.name}",
        )
        # The event loop holds tasks only weakly: a runner its caller dropped would be
        # collected mid-watch, and the balancer would silently stop following the registry.
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    async def _follow(self, ready: Callable[[], None]) -> None:
        # A method, so that the running task holds the runner: the balancer keeps only a weak
        # reference to it (for stats().discovery), and a runner nobody else holds must go on.
        await _follow(self._applier, self._backoff, ready)

    async def stop(self) -> None:
        """Stop following: the source's watch is cancelled and has released what it held."""
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until a first membership has been applied; False if ``timeout`` passed first."""
        if self._ready is None:
            raise RuntimeError("start() the runner first")
        return await wait_set(self._ready, timeout)

    @property
    def status(self) -> DiscoveryStatus:
        """How the source and the runner are doing now."""
        return self._applier.status(self._task is not None and not self._task.done())

    def metadata(self, server: str) -> Mapping[str, Any]:
        """What the source said of ``server`` last (etcd values' JSON, say); {} if nothing."""
        return self._applier.metadata(server)

    async def __aenter__(self) -> AsyncDiscovery:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class Discovery:
    """The thread-based twin of ``AsyncDiscovery``, for programs without an event loop.

    ``with Discovery(lb, source):`` (or ``start()`` / ``stop()``): the source runs on an event
    loop in a thread of its own; everything else is as for ``AsyncDiscovery``.
    """

    def __init__(
        self,
        lb: LoadBalancer,
        source: Source,
        *,
        on_change: Callable[[MembershipChange], object] | None = None,
        backoff_base: float = 0.1,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check(lb, source, on_change, backoff_base, backoff_max)
        self._applier = Applier(lb, source, on_change, clock)
        self._backoff = Backoff(backoff_base, backoff_max, rng)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        lb.attach_discovery(self)  # its status shows in lb.stats().discovery

    def start(self) -> Discovery:
        """Start following the source in a thread; a second start does nothing.

        Raise ``RuntimeError`` if the thread of an earlier ``stop()`` that timed out is still
        running (two threads must never feed one balancer), or what failed to start it.
        """
        with self._lock:
            if self._thread is not None:
                if self._thread.is_alive() and self._task is not None:
                    return self
                if self._thread.is_alive():
                    raise RuntimeError("the previous run has not stopped yet")
            started = threading.Event()
            failure: list[BaseException] = []
            self._ready = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(started, failure, self._ready),
                name=f"loadbalancer discovery {self._applier.name}",
                daemon=True,
            )
            self._thread = thread
            thread.start()
            started.wait()
            if failure:
                thread.join()
                self._thread = None
                raise failure[0]
        return self

    def _run(
        self, started: threading.Event, failure: list[BaseException], ready: threading.Event
    ) -> None:
        try:
            loop = asyncio.new_event_loop()
        except BaseException as error:  # out of file descriptors, say: start() raises it
            failure.append(error)
            started.set()
            return
        try:
            task = loop.create_task(_follow(self._applier, self._backoff, ready.set))
            self._loop, self._task = loop, task
            started.set()
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            started.set()
            loop.close()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop following and wait (up to ``timeout`` s) for the thread to end; False if it
        has not ended by then (a source slow to release what it holds)."""
        with self._lock:
            thread = self._thread
            loop, task = self._loop, self._task
            self._loop = self._task = None
            if thread is None:
                return True
            if loop is not None and task is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: the task ended
                    loop.call_soon_threadsafe(task.cancel)
            if thread is threading.current_thread():
                return False  # stop() from on_change: the thread ends once this returns
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "%s: the runner's thread has not stopped after %g s",
                    self._applier.name,
                    timeout,
                )
                return False
            self._thread = None
            return True

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until a first membership has been applied; False if ``timeout`` passed first."""
        return self._ready.wait(timeout)

    @property
    def status(self) -> DiscoveryStatus:
        """How the source and the runner are doing now."""
        thread = self._thread
        return self._applier.status(thread is not None and thread.is_alive())

    def metadata(self, server: str) -> Mapping[str, Any]:
        """What the source said of ``server`` last (etcd values' JSON, say); {} if nothing."""
        return self._applier.metadata(server)

    def __enter__(self) -> Discovery:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
