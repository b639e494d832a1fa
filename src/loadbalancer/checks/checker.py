"""HealthChecker: active health checks on a background thread, every probe in its own thread."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeAlias, final

from ._core import (
    Core,
    HealthCheckTarget,
    call_sync_probe,
    check_probe,
    is_async_callable,
    logger,
)
from ._result import ProbeResult
from ._state import HealthCheckStatus

__all__ = ["HealthChecker"]

_Result: TypeAlias = "tuple[str, str | None]"  # (server, None if it passed else why it failed)

# Put in the running round's queue by stop(), so a round waiting for answers wakes at once.
# Compared by identity; no server is named "".
_STOP: _Result = ("", None)


@final
class HealthChecker:
    """Probe every registered server on a schedule and tell the balancer which are healthy.

    Each round re-reads ``lb.servers`` (new servers are probed from the next round on, removed
    ones forgotten), runs ``probe(server)`` for every server, each in its own thread, and waits
    at most ``timeout`` seconds for the answers; an answer is applied the moment it arrives.
    A probe passes by returning True or a healthy ``ProbeResult``; one that raises, returns
    anything else, or has not answered by ``timeout`` fails (an unhealthy ``ProbeResult``
    brings its reason to ``status()`` and the log). A healthy server becomes unhealthy after
    ``fall`` failures in a row and an unhealthy one healthy after ``rise`` successes in a row
    (HAProxy ``inter 2s rise 2 fall 3``); every verdict goes to ``lb.set_healthy`` and each
    round ends with ``lb.refresh()``. The next round starts ``interval`` seconds after one
    ends, plus up to ``jitter`` x ``interval`` at random (Envoy's interval jitter).

    One slow or hanging probe never delays the others: probes do not share threads, a round
    never waits past ``timeout``, and a server whose previous probe is still running is not
    probed again but charged another failure, so a probe that hangs for good takes its server
    down after ``fall`` rounds.

    New servers: with ``initially_healthy=True`` (the default, as in Envoy) a server counts as
    healthy until ``fall`` probes fail. With ``initially_healthy=False`` the checker marks a
    server unhealthy the first time it sees it and healthy after ``rise`` probes pass. Until
    that first sight (the next round after ``register``) the balancer treats the server as
    healthy; call ``lb.set_healthy(server, False)`` after ``register`` to close that gap.

    ``start()`` runs the first round at once on a background thread; ``stop()`` (or leaving
    ``with HealthChecker(...)``) wakes that thread, joins it, then joins probes still running
    (the built-in probes give up after their own ``timeout``; a custom probe that never
    returns would hold ``stop()`` forever). Verdicts stay as last published. ``check_now()``
    runs one round in the caller's thread, started or not; call ``stop()`` afterwards to
    join probes it leaves running.

    ``clock`` times the rounds and stamps statuses; waiting itself uses real time, so with a
    fake clock a round ends when the clock passes its deadline *as an answer arrives*, or after
    ``timeout`` real seconds without one. Every method may be called from any thread; rounds
    never overlap.
    """

    __slots__ = (
        "_answered",
        "_core",
        "_lifecycle",
        "_probe_threads",
        "_round_lock",
        "_stop",
        "_thread",
        "_wakeup",
    )

    def __init__(
        self,
        lb: HealthCheckTarget,
        probe: Callable[[str], bool | ProbeResult],
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
        # The class check first: an async probe class has an async __call__ too.
        if is_async_callable(check_probe(probe)):
            raise TypeError("probe is a coroutine function; use AsyncHealthChecker for it")
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
        self._lifecycle = threading.Lock()  # serialises start and stop
        # One round at a time; guards the two below. Re-entrant so that stop() called from a
        # set_healthy hook, inside a round, does not deadlock.
        self._round_lock = threading.RLock()
        # Per server, an Event set once its latest probe has answered: until then it is not
        # probed again. The thread lives a moment longer, so threads are tracked apart, every
        # one until it is seen to have ended, for stop() to join.
        self._answered: dict[str, threading.Event] = {}
        self._probe_threads: list[threading.Thread] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wakeup: queue.SimpleQueue[_Result] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start checking on a background thread; RuntimeError if already started."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("HealthChecker is already started")
            self._stop = stop = threading.Event()  # fresh, so a stopped checker can restart
            thread = threading.Thread(
                target=self._run, args=(stop,), name="loadbalancer-health", daemon=True
            )
            thread.start()
            self._thread = thread

    def stop(self) -> None:
        """Stop checking and wait for the background thread and running probes to end.

        Prompt: the scheduler is woken, not left to finish its sleep or its round. It also
        waits for probes that ``check_now()`` left running, so it is the way to leave no
        thread behind whether the checker was started or not. Idempotent.
        """
        with self._lifecycle:
            thread = self._thread
            if thread is not None:
                self._stop.set()
                wakeup = self._wakeup
                if wakeup is not None:
                    wakeup.put(_STOP)
                if thread is not threading.current_thread():  # stop() from a set_healthy hook
                    thread.join()
                self._thread = None
            with self._round_lock:  # a check_now() round may be starting probes
                probes = list(self._probe_threads)
            current = threading.current_thread()
            for probe in probes:
                if probe is not current:
                    probe.join()

    @property
    def running(self) -> bool:
        """Whether the background thread is started (and not yet stopped)."""
        return self._thread is not None

    def __enter__(self) -> HealthChecker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- rounds -------------------------------------------------------------------------------

    def check_now(self) -> dict[str, bool]:
        """Run one round now in this thread; return every server's verdict after it."""
        with self._round_lock:
            return self._round(None)

    def status(self) -> dict[str, HealthCheckStatus]:
        """Each checked server's verdict and recent results, as of the last probe answer."""
        return self._core.statuses()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with self._round_lock:
                    self._round(stop)
            except Exception:  # a failing balancer call must not end health checking
                logger.exception("health check round failed; retrying after the interval")
            if stop.wait(self._core.delay()):  # an Event, not a sleep: stop() wakes it
                return

    def _round(self, stop: threading.Event | None) -> dict[str, bool]:
        """One round; with ``stop`` (the background thread's) it ends early when stop is set."""
        core = self._core
        results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        if stop is not None:
            # Published before stop is tested: stop() sets the event, then reads _wakeup, so
            # either this test sees the event or stop() sees this queue.
            self._wakeup = results
            if stop.is_set():
                return {}
        servers = core.begin_round()
        deadline = core.clock() + core.timeout
        pending: set[str] = set()
        for server in servers:
            previous = self._answered.get(server)
            if previous is not None and not previous.is_set():
                core.charge_busy(server)
                continue
            answered = threading.Event()
            thread = threading.Thread(
                target=_probe,
                args=(core.probe, server, results, answered),
                name=f"loadbalancer-health-probe[{server}]",
                daemon=True,
            )
            self._answered[server] = answered
            self._probe_threads.append(thread)
            thread.start()
            pending.add(server)
        while pending:
            remaining = deadline - core.clock()
            if remaining <= 0:
                break
            try:
                item = results.get(timeout=remaining)
            except queue.Empty:
                break
            if item is _STOP:
                return {}  # stopping is not a verdict: leave the pending probes unjudged
            if core.clock() > deadline:
                break  # answered too late: judged with the probes that did not answer
            server, failure = item
            pending.discard(server)
            core.record(server, failure is None, failure)
        core.charge_unanswered(servers, pending)
        # Forget servers that left once their probe has answered, and threads that ended.
        followed = core.tracker.statuses
        self._answered = {
            s: e for s, e in self._answered.items() if s in followed or not e.is_set()
        }
        self._probe_threads = [t for t in self._probe_threads if t.is_alive()]
        core.lb.refresh()
        return core.verdicts(servers)


def _probe(
    probe: Callable[[str], object],
    server: str,
    results: queue.SimpleQueue[_Result],
    answered: threading.Event,
) -> None:
    failure = call_sync_probe(probe, server)
    answered.set()
    results.put((server, failure))
