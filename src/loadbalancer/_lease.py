"""Lease: one request in flight, from pick to outcome (success, failure, or none)."""

from __future__ import annotations

import enum
import logging
from bisect import bisect_left
from collections.abc import Callable
from math import exp
from types import TracebackType
from typing import Final, final

from ._locks import acquire_contended
from ._snapshot import Endpoint
from ._validation import check_clock_reading, check_number

__all__ = ["UNMARKED", "Lease", "Recorder", "check_latency", "check_outcome"]

_log = logging.getLogger("loadbalancer")


def check_latency(latency: object) -> float | None:
    """Return ``latency`` if it is None or a finite number of seconds >= 0, else raise."""
    if latency is None:
        return None
    return check_number(latency, "latency", at_least=0) + 0.0  # + 0.0 turns -0.0 into 0.0


def check_outcome(ok: object) -> bool | None:
    """Return ``ok`` if it is True (success), False (failure) or None (no outcome)."""
    if ok is not None and not isinstance(ok, bool):
        raise TypeError(f"ok must be True, False or None, not {type(ok).__name__}")
    return ok


@final
class Recorder:
    """What a lease needs from its balancer, handed over when the balancer is built.

    ``clock`` times the request; ``decay`` and ``failure_latency`` shape the latency estimate
    (see ``Endpoint``); ``failed(endpoint, now)`` is told of every failure, for outlier
    detection. Leases depend on this, never on the balancer itself.
    """

    __slots__ = ("clock", "decay", "failed", "failure_latency")

    def __init__(
        self,
        clock: Callable[[], float],
        decay: float,
        failure_latency: float,
        failed: Callable[[Endpoint, float], None],
    ) -> None:
        self.clock = clock
        self.decay = decay
        self.failure_latency = failure_latency
        self.failed = failed

    def now(self) -> float:
        """Read the clock; raise naming ``clock`` if it returns anything but a finite number."""
        now = self.clock()
        # A finite float passes with one type check and one subtraction (inf and nan fail it).
        if now.__class__ is not float or now - now != 0.0:
            now = check_clock_reading(now)
        return now


class _Unmarked(enum.Enum):
    """No outcome chosen by ``mark`` yet (an enum, so that type checkers narrow on ``is``)."""

    UNMARKED = 0


UNMARKED: Final = _Unmarked.UNMARKED


@final
class Lease:
    """A request in flight on ``server``, counted until released.

    A request ends one of three ways, and the lease records which:

    * **success** (``ok=True``): counted, its latency sampled;
    * **failure** (``ok=False``): counted, fed to outlier detection, its latency sampled as at
      least the strategy's ``failure_latency``, so a fast failure never looks fast;
    * **no outcome** (``ok=None``): the request was cancelled, timed out on the caller's
      side, lost a hedging race or was abandoned. It only stops counting in flight: no success,
      no failure, no latency sample, nothing for outlier detection.

    As a context manager (``with`` or ``async with``) it yields the server and releases on
    exit: a clean exit is a success, an ``Exception`` a failure, and any other
    ``BaseException`` (``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit``,
    ``GeneratorExit``) no outcome, unless ``mark(ok)`` chose otherwise. Without ``with``, call
    ``release(ok)``; releasing again is harmless and not counted. Latency is measured with the
    balancer's clock from acquisition to release. Release always happens, even when the clock
    fails: the request leaves flight, and the clock's error is raised only if the block did
    not raise one of its own.
    """

    __slots__ = ("_endpoint", "_outcome", "_recorder", "_started", "released", "server")

    def __init__(self, recorder: Recorder, endpoint: Endpoint, started: float) -> None:
        self.server = endpoint.server
        self._recorder = recorder
        self._endpoint = endpoint
        self._started = started
        self._outcome: bool | _Unmarked | None = UNMARKED
        self.released = False

    def mark(self, ok: bool | None) -> None:
        """Set the outcome recorded on exit, whatever the block raises (None: no outcome)."""
        self._outcome = check_outcome(ok)

    def release(self, ok: bool | None = True, latency: float | None = None) -> bool:
        """Record the outcome and stop counting the request; False if already released.

        ``ok`` is True (success), False (failure) or None (no outcome, ``latency`` ignored);
        ``latency`` defaults to the time since acquisition.
        """
        if ok is True and latency is None:
            # The usual release, a success timed by the clock (the failover engine and the
            # integrations end every attempt so): the checks and frames below, skipped.
            recorder = self._recorder
            try:
                now = recorder.now()
            except Exception:
                self._end(True, None, self._stale_now())  # release first, as below
                raise
            elapsed = now - self._started
            return self._endpoint._complete(
                self,
                True,
                elapsed if elapsed > 0.0 else 0.0,  # 0: a clock that is not monotonic
                now,
                recorder.decay,
                recorder.failure_latency,
            )
        check_outcome(ok)
        given = check_latency(latency)
        if ok is None:
            return self._end(None, None, self._started)  # no outcome: no clock reading needed
        recorder = self._recorder
        try:
            now = recorder.now()
        except Exception:
            self._end(ok, None, self._stale_now())  # release first: a bad clock must not leak
            raise
        if given is None:
            given = max(now - self._started, 0.0)  # max: a clock that is not monotonic
        return self._end(ok, given, now)

    def __enter__(self) -> str:
        return self.server

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        marked = self._outcome
        outcome: bool | None
        if marked is UNMARKED:
            # Only an Exception is the server's failure; the other BaseExceptions are the
            # caller going away (cancellation, interrupts), which says nothing about it.
            outcome = exc_type is None or (None if not issubclass(exc_type, Exception) else False)
        else:
            outcome = marked
        recorder = self._recorder
        try:
            now = recorder.clock()
            if now.__class__ is not float or now - now != 0.0:
                now = check_clock_reading(now)
        except Exception:
            self._end(outcome, None, self._stale_now())
            if exc_type is None:
                raise
            # Raising here would replace the caller's own exception: log this one instead.
            _log.exception("the clock failed while releasing a lease on %r", self.server)
            return
        latency = now - self._started
        if latency < 0.0:
            latency = 0.0  # a clock that is not monotonic
        endpoint = self._endpoint
        if outcome is not True:
            if endpoint._complete(
                self, outcome, latency, now, recorder.decay, recorder.failure_latency
            ) and (outcome is False):
                recorder.failed(endpoint, now)
            return
        # Endpoint._complete for a success, inlined: this runs once per request, and the frame
        # saved is a tenth of a lease. tests/test_leases.py checks that both leave the same state.
        lock = endpoint._lock
        if not lock.acquire(False):
            acquire_contended(lock)
        try:
            if self.released:
                return
            self.released = True
            endpoint.in_flight -= 1
            endpoint.load -= 1 + endpoint.consecutive_failures
            endpoint.consecutive_failures = 0
            endpoint.successes += 1
            previous = endpoint.latency
            if previous is None or latency >= previous:
                endpoint.latency = latency
            else:
                elapsed = now - endpoint.latency_at
                keep = exp(-elapsed / recorder.decay) if elapsed > 0.0 else 1.0
                decayed = previous * keep
                endpoint.latency = (
                    latency if latency >= decayed else decayed + latency * (1.0 - keep)
                )
            endpoint.latency_at = now
            histogram = endpoint.histogram
            if histogram is not None:  # Histogram.observe, inlined for the same reason
                histogram.counts[bisect_left(histogram.bounds, latency)] += 1
                histogram.sum += latency
        finally:
            lock.release()
        listener = endpoint.listener
        if listener is not None:
            listener(endpoint)

    async def __aenter__(self) -> str:
        return self.server

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Releasing never blocks (a short lock on the server's counters), so the event loop
        # is never held up.
        self.__exit__(exc_type, exc, traceback)

    def _withdraw(self) -> None:
        """End the lease as if it was never taken (see ``Endpoint._withdraw``)."""
        self._endpoint._withdraw(self)

    def _stale_now(self) -> float:
        """The best time to record when the clock failed: never before the server's last."""
        latency_at = self._endpoint.latency_at
        return latency_at if latency_at > self._started else self._started

    def _end(self, ok: bool | None, latency: float | None, now: float) -> bool:
        recorder = self._recorder
        endpoint = self._endpoint
        ended = endpoint._complete(self, ok, latency, now, recorder.decay, recorder.failure_latency)
        if ended and ok is False:
            recorder.failed(endpoint, now)
        return ended

    def __repr__(self) -> str:
        state = "released" if self.released else "in flight"
        return f"<Lease {self.server!r} {state}>"
