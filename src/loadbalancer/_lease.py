"""Lease: one request in flight, from pick to outcome."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType
from typing import final

from ._snapshot import Endpoint

__all__ = ["Lease", "check_latency", "check_ok"]


def check_ok(ok: object) -> bool:
    """Return ``ok`` if it is a bool, else raise naming the argument."""
    if not isinstance(ok, bool):
        raise TypeError(f"ok must be a bool, not {type(ok).__name__}")
    return ok


def check_latency(latency: object) -> float | None:
    """Return ``latency`` if it is None or a finite number of seconds >= 0, else raise."""
    if latency is None:
        return None
    if isinstance(latency, bool) or not isinstance(latency, (int, float)):
        raise TypeError(f"latency must be a number of seconds, not {type(latency).__name__}")
    if not math.isfinite(latency) or latency < 0:
        raise ValueError(f"latency must be finite and >= 0, got {latency!r}")
    return float(latency)


@final
class Lease:
    """A request in flight on ``server``, counted until released.

    As a context manager it yields the server and releases on exit: a clean exit is a success,
    an escaping exception a failure, unless ``mark(ok=...)`` said otherwise. Without ``with``,
    call ``release(ok=...)``; releasing again is harmless and not counted. Latency is measured
    with the balancer's clock from acquisition to release.
    """

    __slots__ = ("_clock", "_decay", "_endpoint", "_outcome", "_started", "released", "server")

    def __init__(
        self, endpoint: Endpoint, clock: Callable[[], float], decay: float, started: float
    ) -> None:
        self.server = endpoint.server
        self._endpoint = endpoint
        self._clock = clock
        self._decay = decay
        self._started = started
        self._outcome: bool | None = None
        self.released = False

    def mark(self, ok: bool) -> None:
        """Set the outcome recorded on exit, whatever the block raises."""
        self._outcome = check_ok(ok)

    def release(self, ok: bool = True, latency: float | None = None) -> bool:
        """Record the outcome and stop counting the request; False if already released."""
        check_ok(ok)
        given = check_latency(latency)
        now = self._clock()
        if given is None:
            given = max(now - self._started, 0.0)  # max: a clock that is not monotonic
        return self._endpoint._complete(self, ok, given, now, self._decay)

    def __enter__(self) -> str:
        return self.server

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # release(), unrolled: this runs once per request.
        now = self._clock()
        latency = now - self._started
        ok = exc_type is None if self._outcome is None else self._outcome
        self._endpoint._complete(self, ok, latency if latency > 0.0 else 0.0, now, self._decay)

    def __repr__(self) -> str:
        state = "released" if self.released else "in flight"
        return f"<Lease {self.server!r} {state}>"
