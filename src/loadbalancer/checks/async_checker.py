"""AsyncHealthChecker: the asyncio twin of HealthChecker, one task per probe."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import final

from ._core import (
    Core,
    HealthCheckTarget,
    call_async_probe,
    call_sync_probe,
    is_async_callable,
    logger,
)
from ._result import ProbeResult
from ._state import HealthCheckStatus

__all__ = ["AsyncHealthChecker"]


@final
class AsyncHealthChecker:
    """Probe every registered server on a schedule from an asyncio task; HealthChecker's twin.

    Same parameters, rounds, rise/fall rule, jitter, timeout and new-server behaviour as
    ``HealthChecker`` (see there). Probes may be ``async def`` callables (or objects with an
    ``async __call__``, such as ``AsyncTcpProbe``), run as one task each and cancelled at the
    round's ``timeout``; or blocking callables, run each in a thread of its own rather than
    asyncio's shared default executor, where hanging probes could starve the application's
    other ``to_thread`` calls and name resolution. A blocking probe cannot be cancelled: its
    server is not probed again until it returns, and charged a failure each round meanwhile.

    ``start()`` (awaited or not, from async code) creates the checking task, whose first
    round runs at once; ``await aclose()`` (or leaving ``async with``) cancels the task,
    cancels and awaits probe tasks, and waits for blocking probes still running in threads.
    Nothing is left behind.
    ``await check_now()`` runs one round in the caller's task, started or not; ``aclose()``
    afterwards waits for what it left running.

    Use a checker from one event loop; methods are not thread-safe. Rounds never overlap.
    """

    __slots__ = ("_answers", "_core", "_is_async", "_lock", "_probes", "_task", "_threads")

    def __init__(
        self,
        lb: HealthCheckTarget,
        probe: Callable[[str], Awaitable[bool | ProbeResult]] | Callable[[str], bool | ProbeResult],
        *,
        interval: float = 2.0,
        timeout: float = 1.0,
        rise: int = 2,
        fall: int = 3,
        jitter: float = 0.1,
        initially_healthy: bool = True,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._core = Core(
            lb,
            probe,
            interval=interval,
            timeout=timeout,
            rise=rise,
            fall=fall,
            jitter=jitter,
            initially_healthy=initially_healthy,
            clock=clock,
            rng=rng,
        )
        self._is_async = is_async_callable(probe)
        # asyncio.Lock binds to a loop on first contended use only (3.10+), so it can be made
        # here, outside any loop.
        self._lock = asyncio.Lock()
        self._probes: dict[str, asyncio.Task[str | None]] = {}  # the latest of each server
        # Blocking probes: per server, the future its latest thread settles when the probe
        # returns; and every thread not yet seen to end, with its future, for aclose().
        self._answers: dict[str, asyncio.Future[str | None]] = {}
        self._threads: list[tuple[threading.Thread, asyncio.Future[str | None]]] = []
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> asyncio.Future[None]:
        """Start checking in a task on the running loop; RuntimeError if already started.

        It starts the checker when called, as ``AsyncDiscovery.start()`` does, and returns a
        finished future, so ``checker.start()`` and ``await checker.start()`` do the same: a
        forgotten ``await`` loses nothing. Outside a running event loop it raises RuntimeError.
        """
        if self._task is not None:
            raise RuntimeError("AsyncHealthChecker is already started")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # asyncio's "no running event loop" does not say what to do
            raise RuntimeError(
                "AsyncHealthChecker.start() needs a running event loop: call it from async "
                "code (`await checker.start()` or `async with checker:`), or use "
                "HealthChecker, which checks from a thread"
            ) from None
        self._task = loop.create_task(self._run(), name="loadbalancer-health")
        started: asyncio.Future[None] = loop.create_future()
        started.set_result(None)
        return started

    async def aclose(self) -> None:
        """Stop checking: cancel and await the task, and wait for running probes to end.

        Also waits for probes ``check_now()`` left running. Idempotent.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # gather, not a bare await: the task's CancelledError is expected, while a
            # cancellation of aclose() itself must still propagate.
            await asyncio.gather(task, return_exceptions=True)
        async with self._lock:  # let a check_now() round finish first
            probes = [t for t in self._probes.values() if not t.done()]
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            threads = list(self._threads)
            await asyncio.gather(*(future for _, future in threads))
            for thread, _ in threads:
                thread.join()  # it settled its future as its last act: this is immediate
            self._probes.clear()
            self._answers.clear()
            self._threads.clear()

    @property
    def running(self) -> bool:
        """Whether the checking task is started (and not yet closed)."""
        return self._task is not None

    async def __aenter__(self) -> AsyncHealthChecker:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- rounds -------------------------------------------------------------------------------

    async def check_now(self) -> dict[str, bool]:
        """Run one round now in this task; return every server's verdict after it."""
        async with self._lock:
            return await self._round()

    def status(self) -> dict[str, HealthCheckStatus]:
        """Each checked server's verdict and recent results, as of the last probe answer."""
        return self._core.statuses()

    async def _run(self) -> None:
        while True:
            try:
                async with self._lock:
                    await self._round()
            except Exception:  # a failing balancer call must not end health checking
                logger.exception("health check round failed; retrying after the interval")
            await asyncio.sleep(self._core.delay())

    async def _round(self) -> dict[str, bool]:
        core = self._core
        loop = asyncio.get_running_loop()
        servers = core.begin_round()
        deadline = core.clock() + core.timeout
        pending: dict[asyncio.Task[str | None], str] = {}
        for server in servers:
            if self._busy(server):
                core.charge_busy(server)
                continue
            task = loop.create_task(
                self._probe(server), name=f"loadbalancer-health-probe[{server}]"
            )
            self._probes[server] = task
            pending[task] = server
        try:
            while pending:
                remaining = deadline - core.clock()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if not done or core.clock() > deadline:
                    break  # late answers are judged with the probes that did not answer
                for task in sorted(done, key=lambda t: servers.index(pending[t])):
                    server = pending.pop(task)
                    failure = task.result()
                    core.record(server, failure is None, failure)
        finally:
            # On timeout, and when this round is itself cancelled: cancelling is asyncio's way
            # to end a late coroutine (a blocking probe's thread runs on; see _busy).
            for task in pending:
                task.cancel()
        core.charge_unanswered(servers, pending.values())
        self._forget_departed()
        core.lb.refresh()
        return core.verdicts(servers)

    def _busy(self, server: str) -> bool:
        task = self._probes.get(server)
        if task is not None and not task.done():
            return True
        answer = self._answers.get(server)
        return answer is not None and not answer.done()

    def _forget_departed(self) -> None:
        followed = self._core.tracker.statuses
        self._probes = {s: t for s, t in self._probes.items() if s in followed or not t.done()}
        self._answers = {s: f for s, f in self._answers.items() if s in followed or not f.done()}
        self._threads = [(t, f) for t, f in self._threads if t.is_alive()]

    async def _probe(self, server: str) -> str | None:
        """Run one probe; None if it passed, else why it failed."""
        if not self._is_async:
            return await self._probe_in_thread(server)
        return await call_async_probe(self._core.probe, server)

    async def _probe_in_thread(self, server: str) -> str | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        thread = threading.Thread(
            target=_call_in_thread,
            args=(self._core.probe, server, loop, future),
            name=f"loadbalancer-health-probe[{server}]",
            daemon=True,
        )
        self._answers[server] = future
        self._threads.append((thread, future))
        thread.start()
        # Shielded: cancelling this task at the timeout must not cancel the future, which
        # tells _busy and aclose() when the thread has really finished.
        return await asyncio.shield(future)


def _call_in_thread(
    probe: Callable[[str], object],
    server: str,
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[str | None],
) -> None:
    failure = call_sync_probe(probe, server)
    # RuntimeError: the loop has closed, so nobody is waiting for this answer any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future, failure)


def _settle(future: asyncio.Future[str | None], failure: str | None) -> None:
    if not future.done():
        future.set_result(failure)
